//! The command line's refusals on this host, run as a user would run them: the built binary,
//! a real image file in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

fn rewind(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rewind"))
        .args(args)
        .env("REWIND_LOG_DIR", std::env::temp_dir())
        .output()
        .expect("run rewind")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn add_without_ublk_drv_says_how_to_load_it() {
    if Path::new("/dev/ublk-control").exists() || !is_root() {
        println!("not run: this host has ublk_drv loaded, or we are not root (the check comes after the root check)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let o = rewind(&["add", img.to_str().unwrap(), "--size", "64M"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("modprobe ublk_drv"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(!img.exists(), "a refused add must not create the image");
}

#[test]
fn add_as_a_user_says_it_needs_root() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        println!("not run: needs root and setpriv to drop to an unprivileged user");
        return;
    }
    let o = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_rewind"))
        .args(["add", "/nonexistent/disk.img", "--size", "64M"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("needs root"), "{e}");
}

#[test]
fn create_refuses_to_format_over_an_image_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let p = img.to_str().unwrap();
    assert!(rewind(&["create", p, "--size", "16M"]).status.success());
    let before = std::fs::read(&img).unwrap();
    let o = rewind(&["create", p, "--size", "32M"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "a refused create changed the image"
    );
}

#[test]
fn create_refuses_a_size_that_is_not_whole_pages() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("odd.img");
    let o = rewind(&["create", img.to_str().unwrap(), "--size", "10000"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("4096"), "{}", stderr(&o));
    assert!(!img.exists());
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn log_of_an_image_shows_its_window_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let p = img.to_str().unwrap();
    assert!(rewind(&["create", p, "--size", "16M"]).status.success());
    let before = std::fs::read(&img).unwrap();

    let o = rewind(&["log", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[0].starts_with("ID  TIME") && lines[0].ends_with("CHANGED  HELD"),
        "{out}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[0], "0", "{out}");
    assert_eq!(row[3], "format", "{out}");
    assert_eq!(row[4], "-", "no label: {out}");
    assert_eq!(row[5], "-", "the oldest has no CHANGED: {out}");
    assert!(
        lines[2].starts_with("1 safe point since ") && lines[2].contains("history 0 B used of"),
        "{out}"
    );

    let o = rewind(&["log", p, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json is JSON");
    let entries = v.as_array().expect("an array");
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e["id"], 0);
    assert_eq!(e["trigger"], "format");
    assert!(e["label"].is_null() && e["changed_bytes"].is_null(), "{e}");
    assert_eq!(e["held_bytes"], 0);
    assert!(
        e["time_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000,
        "{e}"
    );
    assert!(e["time"].as_str().unwrap().contains('T'), "{e}");

    assert_eq!(
        std::fs::read(&img).unwrap(),
        before,
        "`rewind log IMAGE` changed the image"
    );
}

#[test]
fn log_of_an_image_in_use_points_to_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let p = img.to_str().unwrap();
    assert!(rewind(&["create", p, "--size", "16M"]).status.success());
    // Held the way a serving daemon holds it.
    let held = rewind::daemon::backing::FileStore::open(&img).unwrap();
    let o = rewind(&["log", p]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("rewind log -n"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    drop(held);
    assert!(rewind(&["log", p]).status.success());
}

#[test]
fn log_of_a_foreign_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("foreign.img");
    std::fs::write(&f, vec![7u8; 1 << 20]).unwrap();
    let o = rewind(&["log", f.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a rewind image"), "{}", stderr(&o));
    let o = rewind(&["log", dir.path().join("missing.img").to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("No such file"), "{e}");
    assert_eq!(e.matches("No such file").count(), 1, "said twice: {e}");
}

#[test]
fn safepoint_and_log_of_a_device_as_a_user_say_they_need_root() {
    if !is_root() || !Path::new("/usr/bin/setpriv").exists() {
        println!("not run: needs root and setpriv to drop to an unprivileged user");
        return;
    }
    for args in [&["safepoint", "-n", "0"][..], &["log", "-n", "0"][..]] {
        let o = Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_rewind"))
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains("needs root"), "{args:?}: {e}");
    }
}

#[test]
fn rollback_of_an_unserved_image_is_undoable_and_refuses_unknown_targets() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let p = img.to_str().unwrap();
    assert!(rewind(&["create", p, "--size", "16M"]).status.success());
    // Safe point 0 is the empty device made by create.
    let o = rewind(&["rollback", p, "--to", "0", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["to"], 0);
    let undo = out["undo"].as_u64().unwrap();
    let log = rewind(&["log", p, "--json"]);
    let log: serde_json::Value = serde_json::from_slice(&log.stdout).unwrap();
    let made = log
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == undo)
        .expect("the state left by the rollback is a safe point");
    assert_eq!(made["trigger"], "rollback");
    let o = rewind(&["rollback", p, "--to", &undo.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("undo with"));
    for (to, says) in [
        ("99", "not in the history window"),
        ("nope", "labelled 'nope'"),
    ] {
        let before = std::fs::read(&img).unwrap();
        let o = rewind(&["rollback", p, "--to", to]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
        assert!(
            std::fs::read(&img).unwrap() == before,
            "a refused rollback changed the image"
        );
    }
}

#[test]
fn check_passes_a_good_image_and_fails_a_corrupt_one_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let p = img.to_str().unwrap();
    assert!(rewind(&["create", p, "--size", "16M"]).status.success());
    // Roll back once so the check sees a journal with records and shared pages accounted.
    assert!(rewind(&["rollback", p, "--to", "0"]).status.success());
    let before = std::fs::read(&img).unwrap();
    let o = rewind(&["check", p, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["ok"], true);
    assert_eq!(r["superblock_copies"][0]["valid"], true);
    assert_eq!(r["superblock_copies"][1]["valid"], true);
    let total = r["live_pages"].as_u64().unwrap()
        + r["history_pages"].as_u64().unwrap()
        + r["free_pages"].as_u64().unwrap();
    assert_eq!(total, r["physical_pages"].as_u64().unwrap());
    assert!(
        std::fs::read(&img).unwrap() == before,
        "check wrote to the image"
    );

    // One damaged copy: still consistent, and the report names the bad copy.
    let mut bytes = before.clone();
    bytes[100] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let o = rewind(&["check", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("copy A: NOT VALID"), "{out}");

    // A damaged checkpoint: a clear error and a non-zero exit.
    let sb: Vec<u8> = before[..4096].to_vec();
    let slot = u32::from_le_bytes(sb[68..72].try_into().unwrap());
    assert!(slot <= 1);
    let mut bytes = before.clone();
    // The checkpoint slots start after the journal (at least 4 MiB + 8 KiB in); flip a
    // byte of both slots' first page past the header to break the checksum of either.
    let j_blocks = u64::from_le_bytes(sb[32..40].try_into().unwrap());
    let ckpt0 = (8192 + j_blocks * 512).div_ceil(4096) * 4096;
    bytes[ckpt0 as usize + 4096 + 10] ^= 0xff;
    let logical = u64::from_le_bytes(sb[16..24].try_into().unwrap());
    let physical = u64::from_le_bytes(sb[24..32].try_into().unwrap());
    let slot_bytes =
        (4096 + logical * 8 + 88 * 16384 + 16 * 16385 + 16 * physical).div_ceil(4096) * 4096;
    bytes[(ckpt0 + slot_bytes) as usize + 4096 + 10] ^= 0xff;
    std::fs::write(&img, &bytes).unwrap();
    let o = rewind(&["check", p]);
    assert!(!o.status.success(), "a corrupt checkpoint passed the check");
    let e = stderr(&o);
    assert!(
        e.contains("failed the check") && e.contains("checkpoint"),
        "{e}"
    );
}

#[test]
fn pin_of_an_unserved_image_is_durable_and_times_name_safe_points() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let p = img.to_str().unwrap();
    assert!(rewind(&["create", p, "--size", "16M"]).status.success());
    // Safe point 0 (made by create) is the newest at or before now, and a day ago is before it.
    let o = rewind(&["pin", p, "--at", "0s", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (out["id"].as_u64(), out["pinned"].as_bool()),
        (Some(0), Some(true))
    );
    let log: serde_json::Value =
        serde_json::from_slice(&rewind(&["log", p, "--json"]).stdout).unwrap();
    assert_eq!(log[0]["pinned"], true, "{log}");
    assert!(stdout(&rewind(&["log", p])).contains("pin"));
    let o = rewind(&["unpin", p, "--at", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("unpinned safe point 0"),
        "{}",
        stdout(&o)
    );
    let log: serde_json::Value =
        serde_json::from_slice(&rewind(&["log", p, "--json"]).stdout).unwrap();
    assert_eq!(log[0]["pinned"], false, "{log}");
    for (at, says) in [
        ("1d", "no safe point at or before"),
        ("2099-01-01 00:00:00", "later than now"),
        ("25:61", "looks like a time"),
        ("99", "not in the history window"),
    ] {
        let before = std::fs::read(&img).unwrap();
        let o = rewind(&["pin", p, "--at", at]);
        assert!(!o.status.success(), "{at}");
        assert!(stderr(&o).contains(says), "{at}: {}", stderr(&o));
        assert!(
            std::fs::read(&img).unwrap() == before,
            "a refused pin changed the image"
        );
    }
}

#[test]
fn view_as_a_user_says_it_needs_root_and_labels_that_read_as_times_are_refused() {
    if is_root() {
        eprintln!("skipping: runs as root, and the root case needs a ublk device");
        return;
    }
    let o = rewind(&["view", "-n", "0", "--at", "5m"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs root"), "{}", stderr(&o));
    let o = rewind(&["safepoint", "-n", "0", "--label", "5m"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("reads as an age"), "{}", stderr(&o));
}

/// Bytes the file system has allocated to `path` (`st_blocks` × 512).
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn create_reserves_the_image_and_sparse_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("full.img");
    let o = rewind(&["create", img.to_str().unwrap(), "--size", "16M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    if stderr(&o).contains("cannot preallocate") {
        println!("skipping: the temporary directory's file system cannot preallocate");
        return;
    }
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(len > 16 << 20, "{len}");
    assert!(
        allocated(&img) >= len,
        "a created image has {} of its {len} bytes allocated",
        allocated(&img)
    );
    assert!(!stdout(&o).contains("sparse"), "{}", stdout(&o));

    let img = dir.path().join("sparse.img");
    let o = rewind(&["create", img.to_str().unwrap(), "--size", "16M", "--sparse"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(sparse)"), "{}", stdout(&o));
    let len = std::fs::metadata(&img).unwrap().len();
    assert!(
        allocated(&img) < len / 2,
        "a --sparse image has {} of its {len} bytes allocated",
        allocated(&img)
    );
    let o = rewind(&["check", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A tmpfs mounted on a temporary directory of its own, unmounted when dropped.
struct SmallTmpfs {
    dir: tempfile::TempDir,
}

impl SmallTmpfs {
    /// The mounted tmpfs, or why it could not be mounted.
    fn mount(size: &str) -> Result<SmallTmpfs, String> {
        if !is_root() {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !o.status.success() {
            return Err(format!("mount failed: {}", stderr(&o).trim()));
        }
        Ok(SmallTmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn create_on_a_full_file_system_says_what_it_needs_and_leaves_nothing() {
    let fs = match SmallTmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(why) => {
            println!("skipping: cannot mount a small tmpfs to fill ({why})");
            return;
        }
    };
    let img = fs.path().join("disk.img");
    let p = img.to_str().unwrap();
    // 16 MiB of device, 64 MiB of history and the metadata: far more than 8 MiB.
    let o = rewind(&["create", p, "--size", "16M"]);
    assert!(!o.status.success(), "a create that cannot fit succeeded");
    let e = stderr(&o);
    assert!(e.contains("ENOSPC"), "{e}");
    assert!(e.contains("8 MiB free"), "{e}");
    assert!(
        e.contains("the image needs ") && e.contains("MiB more"),
        "{e}"
    );
    assert!(e.contains("--sparse"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(!img.exists(), "a failed create left its file behind");

    // Sparse, it fits: only the metadata is written.
    let o = rewind(&["create", p, "--size", "16M", "--sparse"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(rewind(&["check", p]).status.success());
}

#[test]
fn completions_and_man_pages_come_from_the_binary() {
    for shell in ["bash", "zsh", "fish"] {
        let o = rewind(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        assert!(
            stdout(&o).contains("rollback"),
            "{shell} completes no rollback"
        );
    }
    let o = rewind(&["completions", "tcsh"]);
    assert!(!o.status.success(), "an unknown shell is refused");
    assert!(stderr(&o).contains("possible values"), "{}", stderr(&o));

    let o = rewind(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(".TH rewind 1"), "{}", stdout(&o));
    let dir = tempfile::tempdir().unwrap();
    let man1 = dir.path().join("man1");
    let o = rewind(&["man", "--dir", man1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for page in [
        "rewind.1",
        "rewind-add.1",
        "rewind-rollback.1",
        "rewind-view.1",
    ] {
        let text = std::fs::read_to_string(man1.join(page)).expect(page);
        assert!(text.contains(".SH NAME"), "{page}");
        assert!(
            stdout(&o).contains(page),
            "{page} is not in the list printed"
        );
    }
}

#[test]
fn logs_of_an_image_prints_the_end_of_its_daemons_log() {
    // `rewind()` points REWIND_LOG_DIR at the temporary directory.
    let name = format!("logs-test-{}.img", std::process::id());
    let log = std::env::temp_dir().join(format!("rewind-{name}.log"));
    let lines: Vec<String> = (1..=80).map(|i| format!("line {i}")).collect();
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let o = rewind(&["logs", &name, "--lines", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "line 78\nline 79\nline 80\n");
    let o = rewind(&["logs", &name]);
    assert_eq!(stdout(&o).lines().count(), 50, "50 lines by default");
    std::fs::remove_file(&log).unwrap();

    let o = rewind(&["logs", &name]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no daemon has logged there"),
        "{}",
        stderr(&o)
    );
    let o = rewind(&["logs"]);
    assert!(!o.status.success(), "neither -n nor an image");
}

#[test]
fn export_of_an_unserved_image_imports_and_damaged_archives_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (img, rwa, out) = (at("disk.img"), at("disk.rwa"), at("restored.img"));
    assert!(rewind(&["create", &img, "--size", "16M", "--sparse"])
        .status
        .success());
    // Two more safe points: a rollback to 0 and its undo point.
    assert!(rewind(&["rollback", &img, "--to", "0"]).status.success());
    let before = std::fs::read(&img).unwrap();
    let o = rewind(&["export", &img, "-o", &rwa, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read(&img).unwrap() == before,
        "export wrote to the image"
    );
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (j["from"].as_u64(), j["safe_points"].as_u64()),
        (Some(0), Some(2))
    );
    let o = rewind(&["archive", "ls", &rwa, "--json"]);
    let ls: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ls["device_bytes"], 16 << 20);
    assert_eq!(ls["safe_points"][1]["trigger"], "rollback");
    assert!(rewind(&["archive", "verify", &rwa]).status.success());
    let o = rewind(&["import", &rwa, "--at", "0", "-o", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let restored = std::fs::read(&out).unwrap();
    assert_eq!(restored.len(), 16 << 20);
    assert!(
        restored.iter().all(|b| *b == 0),
        "the device at safe point 0 is all zeros"
    );
    // Refusals: an existing output, a safe point the archive lacks, a truncated archive
    // (which leaves no output behind), a file that is no archive.
    let o = rewind(&["import", &rwa, "-o", &out]);
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    let o = rewind(&["import", &rwa, "--at", "7", "-o", &at("x.img")]);
    assert!(
        stderr(&o).contains("none of the archives"),
        "{}",
        stderr(&o)
    );
    let bytes = std::fs::read(&rwa).unwrap();
    std::fs::write(at("cut.rwa"), &bytes[..bytes.len() - 1]).unwrap();
    let o = rewind(&["import", &at("cut.rwa"), "-o", &at("y.img")]);
    assert!(
        !o.status.success() && stderr(&o).contains("truncated"),
        "{}",
        stderr(&o)
    );
    let o = rewind(&["archive", "verify", &at("cut.rwa")]);
    assert!(
        !o.status.success() && stdout(&o).contains("FAILED"),
        "{}",
        stdout(&o)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') || n == "y.img")
        .collect();
    assert!(left.is_empty(), "a failed import left {left:?}");
    let o = rewind(&["archive", "ls", &img]);
    assert!(
        stderr(&o).contains("not a rewind archive"),
        "{}",
        stderr(&o)
    );
}

/// `--read-only` serves an existing image as it is: the options that shape a new image or a
/// live device are refused with it, and `--at` means nothing without it.
#[test]
fn add_read_only_refuses_what_only_a_live_device_takes() {
    for extra in [
        &["--size", "1G"][..],
        &["--history", "1G"],
        &["--sparse"],
        &["--supervise"],
        &["--on-crash", "stop"],
        &["--idle", "5"],
    ] {
        let mut args = vec!["add", "/nonexistent.img", "--read-only"];
        args.extend_from_slice(extra);
        let o = rewind(&args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot be used with"),
            "{extra:?}: {}",
            stderr(&o)
        );
    }
    let o = rewind(&["add", "/nonexistent.img", "--at", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--read-only"), "{}", stderr(&o));
}
