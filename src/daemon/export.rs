//! `rewind export -n ID`: the daemon writes the archive (`rewind_archive`) of its volume's
//! history on the control connection that asked for it, after an answer line.

use std::io::{self, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rewind_archive::{Export, ExportOptions};
use rewind_history::Volume;

use crate::daemon::backing::FileStore;
use crate::daemon::control::write_line;
use crate::ipc::control::Response;

/// How long one write to the client may wait: it may pipe the archive through a slow link
/// (ssh) or pace itself (`rewind mirror --rate`), but one that stops reading must not hold
/// the export's views for ever.
const WRITE_PATIENCE: Duration = Duration::from_secs(300);
/// How often a waiting write looks whether the device is stopping: then the export ends
/// at once, so that the volume can close.
const WRITE_LOOK: Duration = Duration::from_secs(1);

/// Plans the export `options` asks for and answers on `conn`: an error line, or an ok line
/// followed by the archive. Stops (the client sees the archive cut short) when `serving`
/// turns false, so that the volume can close when the device goes.
pub fn stream(
    volume: &Volume<FileStore>,
    options: ExportOptions,
    conn: &mut UnixStream,
    serving: &dyn Fn() -> bool,
) {
    if !serving() {
        let _ = write_line(conn, &Response::error("the device is not being served now"));
        return;
    }
    let export = match Export::plan(volume, options) {
        Ok(e) => e,
        Err(e) => {
            let _ = write_line(conn, &Response::error(e.to_string()));
            return;
        }
    };
    if write_line(conn, &Response::done()).is_err() {
        return;
    }
    let _ = conn.set_write_timeout(Some(WRITE_LOOK));
    let d = export.directory();
    let (first, last) = (d.safe_points[0].id, d.last());
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, Patient { conn, serving });
    let written = export.write(&mut out, &mut |_| {
        if serving() {
            Ok(())
        } else {
            Err(rewind_archive::Error::Refused(
                "the device is stopping".into(),
            ))
        }
    });
    // `write` flushed on success.
    if written.is_err() {
        // Drop what is buffered rather than flush it to a client that may not read.
        let _ = out.into_parts();
    }
    // A mirror's steps (net exports) come every few seconds: only their failures are news.
    let level = if options.net {
        log::Level::Debug
    } else {
        log::Level::Info
    };
    match written {
        Ok(()) => log::log!(
            level,
            "exported safe points {first} to {last}: {} bytes in {:.1?}",
            d.total_bytes(),
            started.elapsed()
        ),
        Err(e) => log::warn!("export of safe points {first} to {last} ended: {e}"),
    }
}

/// The client's connection, written with patience: a write that times out (`WRITE_LOOK`) is
/// tried again while the device is served, for `WRITE_PATIENCE` in all.
struct Patient<'a> {
    conn: &'a mut UnixStream,
    serving: &'a dyn Fn() -> bool,
}

impl Write for Patient<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            match self.conn.write(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && (self.serving)()
                        && started.elapsed() < WRITE_PATIENCE => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}
