//! `rewind mirror`: keeps a replica of a device (`runtime::mirror` does the work) and says
//! what each step did.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cli::args::MirrorArgs;
use crate::runtime::mirror::{Mirror, MirrorOptions, NotThisImage, Step, MIN_RATE};
use crate::size::human;

/// Where the state of a mirror into `target` lives by default: beside a file, under
/// /var/lib/rewind for a block device.
fn default_state(target: &Path) -> Result<PathBuf> {
    let is_device = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    let name = target
        .file_name()
        .map_or_else(|| "replica".into(), |n| n.to_string_lossy().into_owned());
    if is_device {
        let dir = Path::new("/var/lib/rewind");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(dir.join(format!("mirror-{name}.json")));
    }
    Ok(target.with_file_name(format!("{name}.mirror.json")))
}

#[derive(Serialize)]
struct StepJson {
    at: u64,
    lag_safe_points: u64,
    bytes: u64,
    full: bool,
    seconds: f64,
}

/// `rewind mirror -n ID --to TARGET`.
pub fn mirror_command(a: MirrorArgs) -> Result<()> {
    if let Some(rate) = a.rate.filter(|r| *r < MIN_RATE) {
        anyhow::bail!(
            "--rate {rate} is below {}: a mirror that slow would stall the daemon's export",
            human(MIN_RATE)
        );
    }
    let state = match a.state {
        Some(s) => s,
        None => default_state(&a.to)?,
    };
    let mut m = Mirror::open(
        a.id,
        MirrorOptions {
            target: a.to.clone(),
            state: state.clone(),
            rate: a.rate,
        },
    )?;
    if let Some(ap) = &m.state().applying {
        eprintln!(
            "rewind mirror: {} was being brought to safe point {}: finishing that first",
            a.to.display(),
            ap.to
        );
    }
    let mut failures = 0u32;
    let _ = m.publish();
    loop {
        let started = Instant::now();
        let step = m.step();
        let _ = m.publish();
        match step {
            Ok(Step::Advanced { to, bytes, full }) => {
                failures = 0;
                let secs = started.elapsed().as_secs_f64();
                let lag = m.status().lag_safe_points;
                if a.json {
                    println!(
                        "{}",
                        serde_json::to_string(&StepJson {
                            at: to.0,
                            lag_safe_points: lag,
                            bytes,
                            full,
                            seconds: secs,
                        })?
                    );
                } else {
                    println!(
                        "{}: at safe point {to}{} ({} fetched in {secs:.1} s), {lag} behind",
                        a.to.display(),
                        if full { ", every page" } else { "" },
                        human(bytes),
                    );
                }
                if a.once {
                    break;
                }
                continue;
            }
            Ok(Step::UpToDate(at)) => {
                failures = 0;
                if a.once {
                    println!("{}: at safe point {at}, the newest", a.to.display());
                    break;
                }
            }
            Err(e) if a.once || e.downcast_ref::<NotThisImage>().is_some() => {
                m.unpublish();
                return Err(e);
            }
            Err(e) => {
                // The daemon may be restarting (recover, upgrade): try again, less often.
                failures += 1;
                eprintln!("rewind mirror: {e:#}; trying again");
            }
        }
        let wait = Duration::from_secs(a.interval.max(1)) * failures.clamp(1, 30);
        std::thread::sleep(wait);
    }
    m.unpublish();
    Ok(())
}
