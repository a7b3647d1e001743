//! The rewind devices as `rewind list` shows them: for each, what the kernel says of it and
//! what its daemon answers (its figures), or why it cannot answer.

use serde::Serialize;

use crate::ipc::control::{DeviceStats, Request};
use crate::ipc::device::{TargetData, ViewOf};
use crate::ipc::paths;
use crate::runtime::client::{self, STATS_TIMEOUT};
use crate::runtime::registry::{
    kernel_view, needs_recovery, process_alive, state_name, supervisor_pid, target_data, ublk_ids,
};

/// One row of `rewind list`.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// ublk device id.
    pub id: u32,
    /// `/dev/ublkbN`.
    pub device: String,
    /// The image.
    pub image: String,
    /// `live`, `dead`, ..., or what went wrong asking.
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
    pub view_at: Option<u64>,
}

/// The row of view device `id`: its figures are its live device's; its state says what
/// it shows, or why it fails.
fn view_entry(id: u32, data: TargetData, of: &ViewOf) -> Entry {
    let device = paths::device_path(id).display().to_string();
    let parent = paths::device_path(of.of).display().to_string();
    let (kernel_state, pid) = match kernel_view(id) {
        Ok((s, pid)) => (state_name(s).to_string(), Some(pid)),
        Err(e) => (format!("unknown ({e:#})"), None),
    };
    let mut state = format!("{kernel_state}, view of {parent} at safe point {}", of.at);
    let mut stats = None;
    if pid.is_some_and(process_alive) {
        match client::request(&paths::socket_path(of.of), &Request::Stats, STATS_TIMEOUT) {
            Ok(r) if r.ok => {
                if let Some(why) = r.stats.as_ref().and_then(|s| {
                    s.views
                        .iter()
                        .find(|v| v.device_id == id)
                        .and_then(|v| v.dropped.clone())
                }) {
                    state = format!("{state}, dropped (reads fail): {why}");
                }
                stats = r.stats;
            }
            Ok(r) => state = format!("{state}, daemon says: {}", r.error.unwrap_or_default()),
            Err(e) => state = format!("{state}, daemon not answering ({e})"),
        }
    } else {
        state = format!("{state}, its daemon is gone: `rewind del -n {id}`");
    }
    Entry {
        id,
        device,
        image: data.image,
        state,
        pid,
        log: data.log,
        stats,
        needs_recover: false,
        supervisor: None,
        view_of: Some(of.of),
        view_at: Some(of.at),
    }
}

fn entry(id: u32, data: TargetData) -> Entry {
    if let Some(of) = data.view.clone() {
        return view_entry(id, data, &of);
    }
    let device = paths::device_path(id).display().to_string();
    let supervisor = supervisor_pid(id);
    let (mut state, pid, needs_recover) = match kernel_view(id) {
        Ok((s, pid)) => (state_name(s).to_string(), Some(pid), needs_recovery(s, pid)),
        Err(e) => (format!("unknown ({e:#})"), None, false),
    };
    let stats = if needs_recover {
        state = format!(
            "{state}, daemon dead: {}",
            if supervisor.is_some() {
                "its supervisor recovers it".to_string()
            } else {
                format!("needs `rewind recover -n {id}`")
            }
        );
        None
    } else if pid.is_some_and(process_alive) {
        match client::request(&paths::socket_path(id), &Request::Stats, STATS_TIMEOUT) {
            Ok(r) if r.ok => r.stats,
            Ok(r) => {
                state = format!("{state}, daemon says: {}", r.error.unwrap_or_default());
                None
            }
            Err(e) => {
                state = format!("{state}, daemon not answering ({e})");
                None
            }
        }
    } else {
        if pid.is_some() {
            state = format!("{state}, no daemon");
        }
        None
    };
    Entry {
        id,
        device,
        image: data.image,
        state,
        pid,
        log: data.log,
        stats,
        needs_recover,
        supervisor,
        view_of: None,
        view_at: None,
    }
}

/// The rewind devices now, by id.
pub fn rewind_devices() -> Vec<Entry> {
    ublk_ids()
        .into_iter()
        .filter_map(|id| target_data(id).map(|d| entry(id, d)))
        .collect()
}
