//! The scale benchmark (issue 10): how `rewind` behaves as the device grows, on sparse
//! images of 64 GiB to 16 TiB and more. It prints figures beside the device size and
//! asserts nothing.
//!
//! ```sh
//! cargo build --release && cargo build --release --example scale
//! cargo run --release --example scale -- [--sizes 64G,1T,4T,16T] [--dir DIR] \
//!     [--percents 0,1,10] [--patterns random,seq] [--history SIZE] \
//!     [--rollback-span SIZE] [--json]
//! ```
//!
//! Per device size, each step runs in a child process of its own, so that its wall time
//! and its peak memory (`ru_maxrss` from `wait4`) are its alone:
//! - `rewind create IMAGE --size S --sparse`, `rewind check IMAGE`, `rewind log IMAGE`: the
//!   release binary beside this example (`target/release/rewind`);
//! - open after a clean stop: this example again (`scale __child open IMAGE`), which opens
//!   the image in process (`FileStore::open` + `Volume::open`), times the open alone and
//!   closes it;
//! - served memory: for each percentage P and each pattern (random 4 KiB writes, sequential
//!   1 MiB writes from page 0), on a fresh image, a child writes P% of the logical pages once
//!   (they land at home, as on a device full of data), makes a safe point, then rewrites the
//!   same pages with a flush every 4096 pages, reports its resident memory, and exits
//!   without closing the volume (like a `kill -9` of the daemon);
//! - open after that kill: the same open child, which replays the journal (and closes the
//!   image); then, on that image with P% changed, `rewind check` and an open after a clean
//!   stop;
//! - rollback over 1 Mi changed pages, and its undo, on a fresh image.
//!
//! The in-process steps drop every write to the data area and read it as zeros: only the
//! metadata (superblocks, journal, checkpoints) reaches the image, so 10% of 1 TiB
//! rewritten needs no 100 GiB of disk. Random single-page writes are made live 32 at a
//! time (`commit_writes`), as a queue at depth 32 does with group commit; each 1 MiB write
//! is one request (`write_pages`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use rewind::daemon::backing::FileStore;
use rewind::host::kib_field;
use rewind::size::{human_exact, parse_page_multiple, parse_size};
use rewind_history::{LogicalPage, SafePointId, Store, Stream, Trigger, Volume, PAGE_SIZE};

const USAGE: &str = "\
usage: scale [--sizes 64G,1T,4T,16T] [--dir DIR] [--percents 0,1,10]
             [--patterns random,seq] [--history SIZE] [--rollback-span SIZE] [--json]

  --sizes     device sizes, comma-separated (K/M/G/T, powers of 1024) [default: 64G,1T]
  --dir       where the images go [default: a new directory under /var/tmp, removed at the end]
  --percents  shares of the device rewritten for the memory figures [default: 0,1,10]
  --patterns  how they are written: random 4 KiB writes, sequential 1 MiB ones, or both
              [default: random,seq; random writes touch every 16 MiB of the device, whose
              map then takes 8 bytes a page: 32 GiB at 16 TiB]
  --history   --history of `rewind create` [default: as `rewind create` chooses]
  --rollback-span
              the part of the device, from its start, the rollback's 1 Mi pages are spread
              over [default: all of it; each 16 MiB with a page written takes 32 KiB of map]
  --json      print every row as one JSON array on stdout (the tables go to stderr)

Needs the release binary: cargo build --release";

