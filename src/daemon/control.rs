//! The daemon's control server: binds the device's control socket and answers each request
//! (the wire format is `ipc::control`) on a thread of its own, with [`Answers`].
//!
//! One thread accepts connections and each is served on a thread of its own, so a slow
//! command (opening a view waits for its device) never holds up another, least of all the
//! supervisor's pings: a busy daemon is not taken for a hung one. At most
//! `MAX_CONNECTIONS` are served at once; more are answered `Response::busy`, which the
//! supervisor counts as a heartbeat. Each read has a time limit, so a client that stops
//! sending cannot hold its thread.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use rewind_archive::ExportOptions;
use rewind_history::{Clock, SafePointId, SystemClock, Volume};

use crate::daemon::backing::FileStore;
use crate::daemon::export;
use crate::daemon::handover::Handover;
use crate::daemon::pacing::Pacer;
use crate::daemon::views::Views;
use crate::ipc::control::{
    ControlRequest, DeviceStats, Extent, Response, SafePointRecord, ViewRecord,
};
use crate::selector::check_label;

/// Longest request line accepted, so a client cannot make the daemon buffer without end.
const MAX_LINE_BYTES: u64 = 64 << 10;
/// How long the server waits for a client's next line before dropping it.
const SERVER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; one more is answered `Response::busy` and closed.
pub const MAX_CONNECTIONS: usize = 32;

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

/// What the daemon does for a request: a response line, maybe followed by more.
// One per request, moved once: boxing the response would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// A response line.
    Line {
        /// What the client reads.
        response: Response,
        /// Run on the connection's thread after the response is written (or failed to be).
        then: Option<Box<dyn FnOnce() + Send>>,
    },
    /// Writes its own response line and whatever follows it (an archive) on the
    /// connection; the connection closes after it.
    Stream(Box<dyn FnOnce(&mut UnixStream) + Send>),
}

impl From<Response> for Answer {
    fn from(response: Response) -> Answer {
        Answer::Line {
            response,
            then: None,
        }
    }
}

/// Serves `listener` on a new thread until the process exits, each connection on a thread
/// of its own, answering each request with `handler`.
pub fn start_server<H, A>(
    listener: UnixListener,
    handler: H,
) -> io::Result<std::thread::JoinHandle<()>>
where
    H: Fn(&ControlRequest) -> A + Send + Sync + 'static,
    A: Into<Answer>,
{
    let handler = Arc::new(handler);
    let serving = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("rewind-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => serve_on_a_thread(stream, &handler, &serving),
                    Err(e) => {
                        log::warn!("control socket accept failed: {e}");
                        // Do not spin on a persistent error (e.g. out of descriptors).
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

/// Serves `stream` on a new thread, or answers it with an error when `MAX_CONNECTIONS` are
/// served already (`serving` counts them).
fn serve_on_a_thread<H, A>(stream: UnixStream, handler: &Arc<H>, serving: &Arc<AtomicUsize>)
where
    H: Fn(&ControlRequest) -> A + Send + Sync + 'static,
    A: Into<Answer>,
{
    if serving.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        serving.fetch_sub(1, Ordering::AcqRel);
        log::warn!("refused a control connection: {MAX_CONNECTIONS} are open");
        let _ = stream.set_write_timeout(Some(SERVER_READ_TIMEOUT));
        let _ = write_line(&mut &stream, &Response::busy(MAX_CONNECTIONS));
        return;
    }
    let slot = Slot(serving.clone());
    let handler = handler.clone();
    let spawned = std::thread::Builder::new()
        .name("rewind-ctl-conn".into())
        .spawn(move || {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, &*handler) {
                log::debug!("control connection ended: {e}");
            }
        });
    // If no thread started, the closure and its slot are dropped: the count is right.
    if let Err(e) = spawned {
        log::warn!("could not start a thread for a control connection: {e}");
    }
}

/// One connection served: gives its place back when dropped, even by a panic.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_connection<H, A>(stream: UnixStream, handler: &H) -> io::Result<()>
where
    H: Fn(&ControlRequest) -> A,
    A: Into<Answer>,
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
        let answer: Answer = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(request) => handler(&request).into(),
            Err(e) => Response::error(format!("bad request: {e}")).into(),
        };
        match answer {
            Answer::Line { response, then } => {
                let written = write_line(&mut writer, &response);
                if let Some(then) = then {
                    then();
                }
                written?;
            }
            Answer::Stream(write) => {
                write(&mut writer);
                return Ok(());
            }
        }
    }
}

