//! systemd's side of the notify protocol, as much of it as the guest scenario
//! `systemd-notify` needs (the guest has no systemd): binds a unix datagram socket at the
//! path given and prints every field of every message it gets, one per line, after the
//! seconds since it started, until it is killed.
//!
//! `cargo build --release --example notify_listen`; ci/test.sh puts it in the guest as
//! `notify-listen`.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: notify-listen SOCKET-PATH");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path)?;
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = std::io::stdout();
    loop {
        let n = socket.recv(&mut buf)?;
        let at = start.elapsed().as_secs_f64();
        for field in String::from_utf8_lossy(&buf[..n]).lines() {
            writeln!(out, "{at:.3} {field}")?;
        }
        out.flush()?;
    }
}
