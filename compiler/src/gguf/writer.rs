//! (in progress) writer