/// Single-page writes made live together, as one pass of a queue ring at depth 32.
const BATCH: usize = 32;
/// Pages written between two flushes (safe points) in the rewrite passes.
const FLUSH_EVERY: u64 = 4096;
/// Pages of one sequential write: 1 MiB.
const SEQ_PAGES: u64 = 256;
/// Pages the rollback step changes.
const ROLLBACK_PAGES: u64 = 1 << 20;
/// Devices smaller than this skip the rollback step.
const ROLLBACK_MIN_SIZE: u64 = 8 << 30;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__child") {
        let code = match child(&args[2..]) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    if let Err(e) = parent(&args[1..]) {
        eprintln!("scale: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// The parent: runs the steps as children and prints the tables.

struct Opts {
    sizes: Vec<(String, u64)>,
    dir: Option<PathBuf>,
    percents: Vec<u64>,
    patterns: Vec<Pattern>,
    history: Option<String>,
    /// Bytes from the device's start the rollback step writes in (`None`: all of it).
    rollback_span: Option<u64>,
    json: bool,
}

fn parse_args(args: &[String]) -> anyhow::Result<Opts> {
    let mut opts = Opts {
        sizes: Vec::new(),
        dir: None,
        percents: vec![0, 1, 10],
        patterns: vec![Pattern::Random, Pattern::Sequential],
        history: None,
        rollback_span: None,
        json: false,
    };
    let mut sizes = "64G,1T".to_string();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| anyhow!("{name} needs a value\n{USAGE}"))
        };
        match name {
            "--sizes" => sizes = value()?,
            "--dir" => opts.dir = Some(PathBuf::from(value()?)),
            "--percents" => {
                opts.percents = value()?
                    .split(',')
                    .map(|p| match p.trim().trim_end_matches('%').parse::<u64>() {
                        Ok(p) if p <= 100 => Ok(p),
                        _ => Err(anyhow!("--percents: '{p}' is not a whole number 0..=100")),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--patterns" => {
                opts.patterns = value()?
                    .split(',')
                    .map(|p| Pattern::parse(p.trim()).map_err(|e| anyhow!("--patterns: {e}")))
                    .collect::<anyhow::Result<_>>()?;
                if opts.patterns.is_empty() {
                    bail!("--patterns: no pattern given");
                }
            }
            "--rollback-span" => {
                let v = value()?;
                let bytes = parse_size(&v).map_err(|e| anyhow!("--rollback-span: {e}"))?;
                if bytes < PAGE_SIZE {
                    bail!("--rollback-span: {v} is less than a page");
                }
                opts.rollback_span = Some(bytes);
            }
            "--history" => {
                let h = value()?;
                parse_page_multiple(&h).map_err(|e| anyhow!("--history: {e}"))?;
                opts.history = Some(h);
            }
            "--json" => opts.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument '{arg}'\n{USAGE}"),
        }
    }
    for s in sizes.split(',').filter(|s| !s.trim().is_empty()) {
        let bytes = parse_size(s).map_err(|e| anyhow!("--sizes: {e}"))?;
        opts.sizes.push((human_exact(bytes), bytes));
    }
    if opts.sizes.is_empty() {
        bail!("--sizes: no size given");
    }
    Ok(opts)
}

/// The two write patterns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    /// Single 4 KiB writes at pseudo-random logical pages.
    Random,
    /// 1 MiB writes from page 0 upward.
    Sequential,
}

impl Pattern {
    fn arg(self) -> &'static str {
        match self {
            Pattern::Random => "random",
            Pattern::Sequential => "seq",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Pattern> {
        match s {
            "random" => Ok(Pattern::Random),
            "seq" => Ok(Pattern::Sequential),
            _ => bail!("unknown pattern '{s}'"),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Pattern::Random => "rnd 4K",
            Pattern::Sequential => "seq 1M",
        }
    }
}

/// One measured step.
struct Row {
    size: String,
    size_bytes: u64,
    /// For the summary: `create`, `open`, `write/P/random`, `kill/P/random`, `rollback`...
    key: String,
    step: String,
    seconds: Option<f64>,
    peak_mib: Option<f64>,
    /// The first line of the error, or how the child died.
    error: Option<String>,
    /// What the child reported (`figure NAME VALUE` lines).
    figures: BTreeMap<String, f64>,
    note: String,
}

impl Row {
    fn new(size: &(String, u64), key: &str, step: &str) -> Row {
        Row {
            size: size.0.clone(),
            size_bytes: size.1,
            key: key.into(),
            step: step.into(),
            seconds: None,
            peak_mib: None,
            error: None,
            figures: BTreeMap::new(),
            note: String::new(),
        }
    }

    fn ok(&self) -> bool {
        self.error.is_none()
    }

    fn figure(&self, name: &str) -> Option<f64> {
        self.figures.get(name).copied()
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "size": self.size,
            "size_bytes": self.size_bytes,
            "step": self.step,
            "key": self.key,
            "seconds": self.seconds,
            "peak_mib": self.peak_mib,
            "error": self.error,
            "figures": self.figures,
            "note": self.note,
        })
    }
}

