//! The commands on devices: `rewind add`, `rewind del`, `rewind list`, `rewind stats`,
//! `rewind recover` and `rewind upgrade`.
//!
//! `rewind add` checks and prepares the image here, then serves it in this process
//! (`--foreground`) or starts a daemon in the background (`runtime::launch`) and prints the
//! device path as the last line of its stdout, or the daemon's error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::args::AddArgs;
use crate::cli::image;
use crate::cli::render::{device_table, print_json, stats_text};
use crate::daemon::backing::{Allocation, BackingError, FileStore};
use crate::daemon::report::Reporter;
use crate::daemon::serve::{self as daemon, ServeOptions};
use crate::daemon::ublk::choose_data_path;
use crate::ipc::control::{ControlRequest, SafePointRecord};
use crate::ipc::device::OnCrash;
use crate::ipc::paths;
use crate::runtime::client::{ask, STATS_TIMEOUT};
use crate::runtime::launch::{
    default_queues, prepare_recovery, recover_device, start_daemon, start_supervisor,
};
use crate::runtime::listing::rewind_devices;
use crate::runtime::registry::{
    check_daemon_access, check_ublk_access, device_exists, device_serving, process_alive,
    read_pid_file, rewind_ids_views_first, supervisor_pid, target_data, waiting_device,
    UBLK_CONTROL,
};
use crate::runtime::removal::delete;
use crate::runtime::upgrade;
use crate::selector::find_safe_point;
use crate::size::describe_layout;

/// `rewind add`.
pub fn add_command(args: &AddArgs) -> Result<()> {
    check_ublk_access("rewind add")?;
    let on_crash: OnCrash = args.on_crash.into();
    if args.supervise && !on_crash.survives_daemon() {
        bail!(
            "--supervise recovers a device whose daemon died, which --on-crash {} does not \
             allow: use --on-crash queue",
            on_crash.name()
        );
    }
    // The daemon chooses again when it adds the device; asked here too, a data path the
    // kernel lacks is refused before any image is created.
    choose_data_path(args.data_path.wanted())?;
    let image = std::path::absolute(&args.image)
        .with_context(|| format!("resolving {}", args.image.display()))?;
    // A device whose daemon died waits for a new one (--on-crash queue): adding its image
    // again recovers it, as a service manager that restarts `rewind add --foreground`
    // expects.
    if let Some(id) = waiting_device(&image) {
        if args.read_only {
            bail!(
                "{} is the image of /dev/ublkb{id}, whose daemon died: `rewind del -n {id}` \
                 it first (or, if it waits for a new daemon, `rewind recover -n {id}` it and \
                 `rewind view` the safe point)",
                image.display()
            );
        }
        return recover_waiting(args, &image, id);
    }
    if args.read_only {
        let at = read_only_safe_point(&image, args.at.as_deref())?;
        eprintln!(
            "rewind: serving {} read-only at safe point {}{}",
            image.display(),
            at.id,
            at.label
                .as_ref()
                .map_or(String::new(), |l| format!(" ({l:?})"))
        );
        // No safe points of its own, and nothing to recover if its daemon dies.
        let serve = ServeOptions {
            idle_secs: 0,
            coalesce_ms: 0,
            on_crash: OnCrash::Stop,
            read_only_at: Some(at.id),
            ..serve_options(args, image)
        };
        return start(args, serve);
    }
    let allocation = Allocation::chosen(args.sparse);
    let (layout, created) = image::prepare_for_add(&image, args.size, args.history, allocation)?;
    match created {
        Some(got) => eprintln!(
            "rewind: created {}: {}{}",
            image.display(),
            describe_layout(&layout),
            image::sparse_suffix(got)
        ),
        None if args.sparse => eprintln!(
            "rewind: --sparse has no effect: {} exists and is served as it is",
            image.display()
        ),
        None => {}
    }
    start(args, serve_options(args, image))
}

/// The options of the daemon `rewind add` starts for `image`, as `args` asks.
fn serve_options(args: &AddArgs, image: PathBuf) -> ServeOptions {
    ServeOptions {
        image,
        id: args.id,
        queues: args.queues.unwrap_or_else(default_queues),
        depth: args.depth,
        log: None,
        idle_secs: args.idle,
        coalesce_ms: args.coalesce,
        on_crash: args.on_crash.into(),
        recover: false,
        data_path: args.data_path.wanted(),
        read_only_at: None,
    }
}

/// True while a running daemon serves `image` (not one just killed, whose device remains).
fn served_live(image: &Path) -> bool {
    device_serving(image).is_some_and(|id| read_pid_file(id).is_some_and(process_alive))
}

