//! The command line: [`args`] parses it with clap, [`run`] hands each command to its file
//! ([`image`], [`device`], [`history`], [`archive`], [`docs`]), and [`render`] prints what
//! they found.

pub mod archive;
pub mod args;
pub mod bisect;
pub mod device;
pub mod docs;
pub mod history;
pub mod image;
pub mod install;
pub mod mirror;
pub mod render;

use std::path::Path;

use anyhow::Result;

use crate::cli::args::{ArchiveCommand, Cli, Command, ServeArgs};
use crate::daemon::backing::Allocation;
use crate::daemon::report::Reporter;
use crate::daemon::serve::{self as daemon, ServeOptions};
use crate::runtime::supervise;

/// Sets up logging for `command`: the daemon and the supervisor log at info by default, with
/// timestamps (their log is a file) or, when stderr is the journal, with syslog priorities
/// instead; the other commands only warn. RUST_LOG overrides both.
pub fn init_logging(command: &Command) {
    let daemon = matches!(
        command,
        Command::Serve(_)
            | Command::Supervise(_)
            | Command::Add(args::AddArgs {
                foreground: true,
                ..
            })
    );
    let default = if daemon { "info" } else { "warn" };
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if daemon && stderr_is_the_journal() {
        // The journal stamps each line itself and reads its priority from a `<N>` prefix.
        builder.format(|buf, record| {
            use std::io::Write;
            writeln!(
                buf,
                "<{}>{}: {}",
                syslog_priority(record.level()),
                record.target(),
                record.args()
            )
        });
    } else if daemon {
        builder.format_timestamp_millis();
    } else {
        builder.format_timestamp(None).format_target(false);
    }
    builder.init();
}

/// True when standard error is the systemd journal: `JOURNAL_STREAM` (set by systemd for a
/// service whose output it collects) names the device and inode that stderr is.
fn stderr_is_the_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM")
        .is_some_and(|s| names_the_file(&s.to_string_lossy(), Path::new("/proc/self/fd/2")))
}

/// True when `stream` ("DEVICE:INODE", as in `JOURNAL_STREAM`) names what `path` is. For a
/// descriptor's `/proc/self/fd/N` (a socket, for the journal) stat follows it.
fn names_the_file(stream: &str, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// The syslog priority of a log level, as the journal reads it.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create(a) => image::create_command(
            &a.image,
            &a.backing,
            a.size,
            a.history,
            a.force,
            Allocation::chosen(a.sparse),
        ),
        Command::Add(a) => device::add_command(&a),
        Command::Del(a) => device::del_command(a.id, a.all),
        Command::List(a) => device::list_command(a.json),
        Command::Stats(a) => device::stats_command(a.id, a.json),
        Command::Safepoint(a) => history::safepoint_command(a.id, a.label, a.json),
        Command::Log(a) => match (a.id, a.image) {
            (Some(id), _) => history::log_device_command(id, a.json),
            (None, Some(image)) => history::log_image_command(&image, a.json),
            // clap requires one of them.
            (None, None) => anyhow::bail!("give -n ID or an IMAGE"),
        },
        Command::Check(a) => image::check_command(&a.image, a.json),
        Command::Recover(a) => device::recover_command(a.id),
        Command::Upgrade(a) => device::upgrade_command(a.id, a.binary.as_deref(), a.json),
        Command::Supervise(a) => supervise::run(&supervise::Options {
            id: a.id,
            interval: std::time::Duration::from_secs(a.interval),
            timeout: std::time::Duration::from_secs(a.timeout),
            misses: a.misses,
        }),
        Command::View(a) => history::view_command(a.id, &a.at, a.json),
        Command::Diff(a) => history::diff_command(a.id, &a.from, &a.to, a.json),
        Command::Export(a) => {
            let source = match (a.id, a.image.as_deref()) {
                (Some(id), _) => archive::Source::Device(id),
                (None, Some(image)) => archive::Source::Image(image),
                (None, None) => unreachable!("clap requires -n or IMAGE"),
            };
            archive::export_command(
                source,
                a.from.as_deref(),
                a.to.as_deref(),
                a.incremental,
                &a.output,
                a.force,
                a.json,
            )
        }
        Command::Mirror(a) => mirror::mirror_command(a),
        Command::Import(a) => {
            archive::import_command(&a.archives, a.at.as_deref(), &a.output, a.force, a.json)
        }
        Command::Archive(ArchiveCommand::Ls { archive, json }) => {
            archive::ls_command(&archive, json)
        }
        Command::Archive(ArchiveCommand::Verify { archives, json }) => {
            archive::verify_command(&archives, json)
        }
        Command::InstallUnits(a) => install::install_units_command(&a.root, a.binary.as_deref()),
        Command::Bisect(a) => bisect::bisect_command(a.id, &a.good, &a.bad, &a.command, a.json),
        Command::Pin(a) => history::pin_command(a.id, a.image.as_deref(), &a.at, true, a.json),
        Command::Unpin(a) => history::pin_command(a.id, a.image.as_deref(), &a.at, false, a.json),
        Command::Rollback(a) => match (a.id, a.image) {
            (Some(id), _) => history::rollback_device_command(id, &a.to, a.json),
            (None, Some(image)) => history::rollback_image_command(&image, &a.to, a.json),
            (None, None) => unreachable!("clap requires -n or IMAGE"),
        },
        Command::Logs(a) => device::logs_command(a.id, a.image.as_deref(), a.lines, a.follow),
        Command::Completions(a) => docs::completions(a.shell),
        Command::Man(a) => docs::man(a.dir.as_deref()),
        Command::Serve(a) => serve_command(a),
    }
}