/// What a child process did.
struct Outcome {
    wall: f64,
    max_rss_kib: u64,
    /// `Ok(())` for exit status 0, else the first line of its error or how it died.
    result: Result<(), String>,
    stdout: String,
}

/// Runs `cmd` to its end, reaping it with `wait4` for its own resource usage.
fn run(mut cmd: Command) -> io::Result<Outcome> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stdout = String::new();
    let read = out.read_to_string(&mut stdout);
    let stderr = errors.join().unwrap_or_default();
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that all-zero bytes make valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child, writing into two live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let wall = start.elapsed().as_secs_f64();
    // Reaped above: dropping `child` only closes what is left of its pipes.
    drop(child);
    read?;
    let first_line = || {
        stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
            .to_string()
    };
    let result = if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            code => {
                let line = first_line();
                Err(if line.is_empty() {
                    format!("exit status {code}")
                } else {
                    line
                })
            }
        }
    } else if libc::WIFSIGNALED(status) {
        let line = first_line();
        let sig = libc::WTERMSIG(status);
        Err(if line.is_empty() {
            format!("killed by signal {sig}")
        } else {
            format!("killed by signal {sig}: {line}")
        })
    } else {
        Err(format!("ended with wait status {status:#x}"))
    };
    Ok(Outcome {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        result,
        stdout,
    })
}

/// How the parent runs its children: the release `rewind` and this program.
struct Runner {
    rewind: PathBuf,
    me: PathBuf,
    history: Option<String>,
}

impl Runner {
    fn cli<I, A>(&self, args: I) -> io::Result<Outcome>
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        let mut cmd = Command::new(&self.rewind);
        cmd.args(args.into_iter().map(Into::into));
        run(cmd)
    }

    fn child(&self, args: &[&str], image: &Path) -> io::Result<Outcome> {
        let mut cmd = Command::new(&self.me);
        cmd.arg("__child").arg(args[0]).arg(image).args(&args[1..]);
        run(cmd)
    }

    fn create(&self, image: &Path, size: &str) -> io::Result<Outcome> {
        let mut args: Vec<OsString> = vec![
            "create".into(),
            image.into(),
            "--size".into(),
            size.into(),
            "--sparse".into(),
        ];
        if let Some(h) = &self.history {
            args.push("--history".into());
            args.push(h.into());
        }
        self.cli(args)
    }
}

/// Prints rows as they come, and keeps them.
struct Report {
    rows: Vec<Row>,
    out: Box<dyn Write>,
}

impl Report {
    fn header(&mut self) {
        let _ = writeln!(
            self.out,
            "{:>6}  {:<30}  {:>8}  {:>8}  note",
            "size", "step", "seconds", "peak-MiB"
        );
    }

    fn push(&mut self, row: Row) -> bool {
        let seconds = row.seconds.map_or("-".into(), |s| format!("{s:.2}"));
        let peak = row.peak_mib.map_or("-".into(), |m| format!("{m:.1}"));
        let note = match &row.error {
            Some(e) => format!("FAILED: {e}"),
            None => row.note.clone(),
        };
        let _ = writeln!(
            self.out,
            "{:>6}  {:<30}  {:>8}  {:>8}  {note}",
            row.size, row.step, seconds, peak
        );
        let _ = self.out.flush();
        let ok = row.ok();
        self.rows.push(row);
        ok
    }

    fn find(&self, size: &str, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.size == size && r.key == key)
    }
}

/// A row from a child's outcome; `describe` makes the note from the figures.
fn row_of(
    size: &(String, u64),
    key: &str,
    step: &str,
    outcome: io::Result<Outcome>,
    describe: impl Fn(&BTreeMap<String, f64>) -> String,
) -> Row {
    let mut row = Row::new(size, key, step);
    match outcome {
        Err(e) => row.error = Some(format!("could not run: {e}")),
        Ok(o) => {
            row.seconds = Some(o.wall);
            row.peak_mib = Some(o.max_rss_kib as f64 / 1024.0);
            let mut notes = Vec::new();
            for line in o.stdout.lines() {
                let mut words = line.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("figure"), Some(name), Some(v)) => {
                        if let Ok(v) = v.trim().parse() {
                            row.figures.insert(name.to_string(), v);
                        }
                    }
                    (Some("note"), Some(a), b) => {
                        notes.push(b.map_or(a.to_string(), |b| format!("{a} {b}")))
                    }
                    _ => {}
                }
            }
            row.error = o.result.err();
            row.note = describe(&row.figures);
            if !notes.is_empty() {
                if !row.note.is_empty() {
                    row.note.push_str("; ");
                }
                row.note.push_str(&notes.join("; "));
            }
        }
    }
    row
}

