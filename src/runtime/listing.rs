//! The rewind devices as `rewind list` shows them: for each, what the kernel says of it and
//! what its daemon answers (its figures), or why it cannot answer.

use rewind_history::SafePointId;
use serde::Serialize;

use crate::ipc::control::{ControlRequest, DeviceStats};
use crate::ipc::device::{DataPath, TargetData, ViewOf};
use crate::ipc::paths;
use crate::runtime::client::{self, STATS_TIMEOUT};
use crate::runtime::registry::{
    kernel_view, needs_recovery, process_alive, state_name, supervisor_pid, target_data, ublk_ids,
};

/// One row of `rewind list`.
#[derive(Clone, Debug, Serialize)]
pub struct ListedDevice {
    /// ublk device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The image.
    pub image: String,
    /// `live`, `dead`, ..., or what went wrong asking; for a live device, followed by what
    /// its daemon warns of (a full host file system) and `sparse image` when it is one.
    pub state: String,
    /// The daemon's pid, as the kernel knows it.
    pub pid: Option<i32>,
    /// The daemon's log.
    pub log: Option<String>,
    /// The daemon's figures, if it answered.
    pub stats: Option<DeviceStats>,
    /// True when the device waits for a new daemon (`rewind recover`).
    pub needs_recover: bool,
    /// The pid of its supervisor (`rewind add --supervise`), if one runs.
    pub supervisor: Option<i32>,
    /// For a view (`rewind view`): the live device it is a view of.
    pub view_of: Option<u32>,
    /// For a view: the safe point it shows.
    pub view_at: Option<SafePointId>,
    /// How request data moves between the kernel and the image, as the daemon recorded it
    /// when it added the device (unknown for devices of older daemons).
    pub data_path: Option<DataPath>,
}

/// Device `id`, whose daemon recorded `data`, as `rewind list` shows it.
fn listed(id: u32, data: TargetData) -> ListedDevice {
    let kernel = kernel_view(id);
    let state = match &kernel {
        Ok((s, _)) => state_name(*s).to_string(),
        Err(e) => format!("unknown ({e:#})"),
    };
    let row = ListedDevice {
        id,
        device: paths::device_path(id).display().to_string(),
        image: data.image,
        state,
        pid: kernel.as_ref().ok().map(|&(_, pid)| pid),
        log: data.log,
        stats: None,
        needs_recover: false,
        supervisor: None,
        view_of: None,
        view_at: None,
        data_path: data.data_path,
    };
    match &data.view {
        Some(of) => view_row(row, of),
        None => live_row(row, kernel.ok()),
    }
}

/// A view's row: its figures are its live device's; its state says what it shows, or why
/// it fails.
fn view_row(mut row: ListedDevice, of: &ViewOf) -> ListedDevice {
    let id = row.id;
    row.state = format!(
        "{}, view of {} at safe point {}",
        row.state,
        paths::device_path(of.of).display(),
        of.at
    );
    if row.pid.is_some_and(process_alive) {
        row.stats = daemon_stats(of.of, &mut row.state);
        let dropped = row.stats.as_ref().and_then(|s| {
            s.views
                .iter()
                .find(|v| v.device_id == id)
                .and_then(|v| v.dropped.clone())
        });
        if let Some(why) = dropped {
            row.state = format!("{}, dropped (reads fail): {why}", row.state);
        }
    } else {
        row.state = format!("{}, its daemon is gone: `rewind del -n {id}`", row.state);
    }
    row.view_of = Some(of.of);
    row.view_at = Some(of.at);
    row
}

/// A live device's row, `kernel` being its state and daemon pid in the kernel.
fn live_row(mut row: ListedDevice, kernel: Option<(u16, i32)>) -> ListedDevice {
    let id = row.id;
    row.supervisor = supervisor_pid(id);
    row.needs_recover = kernel.is_some_and(|(state, pid)| needs_recovery(state, pid));
    if row.needs_recover {
        row.state = format!(
            "{}, daemon dead: {}",
            row.state,
            if row.supervisor.is_some() {
                "its supervisor recovers it".to_string()
            } else {
                format!("needs `rewind recover -n {id}`")
            }
        );
    } else if row.pid.is_some_and(process_alive) {
        row.stats = daemon_stats(id, &mut row.state);
        if let Some(s) = &row.stats {
            if let Some(warning) = s.host_full_warning() {
                row.state = format!("{}, {warning}", row.state);
            }
            if s.image_sparse() == Some(true) {
                row.state = format!("{}, sparse image", row.state);
            }
            if let Some(at) = s.read_only_at {
                row.state = format!("{}, read only at safe point {at}", row.state);
            }
        }
    } else if row.pid.is_some() {
        row.state = format!("{}, no daemon", row.state);
    }
    row
}

/// The figures of the daemon serving device `id`, if it answers; if not, `state` says why.
fn daemon_stats(id: u32, state: &mut String) -> Option<DeviceStats> {
    match client::request(
        &paths::socket_path(id),
        &ControlRequest::Stats,
        STATS_TIMEOUT,
    ) {
        Ok(r) if r.ok => r.stats.map(|mut s| {
            s.set_mirror(super::mirror::running_status(id));
            s
        }),
        Ok(r) => {
            *state = format!("{state}, daemon says: {}", r.error.unwrap_or_default());
            None
        }
        Err(e) => {
            *state = format!("{state}, daemon not answering ({e})");
            None
        }
    }
}

/// The rewind devices now, by id.
pub fn rewind_devices() -> Vec<ListedDevice> {
    ublk_ids()
        .into_iter()
        .filter_map(|id| target_data(id).map(|d| listed(id, d)))
        .collect()
}
