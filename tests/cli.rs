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
