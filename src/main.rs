//! The `rewind` command. `run` does the work; `main` turns its error into one line,
//! `rewind: <what went wrong>: <why>`, and an exit status: 0 success, 1 failure, 2 a
//! command line clap refused.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use rewind::cli::args::{Cli, Command};
use rewind::cli::history as timeline;
use rewind::cli::image;
use rewind::daemon::serve::{self as daemon, Reporter, ServeOptions};
use rewind::runtime::registry as devices;
use rewind::runtime::{launch, supervise};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.command);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // {:#} prints the whole chain on one line: "what: why: deeper why".
            eprintln!("rewind: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemon logs at info by default with timestamps (its log is a file); the other
/// commands only warn. RUST_LOG overrides both.
fn init_logging(command: &Command) {
    let daemon = matches!(
        command,
        Command::Serve(_)
            | Command::Supervise(_)
            | Command::Add(rewind::cli::args::AddArgs {
                foreground: true,
                ..
            })
    );
    let default = if daemon { "info" } else { "warn" };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if daemon {
        builder.format_timestamp_millis();
    } else {
        builder.format_timestamp(None).format_target(false);
    }
    builder.init();
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create(a) => image::create_command(&a.image, a.size, a.history, a.force),
        Command::Add(a) => launch::add_command(&launch::AddOptions {
            image: a.image,
            size: a.size,
            history: a.history,
            id: a.id,
            queues: a.queues,
            depth: a.depth,
            foreground: a.foreground,
            idle_secs: a.idle,
            coalesce_ms: a.coalesce,
            on_crash: a.on_crash.into(),
            supervise: a.supervise,
        }),
        Command::Del(a) => devices::del_command(a.id, a.all),
        Command::List(a) => devices::list_command(a.json),
        Command::Stats(a) => devices::stats_command(a.id, a.json),
        Command::Safepoint(a) => timeline::safepoint_command(a.id, a.label, a.json),
        Command::Log(a) => match (a.id, a.image) {
            (Some(id), _) => timeline::log_device_command(id, a.json),
            (None, Some(image)) => timeline::log_image_command(&image, a.json),
            // clap requires one of them.
            (None, None) => anyhow::bail!("give -n ID or an IMAGE"),
        },
        Command::Check(a) => image::check_command(&a.image, a.json),
        Command::Recover(a) => launch::recover_command(a.id),
        Command::Supervise(a) => supervise::run(&supervise::Options {
            id: a.id,
            interval: std::time::Duration::from_secs(a.interval),
            timeout: std::time::Duration::from_secs(a.timeout),
            misses: a.misses,
        }),
        Command::View(a) => timeline::view_command(a.id, &a.at, a.json),
        Command::Pin(a) => timeline::pin_command(a.id, a.image.as_deref(), &a.at, true, a.json),
        Command::Unpin(a) => timeline::pin_command(a.id, a.image.as_deref(), &a.at, false, a.json),
        Command::Rollback(a) => match (a.id, a.image) {
            (Some(id), _) => timeline::rollback_device_command(id, &a.to, a.json),
            (None, Some(image)) => timeline::rollback_image_command(&image, &a.to, a.json),
            (None, None) => unreachable!("clap requires -n or IMAGE"),
        },
        Command::Serve(a) => {
            let reporter = match a.status_fd {
                Some(fd) => Reporter::from_fd(fd)?,
                None => Reporter::Stdout,
            };
            daemon::serve(
                &ServeOptions {
                    image: a.image,
                    id: a.id,
                    queues: a.queues,
                    depth: a.depth,
                    log: a.log,
                    idle_secs: a.idle,
                    coalesce_ms: a.coalesce,
                    on_crash: a.on_crash.into(),
                    recover: a.recover,
                },
                reporter,
            )
        }
    }
}