pub(crate) fn write_line(w: &mut impl Write, response: &Response) -> io::Result<()> {
    let mut text = serde_json::to_string(response).map_err(io::Error::other)?;
    text.push('\n');
    w.write_all(text.as_bytes())?;
    w.flush()
}

/// What the control thread answers each request with: the volume, the pacer, the views and
/// the device's figures that do not change.
pub struct Answers {
    /// Weak: the daemon closes the volume once the device is gone, while this thread may
    /// still run; requests then fail.
    volume: Weak<Volume<FileStore>>,
    pacer: Arc<Pacer>,
    views: Arc<Views>,
    /// The figures that do not change; [`device_stats`] fills in the others.
    about: DeviceStats,
    /// Handing the device to another binary (`handover`).
    handover: Arc<Handover>,
    /// Held (shared) while a view opens and (exclusive) while a handover begins, so no view
    /// opens unseen by a handover, which would end it.
    opening: RwLock<()>,
    /// When this program started serving, for `ping` (ns since the Unix epoch).
    serving_since_ns: u64,
}

impl Answers {
    /// Answers for `volume`, whose fixed figures are `about`.
    pub fn new(
        volume: &Arc<Volume<FileStore>>,
        pacer: Arc<Pacer>,
        views: Arc<Views>,
        about: DeviceStats,
        handover: Arc<Handover>,
    ) -> Answers {
        Answers {
            volume: Arc::downgrade(volume),
            pacer,
            views,
            about,
            handover,
            opening: RwLock::new(()),
            serving_since_ns: SystemClock.now_ns(),
        }
    }

    /// The answer to `request`, with what follows it: a handover replaces this program
    /// once its answer is sent.
    pub fn reply(&self, request: &ControlRequest) -> Answer {
        if let ControlRequest::Export {
            from,
            to,
            incremental,
            net,
        } = request
        {
            return self.export(ExportOptions {
                from: *from,
                to: to.or(self.about.read_only_at),
                incremental: *incremental,
                net: *net,
            });
        }
        let response = self.answer(request);
        match request {
            ControlRequest::Handover { exe } if response.ok => {
                let (handover, exe) = (self.handover.clone(), PathBuf::from(exe));
                Answer::Line {
                    response,
                    then: Some(Box::new(move || handover.exec(&exe))),
                }
            }
            _ => response.into(),
        }
    }

    /// `export`: plans the archive and answers on the connection, then writes the archive
    /// after the answer (`export::stream`).
    fn export(&self, options: ExportOptions) -> Answer {
        let Some(volume) = self.volume.upgrade() else {
            return Response::error("the device is shutting down").into();
        };
        if self.handover.underway() {
            return Response::error("the device is being handed over to a new binary").into();
        }
        let handover = self.handover.clone();
        Answer::Stream(Box::new(move |conn| {
            export::stream(&volume, options, conn, &|| handover.serving())
        }))
    }

