//! The daemon's control server: binds the device's control socket and answers each request
//! (the wire format is `ipc::control`) on a thread of its own.
//!
//! One thread serves the socket, one connection at a time, with a time limit on each read so
//! a stuck client cannot hold it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use crate::ipc::control::{Request, Response};

/// Longest request line accepted, so a client cannot make the daemon buffer without end.
const MAX_LINE_BYTES: u64 = 64 << 10;
/// How long the server waits for a client's next line before dropping it.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the control socket at `path`, replacing a stale one left by a daemon that died
/// (ublk device ids are unique while a device exists, so no live daemon can own it).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => log::info!("removed a stale control socket {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Later commands change the device (rollback): only root may talk to it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `listener` on a new thread until the process exits, answering each request with
/// `handler`.
pub fn serve<H>(listener: UnixListener, handler: H) -> io::Result<std::thread::JoinHandle<()>>
where
    H: Fn(&Request) -> Response + Send + 'static,
{
    std::thread::Builder::new()
        .name("rewind-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_connection(stream, &handler) {
                            log::debug!("control connection ended: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("control socket accept failed: {e}");
                        // Do not spin on a persistent error (e.g. out of descriptors).
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

fn serve_connection<H>(stream: UnixStream, handler: &H) -> io::Result<()>
where
    H: Fn(&Request) -> Response,
{
    stream.set_read_timeout(Some(SERVER_READ_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_READ_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut reader).take(MAX_LINE_BYTES).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= MAX_LINE_BYTES {
            write_line(
                &mut writer,
                &Response::error(format!("request longer than {MAX_LINE_BYTES} bytes")),
            )?;
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handler(&request),
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        write_line(&mut writer, &response)?;
    }
}

fn write_line(w: &mut impl Write, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    w.write_all(text.as_bytes())?;
    w.flush()
}
