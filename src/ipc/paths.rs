//! Where rewind's processes find each other: control sockets and pid files (daemons and
//! supervisors) under `/run/rewind`, daemon logs under `$REWIND_LOG_DIR`, `/var/log/rewind`
//! or `/tmp`, the device nodes, and where libublk exports each device's json.

use std::path::{Path, PathBuf};

/// Runtime directory of the daemons: one control socket and one pid file per device, and
/// the pid file of its supervisor if it has one.
pub const RUN_DIR: &str = "/run/rewind";

/// Environment variable naming the directory for daemon logs.
pub const LOG_DIR_ENV: &str = "REWIND_LOG_DIR";

/// The control socket of device `id`.
pub fn socket_path(id: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("ublkb{id}.sock"))
}

/// The pid file of device `id`'s daemon.
pub fn pid_path(id: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("ublkb{id}.pid"))
}

/// The pid file of device `id`'s supervisor (`rewind add --supervise`).
pub fn supervisor_pid_path(id: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("ublkb{id}.supervisor.pid"))
}

/// The status file of the mirror of device `id` (`rewind mirror`), while it runs.
pub fn mirror_status_path(id: u32) -> PathBuf {
    Path::new(RUN_DIR).join(format!("ublkb{id}.mirror.json"))
}

/// The block device node of ublk device `id`.
pub fn device_path(id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkb{id}"))
}

/// The json libublk exports for device `id` while it runs (`UblkCtrl::run_path`).
pub fn ublk_json_path(id: u32) -> PathBuf {
    PathBuf::from(format!(
        "{}/{id:04}.json",
        libublk::ctrl::UblkCtrl::run_dir()
    ))
}

/// The log file of the daemon serving `image`: in `$REWIND_LOG_DIR` if set, else
/// `/var/log/rewind` if it exists or can be made, else `/tmp`.
pub fn log_path(image: &Path) -> PathBuf {
    let name = format!(
        "rewind-{}.log",
        image
            .file_name()
            .map_or_else(|| "image".into(), |n| n.to_string_lossy())
    );
    if let Some(dir) = std::env::var_os(LOG_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join(name);
    }
    let var_log = Path::new("/var/log/rewind");
    if var_log.is_dir() || std::fs::create_dir_all(var_log).is_ok() {
        return var_log.join(name);
    }
    Path::new("/tmp").join(name)
}

/// Creates the runtime directory if needed, with the mode the umask gives (the socket in
/// it is made 0600, for root only).
pub fn ensure_run_dir() -> std::io::Result<()> {
    std::fs::create_dir_all(RUN_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(socket_path(3), Path::new("/run/rewind/ublkb3.sock"));
        assert_eq!(pid_path(12), Path::new("/run/rewind/ublkb12.pid"));
        assert_eq!(
            supervisor_pid_path(2),
            Path::new("/run/rewind/ublkb2.supervisor.pid")
        );
        assert_eq!(device_path(0), Path::new("/dev/ublkb0"));
        assert_eq!(ublk_json_path(7), Path::new("/run/ublksrvd/0007.json"));
    }
}