fn no_note(_: &BTreeMap<String, f64>) -> String {
    String::new()
}

fn open_note(f: &BTreeMap<String, f64>) -> String {
    match (f.get("open_s"), f.get("close_s"), f.get("rss_open_mib")) {
        (Some(o), Some(c), Some(r)) => {
            let g = |k: &str| f.get(k).copied().unwrap_or(f64::NAN);
            format!(
                "open {o:.3} s, close {c:.3} s; RSS after open {r:.0} MiB, peak by then {:.0}, by the close's end {:.0}",
                g("hwm_open_mib"),
                g("hwm_close_mib")
            )
        }
        (Some(o), _, _) => format!("open {o:.3} s"),
        _ => String::new(),
    }
}

fn write_note(f: &BTreeMap<String, f64>) -> String {
    let g = |k: &str| f.get(k).copied().unwrap_or(f64::NAN);
    format!(
        "{:.0} pages: fill {:.2} s, rewrite {:.2} s; RSS open {:.0} / filled {:.0} / served {:.0} MiB; {:.0} history pages, {:.0} safe points",
        g("pages"),
        g("fill_s"),
        g("rewrite_s"),
        g("rss_open_mib"),
        g("rss_fill_mib"),
        g("rss_served_mib"),
        g("history_pages"),
        g("safe_points"),
    )
}

fn rollback_note(f: &BTreeMap<String, f64>) -> String {
    let g = |k: &str| f.get(k).copied().unwrap_or(f64::NAN);
    if f.contains_key("skipped") {
        return String::new();
    }
    format!(
        "rollback {:.1} ms, undo {:.1} ms; writes {:.2} s; RSS {:.0} MiB before (peak {:.0}), {:.0} after (peak {:.0}); close {:.2} s (peak by its end {:.0})",
        g("rollback_ms"),
        g("undo_ms"),
        g("write_s"),
        g("rss_before_mib"),
        g("hwm_before_mib"),
        g("rss_mib"),
        g("hwm_mib"),
        g("close_s"),
        g("hwm_close_mib"),
    )
}

