//! History that leaves the machine as a file: `rewind export` writes an archive of a window
//! of safe points (through the daemon of a served device, or from an image no daemon
//! serves), `rewind import` restores one safe point of an archive or of a chain of them into
//! a raw image or a block device, `rewind archive ls|verify` read one. The format is
//! `rewind_archive`'s (FORMAT.md, "Archive").

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::tz::TimeZone;
use rewind_archive::{ArchivedSafePoint, Base, Directory, Export, ExportOptions};
use rewind_history::{SafePointId, Volume, PAGE_SIZE};
use serde::Serialize;

use crate::cli::history::device_window;
use crate::cli::render::{label_suffix, print_json, table};
use crate::daemon::backing::{BackingError, FileStore};
use crate::ipc::control::SafePointRecord;
use crate::runtime::export::{self, ImageSink};
use crate::runtime::registry;
use crate::selector::{find_safe_point, Candidate};
use crate::size::human;
use crate::time::{local_time, rfc3339};

/// Buffers of the archive's readers and writers.
const BUF_BYTES: usize = 1 << 20;

impl Candidate for ArchivedSafePoint {
    fn id(&self) -> SafePointId {
        self.id
    }
    fn time_ns(&self) -> u64 {
        self.time_ns
    }
    fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
}

/// What is exported: a served device, or an image no daemon serves.
pub enum Source<'a> {
    /// `-n ID`: asked of its daemon.
    Device(u32),
    /// An image file or block device, read without writing.
    Image(&'a Path),
}

/// Where an archive or a restore goes, written in full or not at all where it can be: a
/// new file is written under a temporary name and renamed into place when complete.
enum Output {
    Stdout,
    File { path: PathBuf, temp: PathBuf },
}

impl Output {
    /// `-` or a file, which must not exist unless `force`.
    fn new(path: &Path, force: bool) -> Result<Output> {
        if path == Path::new("-") {
            if io::stdout().is_terminal() {
                bail!("refusing to write an archive to a terminal: give -o FILE, or pipe it");
            }
            return Ok(Output::Stdout);
        }
        check_new_file(path, force)?;
        Ok(Output::File {
            path: path.to_path_buf(),
            temp: temp_beside(path),
        })
    }

    /// Where the summary goes: stderr when the archive takes stdout.
    fn is_stdout(&self) -> bool {
        matches!(self, Output::Stdout)
    }

    /// Runs `write` on the output; a file appears under its name only if it succeeds.
    fn write_with(&self, write: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
        match self {
            Output::Stdout => {
                let mut out = BufWriter::with_capacity(BUF_BYTES, io::stdout().lock());
                write(&mut out)?;
                out.flush().context("writing to standard output")
            }
            Output::File { path, temp } => {
                let (file, _removed_on_signal) = create_new(temp)?;
                let mut out = BufWriter::with_capacity(BUF_BYTES, &file);
                let done = write(&mut out)
                    .and_then(|()| out.flush().context("writing the archive"))
                    .and_then(|()| file.sync_all().context("syncing the archive"));
                finish_temp(done, temp, path)
            }
        }
    }
}

/// Refuses to write to `path` if it exists, unless `force` and it is a regular file (a
/// symbolic link, a device or a directory is never replaced by a file).
fn check_new_file(path: &Path, force: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_file() {
        bail!(
            "{} exists and is not a regular file: give the path of a new file",
            path.display()
        );
    }
    if !force {
        bail!(
            "{} exists: give another path, or --force to replace it",
            path.display()
        );
    }
    Ok(())
}

/// A temporary name in `path`'s directory, for a file renamed to `path` when complete.
fn temp_beside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy());
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Creates the temporary file `path`, to be removed if a signal (Ctrl-C) ends the process
/// before the returned guard is dropped.
fn create_new(path: &Path) -> Result<(File, TempGuard)> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok((file, TempGuard::new(path)))
}

/// The temporary file a signal handler removes: a path leaked as a C string while a guard
/// holds it (null otherwise).
static TEMP_PATH: AtomicPtr<libc::c_char> = AtomicPtr::new(std::ptr::null_mut());