/// The safe point `at` (default: the newest) of `image`, which no daemon serves, read
/// without writing to it.
fn read_only_safe_point(image: &Path, at: Option<&str>) -> Result<SafePointRecord> {
    // The lock of a daemon just killed goes when the kernel has torn down its rings, a
    // moment after the process: wait for that, not for a daemon that serves the image.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let opened = loop {
        match FileStore::open_read_only(image) {
            Err(BackingError::InUse { .. })
                if !served_live(image) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    let store = match opened {
        Ok(s) => s,
        Err(BackingError::InUse { owner, .. }) => bail!(
            "{} is served live by a rewind daemon{owner}: `rewind view -n ID --at ...` shows \
             its past safe points read-only",
            image.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let found = rewind_history::inspect(&store, &crate::host::this_host())
        .with_context(|| format!("reading the history of {}", image.display()))?;
    let window: Vec<SafePointRecord> = found.safe_points.iter().map(Into::into).collect();
    match at {
        Some(at) => Ok(find_safe_point(&window, at)?.clone()),
        None => window
            .last()
            .cloned()
            .with_context(|| format!("{} has no safe point", image.display())),
    }
}

/// `rewind add` of `image`, whose device `id` waits for a new daemon: recovers it, with
/// the options the device was added with (the kernel's and the dead daemon's record).
fn recover_waiting(args: &AddArgs, image: &Path, id: u32) -> Result<()> {
    let device = format!("/dev/ublkb{id}");
    if let Some(pid) = supervisor_pid(id) {
        bail!(
            "{} is the image of {device}, whose daemon died; its supervisor (pid {pid}) is \
             recovering it",
            image.display()
        );
    }
    if args.id.is_some_and(|n| n != id) {
        bail!(
            "{} is the image of {device}, whose daemon died: -n {} cannot serve it; \
             `rewind add` without -n (or `rewind recover -n {id}`) recovers it",
            image.display(),
            args.id.unwrap_or_default()
        );
    }
    if !OnCrash::from(args.on_crash).survives_daemon() {
        bail!(
            "{} is the image of {device}, whose daemon died: recovering it keeps \
             --on-crash queue; `rewind del -n {id}` first to add it with --on-crash stop",
            image.display()
        );
    }
    eprintln!(
        "rewind: {} is the image of {device}, whose daemon died: recovering it, with the \
         options it was added with",
        image.display()
    );
    let mut serve = prepare_recovery(id)?;
    if args.foreground {
        // This process logs to its stderr (the journal, under systemd), not to the file
        // the dead daemon wrote.
        serve.log = None;
    }
    start(args, serve)
}

/// Serves `serve` in this process (`--foreground`), or starts its daemon (and with
/// `--supervise` its supervisor) and prints the device.
fn start(args: &AddArgs, mut serve: ServeOptions) -> Result<()> {
    if args.foreground {
        return daemon::serve(&serve, Reporter::Stdout);
    }
    let log = serve
        .log
        .get_or_insert_with(|| paths::log_path(&serve.image))
        .clone();
    let device = start_daemon(&serve, &log)?;
    if args.supervise {
        let id = parse_device_id(&device)?;
        let pid = start_supervisor(id, &log, None)?;
        eprintln!(
            "rewind: supervisor of {device}: pid {pid} (log: {})",
            log.display()
        );
    }
    println!("{device}");
    Ok(())
}

/// `rewind recover -n ID`: a new daemon for device `id`, on the image and with the options
/// its dead daemon recorded; prints the device path.
pub fn recover_command(id: u32) -> Result<()> {
    check_ublk_access("rewind recover")?;
    let device = recover_device(id)?;
    println!("{device}");
    Ok(())
}

/// `rewind upgrade -n ID`: hands the device to `binary` (default: this program) and says
/// what serves it now and how long its I/O waited.
pub fn upgrade_command(id: u32, binary: Option<&Path>, json: bool) -> Result<()> {
    check_ublk_access("rewind upgrade")?;
    let done = upgrade::upgrade(id, binary)?;
    if json {
        return print_json(&done);
    }
    println!(
        "{}: {} -> {} ({}), pid {}, I/O paused {} ms{}",
        done.device,
        done.from_version,
        done.to_version,
        done.binary.display(),
        done.pid,
        done.pause_ms,
        done.supervisor
            .map_or(String::new(), |pid| format!(", new supervisor pid {pid}"))
    );
    Ok(())
}

/// The id in a device path the daemon reported.
fn parse_device_id(device: &str) -> Result<u32> {
    device
        .strip_prefix("/dev/ublkb")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("the daemon reported {device:?}, not /dev/ublkbN"))
}

/// `rewind logs`: the last `lines` lines of the log of device `id`'s daemon (as it recorded
/// it when it added the device) or of the daemon of `image`, then, with `follow`, what is
/// appended to it until interrupted.
pub fn logs_command(
    id: Option<u32>,
    image: Option<&Path>,
    lines: usize,
    follow: bool,
) -> Result<()> {
    let path = match (id, image) {
        (Some(id), _) => {
            let data = target_data(id).with_context(|| {
                format!(
                    "/dev/ublkb{id} is not a rewind device (see `rewind list`); for a stopped \
                     image, give its path: `rewind logs IMAGE`"
                )
            })?;
            data.log_path()
        }
        (None, Some(image)) => paths::log_path(image),
        (None, None) => bail!("give -n ID or an image"),
    };
    let mut file = std::fs::File::open(&path).with_context(|| {
        format!(
            "opening the daemon's log {}: no daemon has logged there yet, or $REWIND_LOG_DIR \
             differs from the daemon's",
            path.display()
        )
    })?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let printed = print_log(last_lines(&text, lines)).and_then(|()| {
        if !follow {
            return Ok(());
        }
        loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            let mut more = Vec::new();
            file.read_to_end(&mut more)?;
            print_log(&more)?;
        }
    });
    match printed {
        // The reader went away (`| head`): that ends it, as for `tail`.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.with_context(|| format!("printing {}", path.display())),
    }
}

/// Writes `text` to stdout now.
fn print_log(text: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text)?;
    out.flush()
}

