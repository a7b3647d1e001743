//! The `rewind` command. `cli::run` does the work; `main` turns its error into one line,
//! `rewind: <what went wrong>: <why>`, and an exit status: 0 success, 1 failure, 2 a
//! command line clap refused.

use std::process::ExitCode;

use clap::Parser;
use rewind::cli::{self, args::Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(&cli.command);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // {:#} prints the whole chain on one line: "what: why: deeper why".
            eprintln!("rewind: {e:#}");
            ExitCode::FAILURE
        }
    }
}