    /// The answer to `request`.
    pub fn answer(&self, request: &ControlRequest) -> Response {
        let Some(volume) = self.volume.upgrade() else {
            return Response::error("the device is shutting down");
        };
        if self.handover.underway() {
            return Response::error("the device is being handed over to a new binary");
        }
        // Views dropped since the last look show as such in the answer.
        self.views.absorb_notices(&volume);
        if let Some(at) = self.about.read_only_at {
            if matches!(
                request,
                ControlRequest::SafePoint { .. }
                    | ControlRequest::Rollback { .. }
                    | ControlRequest::Pin { .. }
                    | ControlRequest::Handover { .. }
            ) {
                return Response::error(format!(
                    "{} serves safe point {at} of its image read-only (`rewind add \
                     --read-only`): it makes no safe point, rollback, pin or handover; \
                     `rewind del` it and `rewind add` the image to serve it live",
                    self.about.device
                ));
            }
        }
        match request {
            ControlRequest::Stats => Response::stats(self.stats(&volume)),
            ControlRequest::SafePoint { label } => self.safe_point(&volume, label.clone()),
            ControlRequest::Log => self.log(&volume),
            ControlRequest::Ping => {
                // Takes the engine's state lock: a daemon whose engine is stuck does not
                // answer, which is what the supervisor's heartbeat wants to know.
                let _ = volume.stats();
                Response::pong(self.about.pid, self.serving_since_ns)
            }
            ControlRequest::Rollback { to } => rollback(&volume, *to),
            ControlRequest::OpenView { at } => match self.open_view(&volume, *at) {
                Ok(view) => Response::view(view),
                Err(why) => {
                    log::warn!("opening a view of safe point {at}: {why}");
                    Response::error(why)
                }
            },
            ControlRequest::CloseView { device } => match self.views.close(*device) {
                Ok(()) => Response::done(),
                Err(why) => Response::error(why),
            },
            ControlRequest::Pin { id, pinned } => pin(&volume, *id, *pinned),
            // A device served read-only shows its safe point, not the image's live state.
            ControlRequest::Diff { from, to } => {
                diff(&volume, *from, to.or(self.about.read_only_at))
            }
            ControlRequest::Handover { exe } => self.handover(&volume, Path::new(exe)),
            ControlRequest::Export { .. } => {
                Response::error("an export is answered on a stream of its own (`reply`)")
            }
        }
    }

    /// `open_view`, unless a handover began.
    fn open_view(
        &self,
        volume: &Arc<Volume<FileStore>>,
        at: SafePointId,
    ) -> Result<ViewRecord, String> {
        let _opening = self.opening.read();
        if self.handover.underway() {
            return Err("the device is being handed over to a new binary".into());
        }
        self.views.open(volume, &self.pacer, at)
    }

    /// `handover`: begins it and makes what was written durable; the exec follows the
    /// answer (`reply`).
    fn handover(&self, volume: &Volume<FileStore>, exe: &Path) -> Response {
        let begun = {
            let _no_view_opens = self.opening.write();
            self.handover.begin(exe, || {
                self.views.records().into_iter().map(|v| v.device).collect()
            })
        };
        if let Err(why) = begun {
            return Response::error(why);
        }
        if let Err(e) = volume.commit(false) {
            self.handover.abandon();
            return Response::error(format!("making the writes durable first: {e}"));
        }
        Response::pong(self.about.pid, self.serving_since_ns)
    }

    fn stats(&self, volume: &Volume<FileStore>) -> DeviceStats {
        device_stats(volume, &self.about, &self.views)
    }

    /// `log`: the window, each safe point with the views showing it, and the figures.
    fn log(&self, volume: &Volume<FileStore>) -> Response {
        let records = volume
            .safe_point_infos()
            .iter()
            .map(|info| {
                let mut r = SafePointRecord::from(info);
                r.views = self.views.devices_at(r.id);
                r
            })
            .collect();
        Response::log(records, self.stats(volume))
    }

    /// `safepoint`: checks the label (valid, and unique in the window: the control thread
    /// is the only maker of labelled safe points, so the check cannot race with another),
    /// makes the safe point and answers with it.
    fn safe_point(&self, volume: &Volume<FileStore>, label: Option<String>) -> Response {
        if let Some(l) = &label {
            if let Err(why) = self.check_new_label(volume, l) {
                return Response::error(why);
            }
        }
        let shown = label
            .as_ref()
            .map(|l| format!(" {l:?}"))
            .unwrap_or_default();
        match self.pacer.user_safe_point(volume, label) {
            Ok(id) => {
                log::info!("made safe point {id}{shown} on request");
                match volume
                    .safe_point_infos()
                    .iter()
                    .find(|i| i.safe_point.id == id)
                {
                    Some(info) => Response::safe_point(info.into(), self.stats(volume)),
                    None => Response::error(format!(
                        "safe point {id} was made but has already left the window: the \
                         history area is full"
                    )),
                }
            }
            Err(e) => {
                log::error!("making safe point{shown} on request: {e}");
                Response::error(format!("making the safe point: {e}"))
            }
        }
    }

