//! This machine and process as the engine sees them (`rewind_history::Host`): the host name
//! and the kernel's boot id, read from `/proc`, the pid and the system clock. The engine
//! does no I/O of its own; the binary asks the kernel here.

use std::sync::Arc;

use rewind_history::{Host, SystemClock};

/// This process on this machine: the owner `Volume::open` records in the superblock, and
/// the boot whose unsynced journal blocks replay trusts.
pub fn this_host() -> Host {
    Host {
        boot_id: boot_id(),
        name: host_name(),
        pid: std::process::id(),
        clock: Arc::new(SystemClock),
    }
}

/// The memory this machine can give a process, RAM and swap, in bytes (`None` if unknown).
pub fn memory_bytes() -> Option<u64> {
    memory_of(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The value of field `key` (with its colon, as `"MemTotal:"`) of a `/proc` text in the
/// form of `/proc/meminfo` or `/proc/PID/status`: `MemTotal:  24578908 kB` gives 24578908.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// `MemTotal` plus `SwapTotal` of a `/proc/meminfo` text, in bytes.
fn memory_of(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| kib_field(meminfo, key);
    Some((kib("MemTotal:")? + kib("SwapTotal:").unwrap_or(0)) * 1024)
}

/// This host's name (empty if unknown).
fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    name.trim().to_string()
}

/// This boot of the kernel (0 if unknown, which trusts no unsynced journal block).
fn boot_id() -> u64 {
    boot_id_of(&std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default())
}

/// 64 bits of a boot id as the kernel prints it (a random uuid), never 0; 0 for no id.
fn boot_id_of(text: &str) -> u64 {
    let hex: String = text
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&hex, 16).map_or(0, |b| b | 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_id_is_its_first_64_bits_and_never_0() {
        assert_eq!(
            boot_id_of("2a1c6e3f-94b0-4d5e-8f21-0c9d7a6b5e43\n"),
            0x2a1c_6e3f_94b0_4d5f
        );
        assert_eq!(boot_id_of("00000000-0000-0000-0000-000000000000"), 1);
        assert_eq!(boot_id_of(""), 0, "unknown");
    }

    #[test]
    fn memory_is_ram_and_swap() {
        let text = "MemTotal:       24578908 kB\nMemFree:  100 kB\nSwapTotal:     1048572 kB\n";
        assert_eq!(memory_of(text), Some((24_578_908 + 1_048_572) * 1024));
        assert_eq!(memory_of("MemTotal: 8 kB\n"), Some(8192), "no swap line");
        assert_eq!(memory_of("SwapTotal: 8 kB\n"), None, "no RAM line");
    }
}
