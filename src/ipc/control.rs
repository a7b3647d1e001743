//! The control socket of a running daemon: `/run/rewind/ublkb<ID>.sock`, one JSON object per
//! line each way. A client sends `{"cmd":"stats"}` and reads one reply line such as
//! `{"ok":true,"stats":{...}}` or `{"ok":false,"error":"..."}`. The commands:
//! - `{"cmd":"stats"}`: the device's figures (`stats`);
//! - `{"cmd":"safepoint","label":"x"}` (label optional): makes a safe point now and
//!   answers with it (`safe_point`);
//! - `{"cmd":"log"}`: the history window, oldest first (`safe_points`), and the figures
//!   (`stats`);
//! - `{"cmd":"open_view","at":12}`: adds a read-only device showing safe point 12 and
//!   answers with it (`view`); `{"cmd":"close_view","device":1}` removes it;
//! - `{"cmd":"pin","id":12,"pinned":true}`: pins (or unpins) a safe point, durably;
//! - `{"cmd":"ping"}`: the heartbeat of `rewind add --supervise`; answers `pid` once the
//!   engine's state lock could be taken, so a daemon stuck in its engine does not answer.
//!
//! One thread serves the socket, one connection at a time, with a time limit on each read so
//! a stuck client cannot hold it. More commands are added as [`Request`] variants.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line accepted, so a client cannot make the daemon buffer without end.
const MAX_LINE_BYTES: u64 = 64 << 10;
/// Longest reply line a client reads: the `log` of a full window (16384 safe points with
/// 64-byte labels, each escaped at worst) fits.
const MAX_REPLY_BYTES: u64 = 32 << 20;
/// How long the server waits for a client's next line before dropping it.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A command to the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The device's figures.
    Stats,
    /// Make an explicit safe point now, with an optional label.
    #[serde(rename = "safepoint")]
    SafePoint {
        /// At most 64 bytes, unique in the window.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// The history window.
    Log,
    /// Is the daemon alive and its engine not stuck? Answers with its pid.
    Ping,
    /// Make safe point `to` the live state again (the client has made sure nobody has the
    /// device open exclusively, and drops the kernel's cache afterwards).
    Rollback {
        /// The safe point id.
        to: u64,
    },
    /// Add a read-only device that shows safe point `at` while the live device runs on.
    OpenView {
        /// The safe point id.
        at: u64,
    },
    /// Remove view device `device` (a ublk id) and let its safe point retire again.
    CloseView {
        /// The view's ublk device id.
        device: u32,
    },
    /// Keep safe point `id` from retiring (`pinned`), or let it retire again.
    Pin {
        /// The safe point id.
        id: u64,
        /// Pin or unpin.
        pinned: bool,
    },
}

/// A view device as its daemon reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRecord {
    /// Its ublk device id.
    pub device_id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The safe point it shows.
    pub at: u64,
    /// Why reclaim dropped it (its reads fail with EIO), if it did.
    pub dropped: Option<String>,
}

/// A safe point as the daemon reports it: the engine's `SafePointInfo`, with the trigger
/// by name so that a client older than the daemon still shows triggers it does not know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafePointRecord {
    /// Its id.
    pub id: u64,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// What made it: `format`, `flush`, `idle`, `user`, `reclaim`, ...
    pub trigger: String,
    /// Its label, if it has one.
    pub label: Option<String>,
    /// Pages first written in the epoch it closed; unknown (`None`) for the oldest.
    pub changed_pages: Option<u64>,
    /// History pages that go when it retires.
    pub held_pages: u64,
    /// Kept from retiring by `rewind pin`.
    #[serde(default)]
    pub pinned: bool,
    /// The view devices showing it (ublk ids).
    #[serde(default)]
    pub views: Vec<u32>,
}

impl From<&rewind_history::SafePointInfo> for SafePointRecord {
    fn from(info: &rewind_history::SafePointInfo) -> SafePointRecord {
        let sp = &info.safe_point;
        SafePointRecord {
            id: sp.id,
            time_ns: sp.time_ns,
            trigger: sp.trigger.name().to_string(),
            label: sp.label.clone(),
            changed_pages: info.changed_pages,
            held_pages: info.held_pages,
            pinned: info.pinned,
            views: Vec::new(),
        }
    }
}

/// A device's figures as the daemon reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStats {
    /// ublk device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The backing image or block device.
    pub image: String,
    /// Pid of the daemon.
    pub pid: u32,
    /// True when the data path uses `O_DIRECT`.
    pub direct_io: bool,
    /// The daemon's log file, if it has one.
    pub log: Option<String>,
    /// Bytes per page.
    pub page_size: u64,
    /// Size of the device in bytes.
    pub device_bytes: u64,
    /// Pages the device shows.
    pub logical_pages: u64,
    /// Pages of the data area.
    pub physical_pages: u64,
    /// Pages free for new writes.
    pub free_pages: u64,
    /// Pages holding history.
    pub history_pages: u64,
    /// Pages of the history area.
    pub history_capacity_pages: u64,
    /// Reachable safe points.
    pub safe_points: u64,
    /// The oldest reachable safe point.
    pub oldest_safe_point: Option<u64>,
    /// The newest safe point.
    pub newest_safe_point: Option<u64>,
    /// When the oldest reachable safe point was made, ns since the Unix epoch (absent from
    /// the replies of daemons older than this field).
    #[serde(default)]
    pub oldest_safe_point_time_ns: Option<u64>,
    /// When the newest safe point was made, ns since the Unix epoch.
    #[serde(default)]
    pub newest_safe_point_time_ns: Option<u64>,
    /// Seconds without a write after which the daemon makes an idle safe point; 0: never.
    #[serde(default)]
    pub idle_secs: u64,
    /// Flushes closer than this to the previous safe point make none; 0: every flush does.
    #[serde(default)]
    pub coalesce_ms: u64,
    /// The pinned safe points, oldest first.
    #[serde(default)]
    pub pinned: Vec<u64>,
    /// The view devices this daemon serves.
    #[serde(default)]
    pub views: Vec<ViewRecord>,
}