    /// Why `label` cannot label a new safe point: not a valid label, or one a safe point
    /// of the window has already.
    fn check_new_label(&self, volume: &Volume<FileStore>, label: &str) -> Result<(), String> {
        check_label(label)?;
        match volume
            .safe_points()
            .iter()
            .find(|sp| sp.label.as_deref() == Some(label))
        {
            Some(sp) => Err(format!(
                "the label {label:?} is already used by safe point {} (`rewind log -n {}` \
                 shows it); a label names one safe point: choose another",
                sp.id, self.about.id
            )),
            None => Ok(()),
        }
    }
}

/// `rollback`: safe point `to` is the live state again; answers with the way back.
fn rollback(volume: &Volume<FileStore>, to: SafePointId) -> Response {
    match volume.rollback(to) {
        Ok(undo) => {
            log::info!("rolled back to safe point {to}; safe point {undo} undoes it");
            Response::rollback(undo)
        }
        Err(e) => Response::error(e.to_string()),
    }
}

/// Most extents a `diff` answer lists, so its line stays well under what a client reads
/// (`client::MAX_REPLY_BYTES`, 32 MiB; an extent takes about 40 bytes).
const DIFF_EXTENTS_MAX: usize = 500_000;

/// `diff`: the extents that changed between `from` and `to` (`None`: live), in bytes.
fn diff(volume: &Volume<FileStore>, from: SafePointId, to: Option<SafePointId>) -> Response {
    let page = rewind_history::PAGE_SIZE;
    match volume.diff(from, to) {
        Ok(extents) if extents.len() > DIFF_EXTENTS_MAX => Response::error(format!(
            "{} extents differ, more than the {DIFF_EXTENTS_MAX} one answer lists; \
             compare safe points closer together",
            extents.len()
        )),
        Ok(extents) => Response::diff(
            extents
                .into_iter()
                .map(|(first, pages)| Extent {
                    offset: first.0 * page,
                    length: pages * page,
                })
                .collect(),
        ),
        Err(e) => Response::error(e.to_string()),
    }
}

/// `pin`: keeps safe point `id` from retiring (`pinned`), or lets it retire again.
fn pin(volume: &Volume<FileStore>, id: SafePointId, pinned: bool) -> Response {
    match volume.pin(id, pinned) {
        Ok(()) => {
            log::info!(
                "safe point {id} {}",
                if pinned { "pinned" } else { "unpinned" }
            );
            Response::done()
        }
        Err(e) => Response::error(e.to_string()),
    }
}

