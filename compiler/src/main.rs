use clap::{Parser, Subcommand};

/// mcc compiles a GGUF language model into one standalone executable.
#[derive(Parser)]
#[command(name = "mcc", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile a GGUF model into a standalone executable.
    Build(mcc::build::BuildCmd),
    /// Summarise a GGUF file: architecture, shapes, quant mix, tokenizer.
    Inspect(mcc::inspect::Args),
    /// Write a random-weight llama GGUF of any shape (test fixtures).
    Synth(mcc::synth::Args),
    /// Compile several quantizations of a model and print their perplexity table.
    PplTable(mcc::ppl_table::Args),
    /// Quantize a model to every file type (with an imatrix) and tabulate size and PPL.
    Ladder(mcc::ladder::Args),
    /// Quantize a llama GGUF to another file type (the file llama-quantize writes).
    Quantize(mcc::quantize::Args),
    /// Compute an importance matrix over a calibration text (the file llama-imatrix
    /// writes), for `quantize --imatrix`.
    Imatrix(mcc::imatrix::Args),
    /// Convert a Hugging Face Llama checkpoint (safetensors) to GGUF, as llama.cpp's
    /// convert_hf_to_gguf.py does.
    Convert(mcc::convert::Args),
}

fn main() -> std::process::ExitCode {
    // A full disk or a file-size limit must be an error we report and clean up after,
    // not SIGXFSZ killing the process mid-write (ignored signals stay ignored in cargo
    // and rustc too, so they report their own write errors).
    // SAFETY: setting a signal's disposition to SIG_IGN has no other effect.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Build(cmd) => mcc::build::run_with(&cmd.args, &cmd.gpu),
        Cmd::Inspect(args) => mcc::inspect::run(&args),
        Cmd::Synth(args) => mcc::synth::run(&args),
        Cmd::PplTable(args) => mcc::ppl_table::run(&args),
        Cmd::Ladder(args) => mcc::ladder::run(&args),
        Cmd::Quantize(args) => mcc::quantize::run(&args),
        Cmd::Imatrix(args) => mcc::imatrix::run(&args),
        Cmd::Convert(args) => mcc::convert::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcc: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
