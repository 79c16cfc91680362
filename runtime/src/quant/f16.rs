//! F16: IEEE half floats (16 bits per weight). Dotted with activations rounded to f16, as ggml does.
