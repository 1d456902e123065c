#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod cmd;
mod json;
mod plot;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "peregrine",
    version,
    about = "Speculative-decoding inference for Llama-family models"
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show a model file's architecture, config, metadata and tensors.
    Inspect(cmd::inspect::Args),
    /// Tokenize text with a model file's tokenizer.
    Tokenize(cmd::tokenize::Args),
    /// Generate text from a prompt.
    Generate(cmd::generate::Args),
    /// Chat interactively, one message per line.
    Chat(cmd::chat::Args),
    /// Measure prefill and decode speed, the cost of verifying k tokens, and peak memory.
    Bench(cmd::bench::Args),
    /// Benchmark and inspect generated kernels (sgemm; GFLOP/s, compile time, assembly).
    Kernels(cmd::kernels::Args),
    /// Train draft heads (EAGLE-3 by online distillation from the target).
    Train(cmd::train::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.cmd {
        Cmd::Inspect(args) => cmd::inspect::run(args),
        Cmd::Tokenize(args) => cmd::tokenize::run(args),
        Cmd::Bench(args) => cmd::bench::run(args),
        Cmd::Generate(args) => cmd::generate::run(args),
        Cmd::Chat(args) => cmd::chat::run(args),
        Cmd::Kernels(args) => cmd::kernels::run(args),
        Cmd::Train(args) => cmd::train::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// A reader that closed our stdout (`peregrine ... | head`) is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
