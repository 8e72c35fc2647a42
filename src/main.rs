//! The `strata` binary: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = strata::cli::normalize(std::env::args_os().collect());
    let cli = strata::cli::Cli::parse_from(args);
    match strata::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each once: many errors already name their cause in their own
/// message (`path: error`), and repeating it would only add noise.
fn message(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg
}
