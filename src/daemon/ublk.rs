//! The ublk driver's control side: adding a device, taking over one whose daemon died,
//! stopping one, and libublk's errors in words.

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::{sys, UblkError, UblkFlags};

use crate::ipc::device::{DataPath, OnCrash};

/// The target name ublk records for rewind's devices (`rewind list` recognizes them by the
/// `TargetData` in their json, not by this name).
pub const TARGET_NAME: &str = "rewind";

/// Largest request the kernel sends, and the size of each tag's buffer.
pub const IO_BUF_BYTES: u32 = 512 << 10;

/// Words for a libublk error: the errno's text where there is one (libublk's own messages
/// are generic, e.g. "other failure").
pub fn describe_ublk_error(e: &UblkError) -> String {
    match e {
        UblkError::OtherError(n) | UblkError::UringIOError(n) if *n < 0 => {
            std::io::Error::from_raw_os_error(-n).to_string()
        }
        UblkError::IOError(e) => e.to_string(),
        UblkError::QueueIsDown => "the device is stopping".into(),
        UblkError::InvalidVal => "invalid argument".into(),
        other => other.to_string(),
    }
}

/// The errno of a libublk error, if it carries one.
pub fn ublk_errno(e: &UblkError) -> Option<i32> {
    match e {
        UblkError::OtherError(n) | UblkError::UringIOError(n) if *n < 0 => Some(-n),
        UblkError::IOError(e) => e.raw_os_error(),
        _ => None,
    }
}

/// True when the ublk driver registers request buffers with the server's io_uring by
/// itself (`UBLK_F_AUTO_BUF_REG`, Linux 6.16 and later), which zero copy needs. A driver
/// too old to report its features (before 6.5) has no zero copy either.
pub fn driver_has_zero_copy() -> bool {
    UblkCtrl::get_features().is_some_and(|f| f & u64::from(sys::UBLK_F_AUTO_BUF_REG) != 0)
}

/// The data path for a new device: `wanted`, or zero copy where the driver has it when
/// `wanted` is `None`. Asking for zero copy on a driver without it is an error.
pub fn choose_data_path(wanted: Option<DataPath>) -> anyhow::Result<DataPath> {
    let available = driver_has_zero_copy();
    match wanted {
        None if available => Ok(DataPath::ZeroCopy),
        None => Ok(DataPath::Copy),
        Some(DataPath::ZeroCopy) if !available => anyhow::bail!(
            "--data-path zero-copy: this kernel's ublk driver has no zero copy \
             (UBLK_F_AUTO_BUF_REG, Linux 6.16 and later); use --data-path auto or copy"
        ),
        Some(path) => Ok(path),
    }
}

/// Where the queue threads run: each on one CPU of those its queue serves (libublk picks
/// it), not floating over all of them. With a queue serving several CPUs (1 queue per 4
/// CPUs by default), a floating queue thread keeps meeting the submitters on their CPUs and
/// migrating; pinned, it runs beside them. Measured with fio in a 2-vCPU guest (6.18, QD32,
/// 3 interleaved runs, medians): pinned, 4 KiB random reads 22% and writes 7% faster.
fn queue_placement() -> UblkFlags {
    UblkFlags::UBLK_DEV_F_SINGLE_CPU_AFFINITY
}