fn header_line(dir: &Path, rewind: &Path) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| kib_field(&meminfo, key).unwrap_or(0);
    let free = free_bytes(dir).map_or("?".into(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    });
    format!(
        "scale benchmark: kernel {}, {} cpus, MemTotal {:.1} GiB, MemAvailable {:.1} GiB; images in {} ({} free); {}\n\
         in-process steps write metadata only: data pages are not written (dropped) and read as zeros",
        kernel.trim(),
        nproc,
        kib("MemTotal:") as f64 / (1 << 20) as f64,
        kib("MemAvailable:") as f64 / (1 << 20) as f64,
        dir.display(),
        free,
        rewind.display(),
    )
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; the call writes it and reads the C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `st` a live statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn parent(args: &[String]) -> anyhow::Result<()> {
    let opts = parse_args(args)?;
    let me = std::env::current_exe().context("finding this program")?;
    let rewind = match std::env::var_os("REWIND_BIN") {
        Some(p) => PathBuf::from(p),
        // target/release/examples/scale -> target/release/rewind
        None => me
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("rewind"))
            .ok_or_else(|| anyhow!("cannot tell where {} lives", me.display()))?,
    };
    if !rewind.is_file() {
        bail!(
            "{} is missing: build it first with `cargo build --release` (or set REWIND_BIN)",
            rewind.display()
        );
    }
    let (dir, temporary) = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), false)
        }
        None => {
            let d = PathBuf::from(format!("/var/tmp/rewind-scale-{}", std::process::id()));
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            (d, true)
        }
    };
    let runner = Runner {
        rewind: rewind.clone(),
        me,
        history: opts.history.clone(),
    };
    let mut report = Report {
        rows: Vec::new(),
        out: if opts.json {
            Box::new(io::stderr())
        } else {
            Box::new(io::stdout())
        },
    };
    let _ = writeln!(report.out, "{}", header_line(&dir, &rewind));
    if let Some(h) = &opts.history {
        let _ = writeln!(report.out, "history: {h}");
    }
    let result = (|| -> anyhow::Result<()> {
        for size in &opts.sizes {
            let _ = writeln!(report.out);
            report.header();
            run_size(&runner, &opts, size, &dir, &mut report)?;
        }
        Ok(())
    })();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result?;
    summary(&opts, &mut report);
    if opts.json {
        let rows: Vec<_> = report.rows.iter().map(Row::to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}

fn run_size(
    runner: &Runner,
    opts: &Opts,
    size: &(String, u64),
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let image = dir.join(format!("scale-{}.img", size.0));
    let remove = |image: &Path| match std::fs::remove_file(image) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", image.display()))
        }
        _ => Ok(()),
    };
    remove(&image)?;
    let created = report.push(row_of(
        size,
        "create",
        "create",
        runner.create(&image, &size.0),
        no_note,
    ));
    if !created {
        return remove(&image);
    }
    report.push(row_of(
        size,
        "check",
        "check",
        runner.cli([OsString::from("check"), image.clone().into()]),
        no_note,
    ));
    report.push(row_of(
        size,
        "log",
        "log",
        runner.cli([OsString::from("log"), image.clone().into()]),
        no_note,
    ));
    report.push(row_of(
        size,
        "open",
        "open (clean stop)",
        runner.child(&["open"], &image),
        open_note,
    ));
    // The image has only been opened and closed: as good as fresh for the first write.
    let mut fresh = true;
    let recreate = |report: &mut Report, fresh: &mut bool, what: &str| -> anyhow::Result<bool> {
        if std::mem::take(fresh) {
            return Ok(true);
        }
        remove(&image)?;
        let row = row_of(
            size,
            &format!("create/{what}"),
            &format!("create again ({what})"),
            runner.create(&image, &size.0),
            no_note,
        );
        // Printed only when it fails: the first create has the figure.
        Ok(row.ok() || report.push(row))
    };
    for &p in &opts.percents {
        let patterns: &[Pattern] = if p == 0 {
            &[Pattern::Random]
        } else {
            &opts.patterns
        };
        for &pattern in patterns {
            let what = if p == 0 {
                "0%".to_string()
            } else {
                format!("{p}% {}", pattern.describe())
            };
            if !recreate(report, &mut fresh, &what)? {
                continue;
            }
            let written = report.push(row_of(
                size,
                &format!("write/{p}/{}", pattern.arg()),
                &format!("write {what}, no close"),
                runner.child(&["write", &p.to_string(), pattern.arg()], &image),
                write_note,
            ));
            let reopened = written
                && report.push(row_of(
                    size,
                    &format!("kill/{p}/{}", pattern.arg()),
                    &format!("open after kill ({what})"),
                    runner.child(&["open"], &image),
                    open_note,
                ));
            // That open closed the image: now it is as a device with P% changed stopped
            // cleanly leaves it.
            if reopened && p > 0 {
                report.push(row_of(
                    size,
                    &format!("check/{p}/{}", pattern.arg()),
                    &format!("check ({what})"),
                    runner.cli([OsString::from("check"), image.clone().into()]),
                    no_note,
                ));
                report.push(row_of(
                    size,
                    &format!("open/{p}/{}", pattern.arg()),
                    &format!("open (clean stop, {what})"),
                    runner.child(&["open"], &image),
                    open_note,
                ));
            }
        }
    }
    if size.1 < ROLLBACK_MIN_SIZE {
        let mut row = Row::new(size, "rollback", "rollback 1Mi pages");
        row.note = format!(
            "skipped: devices under {} skip it",
            human_exact(ROLLBACK_MIN_SIZE)
        );
        report.push(row);
    } else if recreate(report, &mut fresh, "rollback")? {
        report.push(row_of(
            size,
            "rollback",
            "rollback 1Mi pages",
            runner.child(
                &[
                    "rollback",
                    &opts.rollback_span.map_or(0, |b| b / PAGE_SIZE).to_string(),
                ],
                &image,
            ),
            rollback_note,
        ));
    }
    remove(&image)
}

