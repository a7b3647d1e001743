//! The view devices of one daemon (`rewind view`): read-only ublk devices that show a past
//! safe point of the volume while the live device runs on.
//!
//! Each view is its own ublk device with one queue of small depth, served by a thread of
//! the daemon that serves the live device (the volume is shared). A view holds its safe
//! point in the window (`Volume::open_view`) until it is closed: `rewind del -n VIEW`,
//! `rewind del` of the live device, or the daemon stopping. Views are not recorded on disk:
//! they end with their daemon, and the kernel then fails their I/O (they are added without
//! user recovery); `rewind recover` of the live device deletes such leftovers.
//!
//! When pins and views hold the whole history area, reclaim drops the oldest view rather
//! than fail a write of the live device: [`Views::absorb_notices`] logs why and marks the
//! view dropped; its reads fail with EIO from then on.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use libublk::ctrl::UblkCtrl;
use libublk::io::UblkDev;
use parking_lot::Mutex;
use rewind_history::{Notice, SafePointId, ViewId, Volume};

use crate::daemon::backing::FileStore;
use crate::daemon::pacing::Pacer;
use crate::daemon::target::Target;
use crate::daemon::ublk::{add_device, describe_ublk_error, stop_device};
use crate::ipc::control::ViewRecord;
use crate::ipc::device::{DataPath, OnCrash, TargetData, ViewOf, TARGET_DATA_KEY};
use crate::ipc::paths;

/// Queues of a view device: reads only, a few at a time are plenty.
const VIEW_QUEUES: u16 = 1;
/// Depth of a view's queue.
const VIEW_DEPTH: u16 = 32;
/// How long opening a view waits for its device to go live.
const VIEW_START_WAIT: Duration = Duration::from_secs(30);
/// How often the daemon looks for notices of reclaim (views dropped, pins released).
pub const NOTICE_INTERVAL: Duration = Duration::from_millis(500);

struct ServedView {
    view: ViewId,
    at: SafePointId,
    dropped: Option<String>,
    thread: Option<JoinHandle<()>>,
}

/// The views one daemon serves, by ublk device id.
pub struct Views {
    /// The live device's ublk id.
    parent: u32,
    /// What every view's json carries besides its [`ViewOf`].
    data: TargetData,
    entries: Mutex<BTreeMap<u32, ServedView>>,
    /// Serializes opening and closing, so a close never races a half-opened view.
    busy: Mutex<()>,
}

impl Views {
    /// The (empty) views of live device `parent`, whose json is `data`.
    pub fn new(parent: u32, data: TargetData) -> Arc<Views> {
        Arc::new(Views {
            parent,
            data,
            entries: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(()),
        })
    }

    /// The views now, by device id.
    pub fn records(&self) -> Vec<ViewRecord> {
        self.entries
            .lock()
            .iter()
            .map(|(id, e)| ViewRecord {
                device_id: *id,
                device: paths::device_path(*id).display().to_string(),
                at: e.at,
                dropped: e.dropped.clone(),
            })
            .collect()
    }

    /// Logs what reclaim gave up since the last call, and marks dropped views.
    pub fn absorb_notices(&self, volume: &Volume<FileStore>) {
        let notices = volume.take_notices();
        if notices.is_empty() {
            return;
        }
        let mut entries = self.entries.lock();
        for n in notices {
            match &n {
                Notice::ViewDropped { view, at } => {
                    let found = entries.iter_mut().find(|(_, e)| e.view == *view);
                    match found {
                        Some((id, e)) => {
                            log::warn!(
                                "{n}: {} (view of safe point {at}) now fails its reads with \
                                 EIO; `rewind del -n {id}` removes it",
                                paths::device_path(*id).display()
                            );
                            e.dropped = Some(n.to_string());
                        }
                        None => log::warn!("{n}"),
                    }
                }
                Notice::PinReleased { .. } => log::warn!("{n}"),
            }
        }
    }

