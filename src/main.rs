//! The `rewind` command. `cli::run` does the work; `main` turns its error into one line,
//! `rewind: <what went wrong>: <why>`, and an exit status: 0 success, 1 failure, 2 a
//! command line clap refused.

use std::process::ExitCode;

use clap::Parser;
use rewind::cli::{self, args::Cli};

fn main() -> ExitCode {
    quiet_on_a_closed_stdout();
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

/// `rewind log --json | head -1`: when the reader of standard output goes away, the
/// program ends as a program killed by SIGPIPE would (status 141, nothing printed), not with
/// a panic. Rust ignores SIGPIPE so that writes to a closed socket are errors, which the
/// control client relies on; `println!` then panics on the broken pipe, and this catches
/// that panic only.
fn quiet_on_a_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(128 + libc::SIGPIPE);
        }
        default(info)
    }));
}