/// Removes the temporary file, then ends the process as the signal would have.
extern "C" fn remove_temp_and_exit(signal: libc::c_int) {
    let path = TEMP_PATH.load(Ordering::SeqCst);
    // SAFETY: unlink and _exit are async-signal-safe; `path` is null or a C string that
    // stays allocated while the handler is installed.
    unsafe {
        if !path.is_null() {
            libc::unlink(path);
        }
        libc::_exit(128 + signal);
    }
}

/// While it lives, SIGINT, SIGTERM and SIGHUP remove the temporary file before the process
/// ends: a Ctrl-C leaves no `.NAME.partial-PID` behind (a kill -9 still may).
struct TempGuard;

const TEMP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

impl TempGuard {
    fn new(path: &Path) -> TempGuard {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
            TEMP_PATH.store(c.into_raw(), Ordering::SeqCst);
            for signal in TEMP_SIGNALS {
                // SAFETY: installs a handler that only calls async-signal-safe functions.
                unsafe {
                    libc::signal(
                        signal,
                        remove_temp_and_exit as extern "C" fn(libc::c_int) as libc::sighandler_t,
                    );
                }
            }
        }
        TempGuard
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        for signal in TEMP_SIGNALS {
            // SAFETY: restores the default action.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let path = TEMP_PATH.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !path.is_null() {
            // SAFETY: `path` came from `CString::into_raw` in `new`, and no handler can see
            // it any more.
            drop(unsafe { std::ffi::CString::from_raw(path) });
        }
    }
}