    /// Adds a view device showing safe point `at`, and returns it once it is live.
    pub fn open(
        self: &Arc<Self>,
        volume: &Arc<Volume<FileStore>>,
        pacer: &Arc<Pacer>,
        at: SafePointId,
    ) -> Result<ViewRecord, String> {
        let _busy = self.busy.lock();
        let view = volume.open_view(at).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel::<Result<u32, String>>();
        let data = TargetData {
            view: Some(ViewOf {
                of: self.parent,
                at,
            }),
            on_crash: Some(OnCrash::Stop),
            read_only_at: None,
            ..self.data.clone()
        };
        let target =
            Arc::new(Target::new(volume.clone(), pacer.clone(), None, VIEW_QUEUES).with_view(view));
        let weak_views = Arc::downgrade(self);
        let weak_volume = Arc::downgrade(volume);
        let thread = std::thread::Builder::new()
            .name(format!("rewind-view-{at}"))
            .spawn(move || serve_view(target, data, tx, weak_views, weak_volume, view))
            .map_err(|e| {
                volume.close_view(view);
                format!("starting the view thread: {e}")
            })?;
        let id = match rx.recv_timeout(VIEW_START_WAIT) {
            Ok(Ok(id)) => id,
            Ok(Err(why)) => {
                let _ = thread.join();
                return Err(why);
            }
            Err(_) => {
                // The thread closes the view when it ends; leave it to end.
                return Err(format!(
                    "the view device did not go live within {}s",
                    VIEW_START_WAIT.as_secs()
                ));
            }
        };
        self.entries.lock().insert(
            id,
            ServedView {
                view,
                at,
                dropped: None,
                thread: Some(thread),
            },
        );
        let device = paths::device_path(id).display().to_string();
        log::info!("{device} is live: a read-only view of safe point {at}");
        Ok(ViewRecord {
            device_id: id,
            device,
            at,
            dropped: None,
        })
    }

    /// Stops and deletes view device `id`; its safe point can retire again.
    pub fn close(&self, id: u32) -> Result<(), String> {
        let _busy = self.busy.lock();
        let Some(mut entry) = self.entries.lock().remove(&id) else {
            return Err(format!(
                "ublk device {id} is not a view of {} served by this daemon",
                paths::device_path(self.parent).display()
            ));
        };
        if let Err(why) = stop_device(id, "view device") {
            log::warn!("{why}");
        }
        if let Some(t) = entry.thread.take() {
            let _ = t.join();
        }
        log::info!(
            "{} (view of safe point {}) removed",
            paths::device_path(id).display(),
            entry.at
        );
        Ok(())
    }

    /// Closes every view (the live device is stopping).
    pub fn close_all(&self) {
        let ids: Vec<u32> = self.entries.lock().keys().copied().collect();
        for id in ids {
            if let Err(e) = self.close(id) {
                log::warn!("{e}");
            }
        }
    }

    /// The view device ids showing safe point `at`.
    pub fn devices_at(&self, at: SafePointId) -> Vec<u32> {
        self.entries
            .lock()
            .iter()
            .filter(|(_, e)| e.at == at)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The body of a view's thread: adds the device, serves it until it is stopped, deletes
/// it and closes the view.
fn serve_view(
    target: Arc<Target>,
    data: TargetData,
    tx: mpsc::Sender<Result<u32, String>>,
    views: Weak<Views>,
    volume: Weak<Volume<FileStore>>,
    view: ViewId,
) {
    let at = data.view.as_ref().map_or(SafePointId(0), |v| v.at);
    // The live device's data path: the driver has it.
    let data_path = data.data_path.unwrap_or(DataPath::Copy);
    let ctrl = match add_device(None, VIEW_QUEUES, VIEW_DEPTH, OnCrash::Stop, data_path) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(format!("{e:#}")));
            if let Some(v) = volume.upgrade() {
                v.close_view(view);
            }
            return;
        }
    };
    let id = ctrl.dev_info().dev_id;
    let json = serde_json::json!({ TARGET_DATA_KEY: data });
    let queue_target = target.clone();
    let live_tx = tx.clone();
    let run = ctrl.run_target(
        |dev: &mut UblkDev| target.init(dev, json),
        move |qid: u16, dev: &UblkDev| queue_target.serve_queue(qid, dev),
        move |_ctrl: &UblkCtrl| {
            let _ = live_tx.send(Ok(id));
        },
    );
    if let Err(e) = run {
        let why = match target.setup_failure() {
            Some(why) => why,
            None => describe_ublk_error(&e),
        };
        log::error!("view of safe point {at} on ublk device {id}: {why}");
        let _ = tx.send(Err(format!("starting the view device: {why}")));
        if let Err(e) = ctrl.del_dev_async() {
            log::warn!("deleting view device {id}: {}", describe_ublk_error(&e));
        }
    }
    drop(target);
    // Deletes the device (the handle of an added device does).
    drop(ctrl);
    if let Some(v) = volume.upgrade() {
        v.close_view(view);
    }
    // Stopped from outside (`rewind del` of a daemon that could not be asked): forget it.
    if let Some(views) = views.upgrade() {
        let mut entries = views.entries.lock();
        if entries.get(&id).is_some_and(|e| e.view == view) {
            entries.remove(&id);
        }
    }
}