/// Adds a ublk device for rewind: `id` or the first free one, `queues` queues of `depth`,
/// with the ublk flags of `on_crash` and `data_path`.
pub fn add_device(
    id: Option<u32>,
    queues: u16,
    depth: u16,
    on_crash: OnCrash,
    data_path: DataPath,
) -> anyhow::Result<UblkCtrl> {
    let id_arg = match id {
        Some(n) => i32::try_from(n).map_err(|_| anyhow::anyhow!("device id {n} is too large"))?,
        None => -1,
    };
    UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(id_arg)
        .nr_queues(queues)
        .depth(depth)
        .io_buf_bytes(IO_BUF_BYTES)
        .ctrl_flags(on_crash.ublk_flags() | data_path.ublk_flags())
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV | queue_placement())
        .build()
        .map_err(|e| {
            let why = describe_ublk_error(&e);
            match (id, ublk_errno(&e)) {
                (Some(n), Some(libc::EEXIST)) => anyhow::anyhow!(
                    "adding ublk device {n}: it already exists; pick another -n or omit -n"
                ),
                (_, Some(libc::ENOENT)) => anyhow::anyhow!(
                    "adding a ublk device: {why}: is the ublk driver loaded? \
                     (`modprobe ublk_drv`; Linux 6.0+ with CONFIG_BLK_DEV_UBLK)"
                ),
                _ => anyhow::anyhow!("adding a ublk device: {why}"),
            }
        })
}

/// Takes over device `id`, whose daemon died and left it quiesced: opens a control handle
/// for recovery and sends START_USER_RECOVERY, which the kernel accepts once the dead
/// daemon's descriptors are gone (libublk retries while it answers EBUSY, up to 30 s).
/// Serving it then (`run_target`) ends with END_USER_RECOVERY instead of START_DEV, and
/// the queued I/O is reissued to the new queues.
///
/// The handle reads the device's flags back from the kernel, so the new queues are set up
/// as the device was added: with user recovery, and with zero copy if it had it.
///
/// Unlike the handle of [`add_device`], this one does not delete the device when dropped:
/// the daemon deletes it itself once it is stopped.
pub fn recover_device(id: u32) -> anyhow::Result<UblkCtrl> {
    let id_arg = i32::try_from(id).map_err(|_| anyhow::anyhow!("device id {id} is too large"))?;
    let info = UblkCtrl::new_simple(id_arg)
        .map_err(|e| anyhow::anyhow!("opening ublk device {id}: {}", describe_ublk_error(&e)))?
        .dev_info();
    if info.flags & u64::from(sys::UBLK_F_USER_RECOVERY) == 0 {
        anyhow::bail!(
            "ublk device {id} was added without recovery (--on-crash stop): it cannot be \
             taken over; `rewind del -n {id}`, then `rewind add` the image again"
        );
    }
    let ctrl = UblkCtrl::new(
        Some(TARGET_NAME.to_string()),
        id_arg,
        u32::from(info.nr_hw_queues),
        u32::from(info.queue_depth),
        info.max_io_buf_bytes,
        0,
        0,
        UblkFlags::UBLK_DEV_F_RECOVER_DEV | queue_placement(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "opening ublk device {id} for recovery: {}",
            describe_ublk_error(&e)
        )
    })?;
    match ctrl.start_user_recover() {
        Ok(r) if r >= 0 => Ok(ctrl),
        Ok(r) => Err(anyhow::anyhow!(
            "starting the recovery of ublk device {id}: {}",
            std::io::Error::from_raw_os_error(-r)
        )),
        Err(e) => Err(anyhow::anyhow!(
            "starting the recovery of ublk device {id}: {}{}",
            describe_ublk_error(&e),
            if ublk_errno(&e) == Some(libc::EBUSY) {
                " (the old daemon still holds the device, or it is not quiesced)"
            } else {
                ""
            }
        )),
    }
}

/// Sends STOP_DEV to ublk device `id` through a control handle of this thread: its queues
/// see their commands aborted, and the daemon serving it returns from `run_target`. `noun`
/// names the device in the error ("device", "view device").
pub fn stop_device(id: u32, noun: &str) -> Result<(), String> {
    let id_arg = i32::try_from(id).map_err(|_| format!("{noun} id {id} out of range"))?;
    let ctrl = UblkCtrl::new_simple(id_arg).map_err(|e| {
        format!(
            "opening {noun} {id} to stop it: {}",
            describe_ublk_error(&e)
        )
    })?;
    ctrl.kill_dev()
        .map(|_| ())
        .map_err(|e| format!("stopping {noun} {id}: {}", describe_ublk_error(&e)))
}
