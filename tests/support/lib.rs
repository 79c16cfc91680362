//! Support for the end-to-end tests: where models live, running mcc and built binaries.