/// Renames `temp` to `path` if `done` is ok, else removes it.
fn finish_temp(done: Result<()>, temp: &Path, path: &Path) -> Result<()> {
    let done = done.and_then(|()| {
        std::fs::rename(temp, path)
            .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    done
}

/// A progress bar of `total` bytes on stderr when it is a terminal (hidden otherwise).
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    // Twice a second: a serial console (a test guest's) keeps every frame.
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(2));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

#[derive(Serialize)]
struct ExportJson {
    archive: String,
    from: SafePointId,
    to: SafePointId,
    incremental_after: Option<SafePointId>,
    safe_points: usize,
    data_pages: u64,
    zero_pages: u64,
    bytes: u64,
    seconds: f64,
}

/// `rewind export`.
pub fn export_command(
    source: Source<'_>,
    from: Option<&str>,
    to: Option<&str>,
    incremental: bool,
    output: &Path,
    force: bool,
    json: bool,
) -> Result<()> {
    let out = Output::new(output, force)?;
    if json && out.is_stdout() {
        bail!("--json prints to standard output, which -o - takes for the archive");
    }
    let started = Instant::now();
    let dir = match source {
        Source::Device(id) => export_device(id, from, to, incremental, &out)?,
        Source::Image(image) => export_image(image, from, to, incremental, &out)?,
    };
    let secs = started.elapsed().as_secs_f64();
    let segments = dir.segments();
    let report = ExportJson {
        archive: output.display().to_string(),
        from: dir.safe_points[0].id,
        to: dir.last(),
        incremental_after: dir.base,
        safe_points: dir.safe_points.len(),
        data_pages: segments.iter().map(|s| s.data_pages).sum(),
        zero_pages: segments.iter().map(|s| s.zero_pages).sum(),
        bytes: dir.total_bytes(),
        seconds: secs,
    };
    if json {
        return print_json(&report);
    }
    let line = format!(
        "exported safe points {} to {} ({}{}): {} of data, archive {} written to {} in {secs:.1} s ({}/s)",
        report.from,
        report.to,
        report.safe_points,
        dir.base
            .map_or(String::new(), |b| format!(", the changes after {b}")),
        human(report.data_pages * PAGE_SIZE),
        human(report.bytes),
        if out.is_stdout() { "standard output".into() } else { report.archive.clone() },
        human((report.bytes as f64 / secs.max(1e-9)) as u64),
    );
    if out.is_stdout() {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(())
}

/// The ids `from` and `to` name in `window` (`None`: the window's ends).
fn choose(
    window: &[SafePointRecord],
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(Option<SafePointId>, Option<SafePointId>)> {
    let pick = |s: Option<&str>| -> Result<Option<SafePointId>> {
        s.map(|s| find_safe_point(window, s).map(|r| r.id))
            .transpose()
    };
    Ok((pick(from)?, pick(to)?))
}

/// Asks the daemon of device `id` for the archive and copies it to `out`, checking its
/// directory on the way and that it arrives whole.
fn export_device(
    id: u32,
    from: Option<&str>,
    to: Option<&str>,
    incremental: bool,
    out: &Output,
) -> Result<Directory> {
    let window = device_window("rewind export", id)?;
    let (from, to) = choose(&window, from, to)?;
    let options = ExportOptions {
        from,
        to,
        incremental,
        net: false,
    };
    let mut dir = None;
    out.write_with(|w| {
        let mut bar = None;
        let d = export::fetch(
            "rewind export",
            id,
            options,
            w,
            &|_| Ok(()),
            &mut |done, total| {
                bar.get_or_insert_with(|| progress_bar(total, "export"))
                    .set_position(done)
            },
        )?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        dir = Some(d);
        Ok(())
    })?;
    Ok(dir.expect("set by a successful write"))
}

/// Exports from an image no daemon serves, read-only.
fn export_image(
    image: &Path,
    from: Option<&str>,
    to: Option<&str>,
    incremental: bool,
    out: &Output,
) -> Result<Directory> {
    let store = match FileStore::open_read_only(image) {
        Ok(s) => s,
        Err(BackingError::InUse { .. }) => bail!(
            "{} is in use by a running rewind daemon: export the device with `rewind export -n {}`",
            image.display(),
            registry::device_serving(image).map_or("ID".into(), |id| id.to_string())
        ),
        Err(e) => return Err(e.into()),
    };
    let vol = Volume::open_read_only(store, &crate::host::this_host())
        .with_context(|| format!("reading {}", image.display()))?;
    let window: Vec<SafePointRecord> = vol.safe_point_infos().iter().map(Into::into).collect();
    let (from, to) = choose(&window, from, to)?;
    let export = Export::plan(
        &vol,
        ExportOptions {
            from,
            to,
            incremental,
            net: false,
        },
    )
    .with_context(|| format!("exporting {}", image.display()))?;
    let dir = export.directory().clone();
    let bar = progress_bar(dir.total_bytes(), "export");
    out.write_with(|w| {
        export
            .write(w, &mut |done| {
                bar.set_position(done);
                Ok(())
            })
            .with_context(|| format!("exporting {}", image.display()))
    })?;
    bar.finish_and_clear();
    Ok(dir)
}

/// An archive given on the command line, read past its directory.
struct Opened {
    name: String,
    dir: Directory,
    reader: Box<dyn Read>,
}

/// Opens `path` (`-`: standard input) and reads its directory.
fn open_archive(path: &Path) -> Result<Opened> {
    let name = path.display().to_string();
    let mut reader: Box<dyn Read> = if path == Path::new("-") {
        Box::new(BufReader::with_capacity(BUF_BYTES, io::stdin()))
    } else {
        let f = File::open(path).with_context(|| format!("opening {name}"))?;
        Box::new(BufReader::with_capacity(BUF_BYTES, f))
    };
    let dir = Directory::read(&mut reader).with_context(|| format!("reading {name}"))?;
    Ok(Opened { name, dir, reader })
}

#[derive(Serialize)]
struct ImportJson {
    output: String,
    at: SafePointId,
    time: String,
    label: Option<String>,
    data_pages: u64,
    zero_pages: u64,
    bytes_read: u64,
    seconds: f64,
}

/// `rewind import ARCHIVE... [--at X] -o OUT`.
pub fn import_command(
    archives: &[PathBuf],
    at: Option<&str>,
    output: &Path,
    force: bool,
    json: bool,
) -> Result<()> {
    if archives.len() > 1 && archives.iter().any(|a| a == Path::new("-")) {
        bail!("standard input (-) can only be the one archive given");
    }
    let started = Instant::now();
    let mut opened = archives
        .iter()
        .map(|a| open_archive(a))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<ArchivedSafePoint> = opened
        .iter()
        .flat_map(|o| o.dir.safe_points.iter().cloned())
        .collect();
    let chosen = match at {
        Some(at) => find_safe_point(&all, at)
            .context(
                "--at names none of the archives' safe points (`rewind archive ls` lists them)",
            )?
            .clone(),
        None => all.last().cloned().expect("an archive holds a safe point"),
    };
    let size = opened[0].dir.logical_pages * PAGE_SIZE;
    let is_device = std::fs::metadata(output).is_ok_and(|m| m.file_type().is_block_device());
    let names: Vec<String> = opened.iter().map(|o| o.name.clone()).collect();
    // The archives after the one that holds the safe point are not read.
    let needed = opened
        .iter()
        .position(|o| o.dir.safe_points.iter().any(|s| s.id == chosen.id))
        .map_or(opened.len(), |i| i + 1);
    let total = opened[..needed]
        .iter()
        .fold(0u64, |t, o| t.saturating_add(o.dir.total_bytes()));
    let mut chain: Vec<(Directory, Box<dyn Read>)> =
        opened.drain(..).map(|o| (o.dir, o.reader)).collect();
    let bar = progress_bar(total, "import");
    let mut run = |target: &mut ImageSink| -> Result<rewind_archive::Restored> {
        rewind_archive::restore(
            &mut chain,
            chosen.id,
            Base::Empty {
                zero_rest: target.zero,
            },
            target,
            &mut |done| bar.set_position(done),
        )
        .with_context(|| {
            format!(
                "restoring safe point {} from {}",
                chosen.id,
                names.join(", ")
            )
        })
    };
    let restored = if is_device {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(output)
            .with_context(|| format!("opening {} (is it mounted or in use?)", output.display()))?;
        let have = crate::daemon::backing::block_device_len(&file)
            .with_context(|| format!("reading the size of {}", output.display()))?;
        if have < size {
            bail!(
                "{} holds {}, the archive's device {}",
                output.display(),
                human(have),
                human(size)
            );
        }
        let mut target = ImageSink { file, zero: true };
        let restored = run(&mut target).with_context(|| {
            format!(
                "{} now holds a partial restore: do not use it",
                output.display()
            )
        })?;
        target.file.sync_all().context("syncing the device")?;
        restored
    } else {
        check_new_file(output, force)?;
        let temp = temp_beside(output);
        let (file, _removed_on_signal) = create_new(&temp)?;
        let mut target = ImageSink { file, zero: false };
        let mut restored = None;
        let done = target
            .file
            .set_len(size)
            .context("sizing the image")
            .and_then(|()| run(&mut target).map(|r| restored = Some(r)))
            .and_then(|()| target.file.sync_all().context("syncing the image"));
        finish_temp(done, &temp, output)?;
        restored.expect("set when the restore succeeded")
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let tz = TimeZone::system();
    if json {
        return print_json(&ImportJson {
            output: output.display().to_string(),
            at: chosen.id,
            time: rfc3339(chosen.time_ns, &tz),
            label: chosen.label.clone(),
            data_pages: restored.data_pages,
            zero_pages: restored.zero_pages,
            bytes_read: restored.bytes_read,
            seconds: secs,
        });
    }
    println!(
        "restored safe point {} ({}{}) to {}: {} of data, {} zeroed; read {} in {secs:.1} s ({}/s)",
        chosen.id,
        local_time(chosen.time_ns, &tz),
        label_suffix(chosen.label.as_deref()),
        output.display(),
        human(restored.data_pages * PAGE_SIZE),
        human(restored.zero_pages * PAGE_SIZE),
        human(restored.bytes_read),
        human((restored.bytes_read as f64 / secs.max(1e-9)) as u64),
    );
    Ok(())
}

#[derive(Serialize)]
struct LsJson {
    source_uuid: String,
    device_bytes: u64,
    incremental_after: Option<SafePointId>,
    bytes: u64,
    safe_points: Vec<LsSafePoint>,
}

#[derive(Serialize)]
struct LsSafePoint {
    id: SafePointId,
    time: String,
    time_ns: u64,
    trigger: &'static str,
    label: Option<String>,
    data_bytes: u64,
    zeroed_bytes: u64,
}

/// `rewind archive ls FILE`: what an archive holds, from its directory.
pub fn ls_command(archive: &Path, json: bool) -> Result<()> {
    let opened = open_archive(archive)?;
    let d = &opened.dir;
    let tz = TimeZone::system();
    let points: Vec<LsSafePoint> = d
        .safe_points
        .iter()
        .zip(d.segments())
        .map(|(sp, seg)| LsSafePoint {
            id: sp.id,
            time: rfc3339(sp.time_ns, &tz),
            time_ns: sp.time_ns,
            trigger: sp.trigger.name(),
            label: sp.label.clone(),
            data_bytes: seg.data_pages * PAGE_SIZE,
            zeroed_bytes: seg.zero_pages * PAGE_SIZE,
        })
        .collect();
    if json {
        return print_json(&LsJson {
            source_uuid: format!("{:016x}", d.source_uuid),
            device_bytes: d.logical_pages * PAGE_SIZE,
            incremental_after: d.base,
            bytes: d.total_bytes(),
            safe_points: points,
        });
    }
    println!(
        "{}: {} archive of a {} device (image {:016x}), {}, {} safe points",
        opened.name,
        match d.base {
            Some(b) => format!("an incremental (after safe point {b})"),
            None => "a full".into(),
        },
        human(d.logical_pages * PAGE_SIZE),
        d.source_uuid,
        human(d.total_bytes()),
        d.safe_points.len()
    );
    let mut rows = vec![[
        "ID".to_string(),
        "TIME".into(),
        "TRIGGER".into(),
        "CHANGED".into(),
        "ZEROED".into(),
        "LABEL".into(),
    ]];
    for (i, p) in points.iter().enumerate() {
        let first_full = i == 0 && d.base.is_none();
        rows.push([
            p.id.to_string(),
            local_time(p.time_ns, &tz),
            p.trigger.into(),
            if first_full {
                format!("{} (all)", human(p.data_bytes))
            } else {
                human(p.data_bytes)
            },
            human(p.zeroed_bytes),
            p.label.clone().unwrap_or_default(),
        ]);
    }
    for line in table(&rows, [true, false, false, true, true, false]) {
        println!("{line}");
    }
    Ok(())
}

#[derive(Serialize)]
struct VerifyJson {
    archive: String,
    ok: bool,
    error: Option<String>,
    records: u64,
    pages: u64,
    bytes: u64,
}

/// `rewind archive verify FILE...`: reads each archive whole and checks every checksum.
pub fn verify_command(archives: &[PathBuf], json: bool) -> Result<()> {
    let mut results = Vec::new();
    for a in archives {
        let checked = open_archive(a).and_then(|mut o| {
            let bar = progress_bar(o.dir.total_bytes(), "verify");
            let v =
                rewind_archive::verify(&mut o.reader, &o.dir, &mut |done| bar.set_position(done))
                    .with_context(|| format!("verifying {}", o.name));
            bar.finish_and_clear();
            v
        });
        results.push(match checked {
            Ok(v) => VerifyJson {
                archive: a.display().to_string(),
                ok: true,
                error: None,
                records: v.records,
                pages: v.pages,
                bytes: v.bytes,
            },
            Err(e) => VerifyJson {
                archive: a.display().to_string(),
                ok: false,
                error: Some(format!("{e:#}")),
                records: 0,
                pages: 0,
                bytes: 0,
            },
        });
    }
    if json {
        print_json(&results)?;
    } else {
        for r in &results {
            match &r.error {
                None => println!(
                    "{}: ok, {} records, {} pages checked, {}",
                    r.archive,
                    r.records,
                    r.pages,
                    human(r.bytes)
                ),
                Some(e) => println!("{}: FAILED: {e}", r.archive),
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} archives failed verification", results.len());
    }
    Ok(())
}