/// `rewind __serve`: the daemon `rewind add` starts.
fn serve_command(a: ServeArgs) -> Result<()> {
    let reporter = match a.status_fd {
        Some(fd) => Reporter::from_fd(fd)?,
        None => Reporter::Stdout,
    };
    daemon::serve(&serve_options(a), reporter)
}

/// What `rewind __serve` was asked to serve: the inverse of `ServeOptions::args`.
fn serve_options(a: ServeArgs) -> ServeOptions {
    ServeOptions {
        image: a.image,
        id: a.id,
        queues: a.queues,
        depth: a.depth,
        log: a.log,
        idle_secs: a.idle,
        coalesce_ms: a.coalesce,
        on_crash: a.on_crash.into(),
        recover: a.recover,
        data_path: a.data_path.wanted(),
        read_only_at: a.read_only_at.map(rewind_history::SafePointId),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::device::{DataPath, OnCrash};

    #[test]
    fn journal_stream_is_matched_by_device_and_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&b, b"").unwrap();
        let meta = std::fs::metadata(&a).unwrap();
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        assert!(names_the_file(&stream, &a));
        assert!(!names_the_file(&stream, &b), "another inode");
        assert!(!names_the_file("garbage", &a));
        assert!(!names_the_file(&stream, &dir.path().join("missing")));
        assert_eq!(syslog_priority(log::Level::Error), 3);
        assert_eq!(syslog_priority(log::Level::Info), 6);
    }
    use clap::Parser;
    use std::path::PathBuf;

    #[test]
    fn the_daemon_reads_back_the_options_it_is_started_with() {
        let add = ServeOptions {
            image: PathBuf::from("/var/lib/vm img.img"),
            id: None,
            queues: 2,
            depth: 64,
            log: Some(PathBuf::from("/tmp/rewind-vm img.img.log")),
            idle_secs: 0,
            coalesce_ms: 1000,
            on_crash: OnCrash::Stop,
            recover: false,
            data_path: None,
            read_only_at: None,
        };
        let recover = ServeOptions {
            id: Some(7),
            on_crash: OnCrash::Queue,
            recover: true,
            ..add.clone()
        };
        let copy = ServeOptions {
            data_path: Some(DataPath::Copy),
            ..add.clone()
        };
        let zero_copy = ServeOptions {
            data_path: Some(DataPath::ZeroCopy),
            ..add.clone()
        };
        let read_only = ServeOptions {
            read_only_at: Some(rewind_history::SafePointId(1180)),
            ..add.clone()
        };
        // A handover's: no status pipe, and no log for a daemon that logs to stderr.
        let handover = ServeOptions {
            log: None,
            id: Some(2),
            on_crash: OnCrash::Queue,
            recover: true,
            data_path: Some(DataPath::ZeroCopy),
            ..add.clone()
        };
        for opts in [add, recover, copy, zero_copy, read_only] {
            let log = opts.log.clone().unwrap();
            let args = opts.args(Some(5), Some(&log));
            let cli = Cli::try_parse_from(std::iter::once("rewind".into()).chain(args))
                .expect("__serve parses its arguments");
            let Command::Serve(a) = cli.command else {
                panic!("not __serve: {:?}", cli.command);
            };
            assert_eq!(a.status_fd, Some(5));
            assert_eq!(serve_options(a), opts);
        }
        let args = handover.args(None, None);
        let cli = Cli::try_parse_from(std::iter::once("rewind".into()).chain(args))
            .expect("__serve parses a handover's arguments");
        let Command::Serve(a) = cli.command else {
            panic!("not __serve: {:?}", cli.command);
        };
        assert_eq!(a.status_fd, None);
        assert_eq!(serve_options(a), handover);
    }
}
