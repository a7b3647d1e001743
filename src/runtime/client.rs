//! Asking a daemon: one request on its control socket and its reply (the wire format is
//! `ipc::control`), and [`ask`], which first checks that device ID is a rewind device and
//! not a view, and puts the ways asking can fail in words.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};

use crate::ipc::control::{ControlRequest, Response};
use crate::ipc::paths;
use crate::runtime::registry;

/// Longest reply line a client reads: the `log` of a full window (16384 safe points with
/// 64-byte labels, each escaped at worst) fits.
const MAX_REPLY_BYTES: u64 = 32 << 20;
/// How long `list` and `stats` wait for a daemon to answer.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the socket.
    #[error("no rewind daemon answers at {}: {source}", .path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error of `connect`.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time, or the connection broke.
    #[error("the rewind daemon at {} did not answer: {source}", .path.display())]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The reply was not a valid response line.
    #[error("the rewind daemon at {} sent a bad reply: {why}", .path.display())]
    BadReply {
        /// The socket.
        path: PathBuf,
        /// What was wrong with it.
        why: String,
    },
}

/// Sends one request to the daemon listening at `path` and reads its reply.
pub fn request(
    path: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<Response, ClientError> {
    exchange(path, request, timeout).map(|(reply, _)| reply)
}

/// `request`, also returning the connection, positioned after the reply line: what the
/// daemon sends after it (an archive) is read from there.
fn exchange(
    path: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<(Response, BufReader<UnixStream>), ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let exchange = |source| ClientError::Exchange {
        path: path.to_path_buf(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(exchange)?;
    stream.set_write_timeout(Some(timeout)).map_err(exchange)?;
    let mut line = serde_json::to_string(request).map_err(|e| ClientError::BadReply {
        path: path.to_path_buf(),
        why: format!("cannot encode the request: {e}"),
    })?;
    line.push('\n');
    // A daemon past its connection limit answers `busy` and closes at once, maybe before
    // the request is written: the write then fails, and the answer waits to be read.
    let sent = (&stream).write_all(line.as_bytes());
    let mut reply = String::new();
    let mut conn = BufReader::new(stream);
    let read = (&mut conn).take(MAX_REPLY_BYTES).read_line(&mut reply);
    if reply.is_empty() {
        sent.map_err(exchange)?;
    }
    read.map_err(exchange)?;
    if reply.is_empty() {
        return Err(ClientError::BadReply {
            path: path.to_path_buf(),
            why: "the connection closed without a reply".into(),
        });
    }
    let reply = serde_json::from_str(&reply).map_err(|e| ClientError::BadReply {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    Ok((reply, conn))
}

/// Sends `what` to the daemon of device `id` (for `command`, which needs root to reach the
/// socket). The outer error says why the daemon could not be asked; the inner one is
/// the daemon's refusal, for the caller to put in words.
pub fn ask(
    command: &str,
    id: u32,
    what: &ControlRequest,
    timeout: Duration,
) -> Result<Result<Response, String>> {
    Ok(ask_for_stream(command, id, what, timeout)?.map(|(reply, _)| reply))
}

/// `ask`, also returning the connection after the reply line, for a request the daemon
/// answers with more than a line (`export`). `timeout` applies to each read from it.
pub fn ask_for_stream(
    command: &str,
    id: u32,
    what: &ControlRequest,
    timeout: Duration,
) -> Result<Result<(Response, BufReader<UnixStream>), String>> {
    registry::check_daemon_access(command)?;
    let Some(data) = registry::target_data(id) else {
        bail!(registry::not_rewind(id));
    };
    if let Some(v) = data.view {
        bail!(
            "{} is a view of {} (safe point {}): give -n {} (the live device)",
            paths::device_path(id).display(),
            paths::device_path(v.of).display(),
            v.at,
            v.of
        );
    }
    let (reply, conn) = match exchange(&paths::socket_path(id), what, timeout) {
        Ok(r) => r,
        Err(e) => {
            if let Ok((state, pid)) = registry::kernel_view(id) {
                if registry::needs_recovery(state, pid) {
                    bail!(
                        "the daemon of ublk device {id} is dead and the device waits for a new \
                         one: `rewind recover -n {id}`"
                    );
                }
            }
            return Err(e.into());
        }
    };
    if !reply.ok {
        return Ok(Err(reply.error.unwrap_or_else(|| "no reason given".into())));
    }
    Ok(Ok((reply, conn)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::{bind, start_server};
    use crate::ipc::control::sample_stats;

    #[test]
    fn request_reply_over_a_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.sock");
        let listener = bind(&path).expect("bind");
        start_server(listener, |r: &ControlRequest| match r {
            ControlRequest::Stats => Response::stats(sample_stats()),
            _ => Response::error("not in this test"),
        })
        .expect("serve");
        let reply =
            request(&path, &ControlRequest::Stats, Duration::from_secs(5)).expect("request");
        assert_eq!(reply, Response::stats(sample_stats()));

        // A garbled line gets an error reply, and the connection stays usable.
        let mut s = UnixStream::connect(&path).expect("connect");
        s.write_all(b"not json\n{\"cmd\":\"stats\"}\n")
            .expect("write");
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).expect("read");
        let first: Response = serde_json::from_str(&line).expect("json");
        assert!(!first.ok);
        assert!(first.error.unwrap().starts_with("bad request"));
        line.clear();
        r.read_line(&mut line).expect("read");
        let second: Response = serde_json::from_str(&line).expect("json");
        assert!(second.ok);
    }

    /// A control server at the returned path whose `log` is a slow command: each sends on
    /// `running` when it starts, then waits for a message on `release`; `ping` answers
    /// pid 7 at once.
    fn slow_server() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.sock");
        let listener = bind(&path).expect("bind");
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let (started, running) = std::sync::mpsc::channel::<()>();
        let started = std::sync::Mutex::new(started);
        start_server(listener, move |r: &ControlRequest| match r {
            ControlRequest::Log => {
                started.lock().unwrap().send(()).expect("started");
                released.lock().unwrap().recv().expect("released");
                Response::error("slow command done")
            }
            ControlRequest::Ping => Response::pong(7, 1),
            _ => Response::error("not in this test"),
        })
        .expect("serve");
        (dir, path, release, running)
    }

    #[test]
    fn a_ping_is_answered_while_a_slow_command_runs() {
        let (_dir, path, release, running) = slow_server();
        let slow_path = path.clone();
        let slow = std::thread::spawn(move || {
            request(&slow_path, &ControlRequest::Log, Duration::from_secs(60))
        });
        running.recv().expect("the slow command started");
        // Served one connection at a time, the ping would wait for the slow command and
        // time out: the supervisor would take a busy daemon for a hung one.
        for _ in 0..3 {
            let pong = request(&path, &ControlRequest::Ping, Duration::from_secs(20))
                .expect("a ping while the slow command runs");
            assert_eq!(pong.pid, Some(7));
        }
        assert!(!slow.is_finished(), "the slow command ended early");
        release.send(()).expect("release");
        let done = slow.join().expect("slow client").expect("slow reply");
        assert_eq!(done.error.as_deref(), Some("slow command done"));
    }

    #[test]
    fn past_the_connection_limit_a_client_is_told_the_daemon_is_busy() {
        use crate::daemon::control::MAX_CONNECTIONS;
        let (_dir, path, release, running) = slow_server();
        let slow: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || {
                    request(&p, &ControlRequest::Log, Duration::from_secs(60))
                })
            })
            .collect();
        for _ in 0..MAX_CONNECTIONS {
            running.recv().expect("a slow command started");
        }
        let busy = request(&path, &ControlRequest::Ping, Duration::from_secs(20))
            .expect("an answer past the limit");
        assert!(busy.is_busy(), "{busy:?}");
        for _ in 0..MAX_CONNECTIONS {
            release.send(()).expect("release");
        }
        for s in slow {
            s.join().expect("slow client").expect("slow reply");
        }
        // The slots are given back (each as its thread sees its client go): a ping is
        // served again. The loop waits for that event, with a generous limit.
        let mut pong = Response::busy(MAX_CONNECTIONS);
        for _ in 0..200 {
            pong = request(&path, &ControlRequest::Ping, Duration::from_secs(20))
                .expect("a ping after the slow commands");
            if !pong.is_busy() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(pong.pid, Some(7), "{pong:?}");
    }

    #[test]
    fn stale_socket_is_replaced_and_absent_daemon_is_clear() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.sock");
        drop(bind(&path).expect("first bind"));
        // The file is left behind, as after a crash; a new daemon binds over it.
        assert!(path.exists());
        let listener = bind(&path).expect("rebind");
        drop(listener);
        std::fs::remove_file(&path).expect("remove");
        let e = request(&path, &ControlRequest::Stats, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
