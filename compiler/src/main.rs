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
    Build(mcc::build::Args),
    /// Summarise a GGUF file: architecture, shapes, quant mix, tokenizer.
    Inspect(mcc::inspect::Args),
    /// Write a random-weight llama GGUF of any shape (test fixtures).
    Synth(mcc::synth::Args),
    /// Compile several quantizations of a model and print their perplexity table.
    PplTable(mcc::ppl_table::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Build(args) => mcc::build::run(&args),
        Cmd::Inspect(args) => mcc::inspect::run(&args),
        Cmd::Synth(args) => mcc::synth::run(&args),
        Cmd::PplTable(args) => mcc::ppl_table::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcc: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