/// The reply to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// True when the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer to `stats`, and the figures that go with `log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<DeviceStats>,
    /// The answer to `safepoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_point: Option<SafePointRecord>,
    /// The answer to `log`: the window, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_points: Option<Vec<SafePointRecord>>,
    /// The answer to `rollback`: the safe point of the state it left (the way back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<u64>,
    /// The answer to `ping`: the daemon's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The answer to `open_view`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewRecord>,
}

impl Response {
    fn ok() -> Response {
        Response {
            ok: true,
            error: None,
            stats: None,
            safe_point: None,
            safe_points: None,
            undo: None,
            pid: None,
            view: None,
        }
    }

    /// A failure saying why.
    pub fn error(why: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(why.into()),
            ..Response::ok()
        }
    }

    /// The answer to `stats`.
    pub fn stats(stats: DeviceStats) -> Response {
        Response {
            stats: Some(stats),
            ..Response::ok()
        }
    }

    /// The answer to `safepoint`: the new safe point, and the figures after it.
    pub fn safe_point(safe_point: SafePointRecord, stats: DeviceStats) -> Response {
        Response {
            safe_point: Some(safe_point),
            stats: Some(stats),
            ..Response::ok()
        }
    }

    /// The answer to `ping`.
    pub fn pong(pid: u32) -> Response {
        Response {
            pid: Some(pid),
            ..Response::ok()
        }
    }

    /// A success that carries nothing (`close_view`, `pin`).
    pub fn done() -> Response {
        Response::ok()
    }

    /// The answer to `open_view`.
    pub fn view(view: ViewRecord) -> Response {
        Response {
            view: Some(view),
            ..Response::ok()
        }
    }

    /// The answer to `rollback`.
    pub fn rollback(undo: u64) -> Response {
        Response {
            undo: Some(undo),
            ..Response::ok()
        }
    }

    /// The answer to `log`.
    pub fn log(safe_points: Vec<SafePointRecord>, stats: DeviceStats) -> Response {
        Response {
            safe_points: Some(safe_points),
            stats: Some(stats),
            ..Response::ok()
        }
    }
}

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
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
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
    (&stream).write_all(line.as_bytes()).map_err(exchange)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .take(MAX_REPLY_BYTES)
        .read_line(&mut reply)
        .map_err(exchange)?;
    if reply.is_empty() {
        return Err(ClientError::BadReply {
            path: path.to_path_buf(),
            why: "the connection closed without a reply".into(),
        });
    }
    serde_json::from_str(&reply).map_err(|e| ClientError::BadReply {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceStats {
        DeviceStats {
            id: 3,
            device: "/dev/ublkb3".into(),
            image: "/tmp/a.img".into(),
            pid: 42,
            direct_io: true,
            log: None,
            page_size: 4096,
            device_bytes: 1 << 30,
            logical_pages: 262_144,
            physical_pages: 327_680,
            free_pages: 65_536,
            history_pages: 10,
            history_capacity_pages: 65_536,
            safe_points: 2,
            oldest_safe_point: Some(0),
            newest_safe_point: Some(1),
            oldest_safe_point_time_ns: Some(1_700_000_000_000_000_000),
            newest_safe_point_time_ns: Some(1_700_000_001_000_000_000),
            idle_secs: 2,
            coalesce_ms: 100,
            pinned: vec![],
            views: vec![],
        }
    }

    #[test]
    fn wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Stats).unwrap(),
            r#"{"cmd":"stats"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).unwrap(),
            Request::Stats
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_everything"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::Rollback { to: 12 }).unwrap(),
            r#"{"cmd":"rollback","to":12}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rollback"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Request::SafePoint {
                label: Some("before".into())
            })
            .unwrap(),
            r#"{"cmd":"safepoint","label":"before"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"safepoint"}"#).unwrap(),
            Request::SafePoint { label: None }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"log"}"#).unwrap(),
            Request::Log
        );
        assert_eq!(
            serde_json::to_string(&Request::Ping).unwrap(),
            r#"{"cmd":"ping"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::pong(7)).unwrap(),
            r#"{"ok":true,"pid":7}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::error("nope")).unwrap(),
            r#"{"ok":false,"error":"nope"}"#
        );
    }

    #[test]
    fn request_reply_over_a_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("t.sock");
        let listener = bind(&path).expect("bind");
        serve(listener, |r: &Request| match r {
            Request::Stats => Response::stats(sample()),
            _ => Response::error("not in this test"),
        })
        .expect("serve");
        let reply = request(&path, &Request::Stats, Duration::from_secs(5)).expect("request");
        assert_eq!(reply, Response::stats(sample()));

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

    #[test]
    fn stats_of_an_older_daemon_still_parse() {
        // A reply without the fields added with `rewind log`.
        let mut v = serde_json::to_value(sample()).unwrap();
        for k in [
            "oldest_safe_point_time_ns",
            "newest_safe_point_time_ns",
            "idle_secs",
            "coalesce_ms",
        ] {
            v.as_object_mut().unwrap().remove(k);
        }
        let s: DeviceStats = serde_json::from_value(v).unwrap();
        assert_eq!(s.oldest_safe_point_time_ns, None);
        assert_eq!(s.idle_secs, 0);
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
        let e = request(&path, &Request::Stats, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    }
}