/// The device's figures now; `about` holds the ones that do not change.
fn device_stats(volume: &Volume<FileStore>, about: &DeviceStats, views: &Views) -> DeviceStats {
    let engine = volume.stats();
    let infos = volume.safe_point_infos();
    let safe_points: Vec<_> = infos.iter().map(|i| &i.safe_point).collect();
    let (data_written, metadata_written) = volume.store().bytes_written();
    DeviceStats {
        engine,
        oldest_safe_point_time_ns: safe_points.first().map(|sp| sp.time_ns),
        newest_safe_point_time_ns: safe_points.last().map(|sp| sp.time_ns),
        pinned: infos
            .iter()
            .filter(|i| i.pinned)
            .map(|i| i.safe_point.id)
            .collect(),
        views: views.records(),
        image_allocated_bytes: volume.store().allocated_bytes(),
        host_full_errors: volume.store().host_full_errors(),
        image_data_bytes_written: Some(data_written),
        image_metadata_bytes_written: Some(metadata_written),
        ..about.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::backing::formatted_image;
    use crate::daemon::pacing::Policy;
    use crate::ipc::control::sample_stats;
    use crate::ipc::device::TargetData;

    /// A daemon serving a safe point read-only (`rewind add --read-only`) refuses what would
    /// write to the image, before the engine sees it, and answers the rest.
    #[test]
    fn a_read_only_daemon_refuses_what_writes() {
        let (_dir, volume, mut answers) = answers();
        answers.about.read_only_at = Some(SafePointId(0));
        let refused = [
            ControlRequest::SafePoint { label: None },
            ControlRequest::Rollback { to: SafePointId(0) },
            ControlRequest::Pin {
                id: SafePointId(0),
                pinned: true,
            },
            ControlRequest::Handover {
                exe: "/bin/true".into(),
            },
        ];
        for request in refused {
            let r = answers.answer(&request);
            assert!(!r.ok, "{request:?} was not refused");
            assert!(
                r.error.unwrap_or_default().contains("read-only"),
                "{request:?}"
            );
        }
        assert_eq!(volume.safe_points().len(), 1, "nothing was made");
        assert!(answers.answer(&ControlRequest::Log).ok);
        assert!(answers.answer(&ControlRequest::Stats).ok);
    }

    /// A served volume on a temporary image, and what answers for it.
    fn answers() -> (tempfile::TempDir, Arc<Volume<FileStore>>, Answers) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("a.img");
        let store = formatted_image(&path, 4 << 20);
        let volume = Arc::new(Volume::open(store, &crate::host::this_host()).expect("volume"));
        let data = TargetData {
            image: path.display().to_string(),
            direct_io: false,
            socket: "/run/rewind/ublkb3.sock".into(),
            log: None,
            version: "test".into(),
            on_crash: None,
            idle_secs: None,
            coalesce_ms: None,
            view: None,
            data_path: None,
            read_only_at: None,
        };
        let answers = Answers::new(
            &volume,
            Arc::new(Pacer::new(Policy::new(0, 0))),
            Views::new(3, data),
            sample_stats(),
            Arc::new(Handover::new(
                Vec::new(),
                None,
                Arc::new(std::sync::atomic::AtomicBool::new(false)),
            )),
        );
        (dir, volume, answers)
    }

    fn error(r: Response) -> String {
        assert!(!r.ok, "{r:?}");
        r.error.expect("a reason")
    }

    #[test]
    fn diff_answers_the_changed_bytes() {
        let (_dir, volume, answers) = answers();
        let from = answers
            .answer(&ControlRequest::SafePoint { label: None })
            .safe_point
            .expect("a safe point")
            .id;
        let mut stream = volume.stream(0, 1);
        let data = vec![5u8; 3 * 4096];
        volume
            .write_pages(&mut stream, rewind_history::LogicalPage(7), &data)
            .unwrap();
        let r = answers.answer(&ControlRequest::Diff { from, to: None });
        assert_eq!(
            r.extents.expect("extents"),
            [Extent {
                offset: 7 * 4096,
                length: 3 * 4096
            }]
        );
        let r = answers.answer(&ControlRequest::Diff {
            from: SafePointId(77),
            to: None,
        });
        assert!(error(r).contains("not in the history window"));
    }

    #[test]
    fn safe_points_labels_pins_and_rollback_through_the_socket_commands() {
        let (_dir, volume, answers) = answers();
        let r = answers.answer(&ControlRequest::Stats);
        let stats = r.stats.expect("figures");
        assert_eq!((stats.id, stats.engine.safe_points), (3, 1));

        let made = answers.answer(&ControlRequest::SafePoint {
            label: Some("before".into()),
        });
        let sp = made.safe_point.expect("the new safe point");
        assert_eq!(
            (sp.trigger.as_str(), sp.label.as_deref()),
            ("user", Some("before"))
        );
        assert_eq!(made.stats.expect("figures").engine.safe_points, 2);
        let again = answers.answer(&ControlRequest::SafePoint {
            label: Some("before".into()),
        });
        assert!(error(again).contains("already used by safe point"));
        let bad = answers.answer(&ControlRequest::SafePoint {
            label: Some("5m".into()),
        });
        assert!(error(bad).contains("reads as an age"));

        assert!(
            answers
                .answer(&ControlRequest::Pin {
                    id: sp.id,
                    pinned: true
                })
                .ok
        );
        let log = answers.answer(&ControlRequest::Log);
        let window = log.safe_points.expect("the window");
        assert_eq!(window.len(), 2);
        assert!(window[1].pinned);
        assert_eq!(log.stats.expect("figures").pinned, [sp.id]);

        let undo = answers
            .answer(&ControlRequest::Rollback { to: SafePointId(0) })
            .undo
            .expect("the way back");
        assert!(undo > sp.id);
        assert!(error(answers.answer(&ControlRequest::Rollback {
            to: SafePointId(99)
        }))
        .contains("99"));
        assert_eq!(answers.answer(&ControlRequest::Ping).pid, Some(42));
        assert!(
            error(answers.answer(&ControlRequest::CloseView { device: 9 })).contains("not a view")
        );

        drop(volume);
        let late = answers.answer(&ControlRequest::Stats);
        assert_eq!(error(late), "the device is shutting down");
    }
}