/// The end of `text` that holds its last `n` lines.
fn last_lines(text: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &[];
    }
    // The newline that ends the text ends its last line; it starts none.
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'\n')
        .nth(n - 1)
        .map_or(0, |(i, _)| i + 1);
    &text[start..]
}

/// `rewind del`.
pub fn del_command(id: Option<u32>, all: bool) -> Result<()> {
    check_ublk_access("rewind del")?;
    if !all {
        let Some(id) = id else {
            bail!("give -n ID or -a");
        };
        return delete(id);
    }
    // Views first: deleting a live device deletes its views anyway.
    let ids = rewind_ids_views_first();
    if ids.is_empty() {
        eprintln!("rewind: no rewind devices");
        return Ok(());
    }
    let mut failed = Vec::new();
    for id in ids {
        if !device_exists(id) {
            continue; // a view that went with its live device
        }
        if let Err(e) = delete(id) {
            eprintln!("rewind: {e:#}");
            failed.push(id.to_string());
        }
    }
    if !failed.is_empty() {
        bail!("could not delete device(s) {}", failed.join(", "));
    }
    Ok(())
}

/// `rewind list`.
pub fn list_command(json: bool) -> Result<()> {
    check_daemon_access("rewind list")?;
    let devices = if Path::new(UBLK_CONTROL).exists() {
        rewind_devices()
    } else {
        Vec::new()
    };
    if json {
        print_json(&devices)?;
        return Ok(());
    }
    if devices.is_empty() {
        eprintln!("rewind: no rewind devices");
        return Ok(());
    }
    for line in device_table(&devices) {
        println!("{line}");
    }
    Ok(())
}

/// `rewind stats`.
pub fn stats_command(id: u32, json: bool) -> Result<()> {
    let reply = match ask("rewind stats", id, &ControlRequest::Stats, STATS_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!("the daemon of ublk device {id} refused: {why}"),
    };
    let Some(mut s) = reply.stats else {
        bail!("the daemon of ublk device {id} sent no figures");
    };
    s.set_mirror(crate::runtime::mirror::running_status(id));
    if json {
        print_json(&s)?;
        return Ok(());
    }
    print!("{}", stats_text(&s, &jiff::tz::TimeZone::system()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn last_lines_keeps_whole_lines_from_the_end() {
        let text = b"one\ntwo\nthree\n";
        assert_eq!(last_lines(text, 2), b"two\nthree\n");
        assert_eq!(last_lines(text, 3), &text[..]);
        assert_eq!(last_lines(text, 10), &text[..]);
        assert_eq!(last_lines(text, 1), b"three\n");
        assert_eq!(last_lines(text, 0), b"");
        assert_eq!(
            last_lines(b"no newline at the end", 1),
            b"no newline at the end"
        );
        assert_eq!(last_lines(b"a\nb", 1), b"b");
        assert_eq!(last_lines(b"", 5), b"");
    }
}