/// One row per size: the figures side by side.
fn summary(opts: &Opts, report: &mut Report) {
    type Cell = Box<dyn Fn(Option<&Row>) -> String>;
    let secs = |r: Option<&Row>| match r {
        Some(r) if r.ok() => r.seconds.map_or("-".into(), |s| format!("{s:.2}")),
        Some(_) => "fail".into(),
        None => "-".into(),
    };
    let fig = |name: &'static str, prec: usize| -> Cell {
        Box::new(move |r: Option<&Row>| match r {
            Some(r) if r.ok() => r.figure(name).map_or("-".into(), |v| format!("{v:.prec$}")),
            Some(_) => "fail".into(),
            None => "-".into(),
        })
    };
    let mut columns: Vec<(String, String, Cell)> = vec![
        ("create s".into(), "create".into(), Box::new(secs)),
        ("check s".into(), "check".into(), Box::new(secs)),
        ("log s".into(), "log".into(), Box::new(secs)),
        ("open s".into(), "open".into(), fig("open_s", 3)),
        (
            "open MiB".into(),
            "open".into(),
            Box::new(|r: Option<&Row>| match r {
                Some(r) if r.ok() => r.peak_mib.map_or("-".into(), |m| format!("{m:.0}")),
                Some(_) => "fail".into(),
                None => "-".into(),
            }),
        ),
    ];
    for &p in &opts.percents {
        let patterns: &[Pattern] = if p == 0 {
            &[Pattern::Random]
        } else {
            &opts.patterns
        };
        for &pattern in patterns {
            let tag = match (p, pattern) {
                (0, _) => "",
                (_, Pattern::Random) => "r",
                (_, Pattern::Sequential) => "s",
            };
            columns.push((
                format!("kill {p}%{tag} s"),
                format!("kill/{p}/{}", pattern.arg()),
                fig("open_s", 3),
            ));
            if p > 0 {
                columns.push((
                    format!("open {p}%{tag} s"),
                    format!("open/{p}/{}", pattern.arg()),
                    fig("open_s", 3),
                ));
                columns.push((
                    format!("check {p}%{tag} s"),
                    format!("check/{p}/{}", pattern.arg()),
                    Box::new(secs),
                ));
            }
        }
    }
    for &p in &opts.percents {
        if p == 0 {
            columns.push((
                "RSS 0%".into(),
                "write/0/random".into(),
                fig("rss_served_mib", 0),
            ));
        } else {
            for &pattern in &opts.patterns {
                let tag = if pattern == Pattern::Random { "r" } else { "s" };
                columns.push((
                    format!("RSS {p}%{tag}"),
                    format!("write/{p}/{}", pattern.arg()),
                    fig("rss_served_mib", 0),
                ));
            }
        }
    }
    columns.push((
        "rollback ms".into(),
        "rollback".into(),
        fig("rollback_ms", 1),
    ));
    columns.push(("undo ms".into(), "rollback".into(), fig("undo_ms", 1)));

    let mut table: Vec<Vec<String>> = vec![std::iter::once("size".to_string())
        .chain(columns.iter().map(|c| c.0.clone()))
        .collect()];
    for (size, _) in &opts.sizes {
        let mut line = vec![size.clone()];
        for (_, key, cell) in &columns {
            line.push(cell(report.find(size, key)));
        }
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|i| table.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let out = &mut report.out;
    let _ = writeln!(out, "\nsummary (s: seconds; open MiB: peak memory of the clean open and its close; kill P%: open after a kill with P% rewritten at random;");
    let _ = writeln!(out, "RSS P%r / P%s: resident memory served after P% rewritten by random 4 KiB / sequential 1 MiB writes)");
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", cells.join("  "));
    }
    let _ = out.flush();
}

// ---------------------------------------------------------------------------------------
// The children: in-process steps on the engine.

/// A store that keeps the metadata and drops the data: writes to the data area succeed
/// without writing, and reads there give zeros.
struct MetaOnly {
    inner: FileStore,
    data_offset: u64,
}

