//! Byte sizes as people type them (`10G`, `512M`, `4096`) and as `rewind` prints them, a
//! layout's sizes included.
//!
//! Suffixes are powers of 1024 (`K`, `M`, `G`, `T`, optionally followed by `iB` or `B`),
//! because the sizes that matter here are counted in 4 KiB pages. Anything else, a fraction
//! or an unknown suffix, is an error that says what was expected rather than a guess.

use rewind_history::{Layout, PAGE_SIZE};

/// Parses a byte count: plain bytes or a number with a K/M/G/T suffix (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty size; give bytes or a number with K, M, G or T, e.g. 10G".into());
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, suffix) = s.split_at(digits_end);
    if number.is_empty() {
        return Err(format!(
            "'{text}' does not start with a number; give bytes or a number with K, M, G or T, e.g. 10G"
        ));
    }
    if suffix.starts_with('.') || suffix.starts_with(',') {
        return Err(format!(
            "'{text}': fractions are not accepted; use a smaller unit (e.g. 1536M instead of 1.5G)"
        ));
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
            "'{text}': unknown unit '{suffix}'; use K, M, G or T (powers of 1024) or plain bytes"
        ))
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is too large"))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a size that must be a positive whole number of 4 KiB pages.
pub fn parse_page_multiple(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes == 0 {
        return Err(format!("'{text}': the size must be greater than zero"));
    }
    if bytes % PAGE_SIZE != 0 {
        return Err(format!(
            "'{text}' is {bytes} bytes, not a multiple of {PAGE_SIZE} (the page size); \
             round it to whole pages, e.g. {}",
            human_exact((bytes / PAGE_SIZE + 1) * PAGE_SIZE)
        ));
    }
    Ok(bytes)
}

/// `bytes` in the largest binary unit that shows it exactly, e.g. `10G`, `1536M`, `4100K`:
/// the form `parse_size` reads back.
pub fn human_exact(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `bytes` rounded for reading, e.g. `10 GiB`, `1.5 GiB`, `300 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if (scaled - scaled.round()).abs() < 0.05 {
        format!("{:.0} {}", scaled, UNITS[unit])
    } else {
        format!("{:.1} {}", scaled, UNITS[unit])
    }
}

/// The history area of a layout, in bytes.
pub fn history_bytes(layout: &Layout) -> u64 {
    (layout.physical_pages - layout.logical_pages) * PAGE_SIZE
}

/// A one-line description of a layout for messages.
pub fn describe_layout(layout: &Layout) -> String {
    format!(
        "{} device, {} of history, {} image",
        human(layout.device_bytes()),
        human(history_bytes(layout)),
        human(layout.required_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_bytes_and_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 8M "), Ok(8 << 20));
    }

    #[test]
    fn bad_sizes_say_why() {
        assert!(parse_size("").unwrap_err().contains("empty"));
        assert!(parse_size("G").unwrap_err().contains("number"));
        assert!(parse_size("1.5G").unwrap_err().contains("fractions"));
        assert!(parse_size("10X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("-1").unwrap_err().contains("number"));
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("99999999999999999999999")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn page_multiples_only() {
        assert_eq!(parse_page_multiple("1G"), Ok(1 << 30));
        let e = parse_page_multiple("1000").unwrap_err();
        assert!(e.contains("not a multiple of 4096"), "{e}");
        assert!(e.contains("4K"), "suggests a rounded size: {e}");
        assert!(parse_page_multiple("0")
            .unwrap_err()
            .contains("greater than zero"));
    }

    #[test]
    fn printing() {
        assert_eq!(human(300), "300 B");
        assert_eq!(human(10 << 30), "10 GiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human_exact(10 << 30), "10G");
        assert_eq!(human_exact(1536 << 20), "1536M");
        assert_eq!(human_exact(4097), "4097");
        for s in ["10G", "1536M", "4K", "12345"] {
            assert_eq!(human_exact(parse_size(s).unwrap()), s);
        }
    }
}
