//! `rewind export -n ID`: the daemon writes the archive (`rewind_archive`) of its volume's
//! history on the control connection that asked for it, after an answer line.

use std::io::BufWriter;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rewind_archive::{Export, ExportOptions};
use rewind_history::Volume;

use crate::daemon::backing::FileStore;
use crate::daemon::control::write_line;
use crate::ipc::control::Response;

/// How long one write to the client may block: it may pipe the archive through a slow
/// link (ssh), but one that stops reading must not hold the export's views, or the volume
/// a stopping device wants to close, for long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let d = export.directory();
    let (first, last) = (d.safe_points[0].id, d.last());
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, conn);
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
    match written {
        Ok(()) => log::info!(
            "exported safe points {first} to {last}: {} bytes in {:.1?}",
            d.total_bytes(),
            started.elapsed()
        ),
        Err(e) => log::warn!("export of safe points {first} to {last} ended: {e}"),
    }
}