impl Store for MetaOnly {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let meta = self
            .data_offset
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(meta);
        if !head.is_empty() {
            self.inner.read_at(offset, head)?;
        }
        tail.fill(0);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let meta = self
            .data_offset
            .saturating_sub(offset)
            .min(buf.len() as u64) as usize;
        if meta > 0 {
            self.inner.write_at(offset, &buf[..meta])?;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

fn child(args: &[String]) -> anyhow::Result<()> {
    let (Some(step), Some(image)) = (args.first(), args.get(1)) else {
        bail!("usage: scale __child open|write|rollback IMAGE [ARGS]");
    };
    let image = Path::new(image);
    match step.as_str() {
        "open" => child_open(image),
        "write" => {
            let p: u64 = args
                .get(2)
                .ok_or_else(|| anyhow!("write needs a percentage"))?
                .parse()?;
            let pattern = Pattern::parse(args.get(3).map_or("", String::as_str))?;
            child_write(image, p, pattern)
        }
        "rollback" => {
            let span: u64 = args.get(2).map_or(Ok(0), |s| s.parse())?;
            child_rollback(image, span)
        }
        _ => bail!("unknown child step '{step}'"),
    }
}

fn figure(name: &str, value: f64) {
    println!("figure {name} {value}");
}

/// VmRSS and VmHWM of this process, MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| kib_field(&status, key).map_or(f64::NAN, |k| k as f64);
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// Opens and recovers `image` as the daemon does, on a store that drops data; reports the
/// time it took as `open_s` and the memory after it as `rss_open_mib`.
fn open_volume(image: &Path) -> anyhow::Result<Volume<MetaOnly>> {
    let start = Instant::now();
    let store = FileStore::open(image).with_context(|| format!("opening {}", image.display()))?;
    let data_offset = rewind_history::read_superblock(&store)
        .context("reading the superblock")?
        .layout()
        .data_offset;
    let vol = Volume::open(
        MetaOnly {
            inner: store,
            data_offset,
        },
        &rewind::host::this_host(),
    )
    .context("opening the volume")?;
    figure("open_s", start.elapsed().as_secs_f64());
    let (rss, hwm) = rss_mib();
    figure("rss_open_mib", rss);
    figure("hwm_open_mib", hwm);
    Ok(vol)
}

fn child_open(image: &Path) -> anyhow::Result<()> {
    let vol = open_volume(image)?;
    let start = Instant::now();
    vol.close().context("closing the volume")?;
    figure("close_s", start.elapsed().as_secs_f64());
    figure("hwm_close_mib", rss_mib().1);
    Ok(())
}

/// A cheap pseudo-random page number below `pages` (xorshift64).
fn next_page(x: &mut u64, pages: u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x % pages
}

/// Writes `pages` pages in `pattern` (the same pages on every call), with a flush every
/// `flush_every` pages written if given.
fn write_pass(
    vol: &Volume<MetaOnly>,
    stream: &mut Stream,
    pattern: Pattern,
    pages: u64,
    flush_every: Option<u64>,
) -> anyhow::Result<()> {
    let logical = vol.layout().logical_pages;
    let mut since_flush = 0;
    let mut flush_if_due = |written: u64| -> anyhow::Result<()> {
        since_flush += written;
        if flush_every.is_some_and(|every| since_flush >= every) {
            vol.flush().context("flush")?;
            since_flush = 0;
        }
        Ok(())
    };
    match pattern {
        Pattern::Random => {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut batch = Vec::with_capacity(BATCH);
            for i in 0..pages {
                let l = LogicalPage(next_page(&mut x, logical));
                batch.push((l, vol.allocate(stream, l).context("allocate")?));
                if batch.len() == BATCH || i + 1 == pages {
                    vol.commit_writes(&batch).context("commit_writes")?;
                    flush_if_due(batch.len() as u64)?;
                    batch.clear();
                }
            }
        }
        Pattern::Sequential => {
            let data = vec![0u8; (SEQ_PAGES * PAGE_SIZE) as usize];
            let mut l = 0;
            while l < pages {
                let n = (pages - l).min(SEQ_PAGES);
                vol.write_pages(stream, LogicalPage(l), &data[..(n * PAGE_SIZE) as usize])
                    .context("write_pages")?;
                flush_if_due(n)?;
                l += n;
            }
        }
    }
    Ok(())
}

fn child_write(image: &Path, percent: u64, pattern: Pattern) -> anyhow::Result<()> {
    let vol = open_volume(image)?;
    let pages = vol.layout().logical_pages * percent / 100;
    figure("pages", pages as f64);
    let mut stream = vol.stream(0, 1);
    // First write: the pages land at home, as on a device that holds data everywhere.
    let start = Instant::now();
    write_pass(&vol, &mut stream, pattern, pages, None)?;
    vol.flush().context("flush")?;
    figure("fill_s", start.elapsed().as_secs_f64());
    figure("rss_fill_mib", rss_mib().0);
    // The rewrite: each page now moves to the history area.
    let start = Instant::now();
    write_pass(&vol, &mut stream, pattern, pages, Some(FLUSH_EVERY))?;
    figure("rewrite_s", start.elapsed().as_secs_f64());
    let (rss, hwm) = rss_mib();
    figure("rss_served_mib", rss);
    figure("hwm_mib", hwm);
    let stats = vol.stats();
    figure("history_pages", stats.history_pages as f64);
    figure("safe_points", stats.safe_points as f64);
    io::stdout().flush()?;
    // Like kill -9: no close, no destructor. The next open replays the journal.
    std::process::exit(0)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Rollback over 1 Mi pages spread over the first `span` pages of the device (0: all).
fn child_rollback(image: &Path, span: u64) -> anyhow::Result<()> {
    let vol = open_volume(image)?;
    let layout = *vol.layout();
    let logical = match span {
        0 => layout.logical_pages,
        n => n.min(layout.logical_pages),
    };
    let area = layout.physical_pages - layout.logical_pages;
    // Reclaim starts below `(area / 8).clamp(64, 65536)` free pages (Volume::serve): the
    // rewrite must not retire the safe point rolled back to.
    let need = ROLLBACK_PAGES + (area / 8).clamp(64, 65_536) + FLUSH_EVERY;
    if logical < ROLLBACK_PAGES || area < need {
        figure("skipped", 1.0);
        println!(
            "note skipped: needs {} logical pages and {} pages of history area (see --history); the image has {} and {}",
            ROLLBACK_PAGES, need, logical, area
        );
        vol.close()?;
        return Ok(());
    }
    // 1 Mi distinct pages spread over the device: i * step mod logical, step prime to it.
    let mut step = (logical as f64 * 0.618_033_988_7) as u64 | 1;
    while gcd(step, logical) != 1 {
        step += 2;
    }
    let page = |i: u64| LogicalPage(((i as u128 * step as u128) % logical as u128) as u64);
    let mut stream = vol.stream(0, 1);
    let pass = |stream: &mut Stream, flush: bool| -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(BATCH);
        for i in 0..ROLLBACK_PAGES {
            let l = page(i);
            batch.push((l, vol.allocate(stream, l).context("allocate")?));
            if batch.len() == BATCH {
                vol.commit_writes(&batch).context("commit_writes")?;
                batch.clear();
            }
            if flush && (i + 1) % FLUSH_EVERY == 0 {
                vol.flush().context("flush")?;
            }
        }
        if !batch.is_empty() {
            vol.commit_writes(&batch).context("commit_writes")?;
        }
        Ok(())
    };
    let start = Instant::now();
    pass(&mut stream, false)?;
    let a: SafePointId = vol
        .safe_point(Trigger::User, Some("a".into()))
        .context("safe point a")?;
    pass(&mut stream, true)?;
    vol.safe_point(Trigger::User, Some("b".into()))
        .context("safe point b")?;
    figure("write_s", start.elapsed().as_secs_f64());
    figure("history_pages", vol.stats().history_pages as f64);
    let (rss, hwm) = rss_mib();
    figure("rss_before_mib", rss);
    figure("hwm_before_mib", hwm);
    let start = Instant::now();
    let over = vol.rollback(a).context("rollback to a")?;
    figure("rollback_ms", start.elapsed().as_secs_f64() * 1e3);
    let start = Instant::now();
    vol.rollback(over).context("rollback undone")?;
    figure("undo_ms", start.elapsed().as_secs_f64() * 1e3);
    let (rss, hwm) = rss_mib();
    figure("rss_mib", rss);
    figure("hwm_mib", hwm);
    let start = Instant::now();
    vol.close().context("closing the volume")?;
    figure("close_s", start.elapsed().as_secs_f64());
    figure("hwm_close_mib", rss_mib().1);
    Ok(())
}
