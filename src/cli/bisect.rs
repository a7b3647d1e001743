//! `rewind bisect`: finds the first bad safe point between one known good and one known
//! bad, by running the user's command against read-only views of the safe points between
//! (as `git bisect run` does with commits).
//!
//! The search (`search`) is apart from the views and the command (`Bisect::test`), so it is
//! tested on its own. Every view is deleted once its command ends, whatever happens: a
//! failed command, an error, or SIGINT or SIGTERM (Ctrl-C), which bisect passes on to the
//! command before it cleans up and stops.

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::cli::history::{device_window, open_view};
use crate::cli::render::{print_json, safe_point_line};
use crate::ipc::control::SafePointRecord;
use crate::ipc::paths;
use crate::runtime::removal;
use crate::selector::find_safe_point;
use crate::time::rfc3339;

/// The command's exit status that means "cannot tell at this safe point" (as git bisect).
const SKIP_STATUS: i32 = 125;

/// What the command said of one safe point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Exit status 0.
    Good,
    /// Exit status 1-127 but 125.
    Bad,
    /// Exit status 125, or the safe point could not be shown (reclaim retired it).
    Skip,
}

/// Where the search ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    /// The index of the first bad candidate; the number of candidates: none of them is
    /// bad, so the first bad is the known-bad end.
    pub first_bad: usize,
    /// Skipped candidates just before it, any of which may be the first bad instead.
    pub maybe: Vec<usize>,
}

/// Binary search over `n` candidates, oldest first, each good or bad, all good ones before
/// all bad ones (the known-good end is before index 0, the known-bad end at index `n`).
/// `test` judges candidate `i`; a skipped one is set aside and its neighbours tried.
pub fn search(n: usize, mut test: impl FnMut(usize) -> Result<Verdict>) -> Result<Found> {
    // Candidates still in play, in order; the answer is in `lo..=hi` of it (`hi` is the
    // known-bad end when equal to its length).
    let mut open: Vec<usize> = (0..n).collect();
    let mut skipped = Vec::new();
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match test(open[mid])? {
            Verdict::Good => lo = mid + 1,
            Verdict::Bad => hi = mid,
            Verdict::Skip => {
                skipped.push(open.remove(mid));
                hi -= 1;
            }
        }
    }
    let first_bad = open.get(hi).copied().unwrap_or(n);
    // Skipped candidates between the last good one and the first bad.
    let last_good = hi.checked_sub(1).map(|i| open[i]);
    let mut maybe: Vec<usize> = skipped
        .into_iter()
        .filter(|&s| s < first_bad && last_good.is_none_or(|g| s > g))
        .collect();
    maybe.sort_unstable();
    Ok(Found { first_bad, maybe })
}

/// Steps a search of `n` candidates takes at most, with no skip.
pub fn steps_at_most(n: usize) -> u32 {
    usize::BITS - n.leading_zeros()
}

/// Set by SIGINT or SIGTERM while bisect runs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Has SIGINT and SIGTERM set `INTERRUPTED` instead of ending the process, so the views
/// are deleted first. A handled signal is back to its default in the command `exec` runs,
/// which thus gets Ctrl-C as usual.
fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a handler that only stores to an atomic, which is
        // async-signal-safe; the struct is fully initialized before the call.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_interrupt as extern "C" fn(libc::c_int) as usize;
            // Calls under way (the control socket, the wait for the command) go on.
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[derive(Serialize)]
struct StepJson {
    safe_point: u64,
    time: String,
    label: Option<String>,
    view: Option<String>,
    verdict: Verdict,
    /// The command's exit status; none when no view could be opened.
    status: Option<i32>,
}

#[derive(Serialize)]
struct BisectJson {
    good: u64,
    /// `None`: the live device.
    bad: Option<u64>,
    steps: Vec<StepJson>,
    /// The first bad safe point; `None`: none of the safe points after `good` is bad, so
    /// the change came after the newest (the live device was the known-bad end).
    first_bad: Option<u64>,
    /// Skipped safe points any of which may be the first bad instead.
    maybe_first_bad: Vec<u64>,
}

/// One bisect run on device `id`.
struct Bisect<'a> {
    id: u32,
    command: &'a [String],
    tz: TimeZone,
    steps: Vec<StepJson>,
}

impl Bisect<'_> {
    fn describe(&self, sp: &SafePointRecord) -> String {
        safe_point_line(sp, &self.tz)
    }

    /// Shows `sp` as a view, runs the command against it, deletes the view.
    fn test(&mut self, sp: &SafePointRecord, left: u32) -> Result<Verdict> {
        let step = self.steps.len() + 1;
        stop_if_interrupted(step)?;
        let view = match open_view(self.id, sp) {
            Ok(v) => v,
            Err(e) => {
                // Reclaim may have retired the safe point since the search began: it is
                // skipped then. Any other failure (the daemon gone, a timeout) ends the
                // search.
                let window = device_window("rewind bisect", self.id)?;
                if window.iter().any(|w| w.id == sp.id) {
                    return Err(e.context(format!("step {step}")));
                }
                eprintln!(
                    "rewind: step {step}: {}: skipped, retired from the window",
                    self.describe(sp)
                );
                self.record(sp, None, Verdict::Skip, None);
                return Ok(Verdict::Skip);
            }
        };
        eprintln!(
            "rewind: step {step} (about {left} left): {} on {}",
            self.describe(sp),
            view.device
        );
        let ran = stop_if_interrupted(step).and_then(|()| self.run(sp, &view.device));
        // The view goes whatever the command did.
        let deleted = delete_view_patiently(view.device_id);
        let status = match (ran, deleted) {
            (Ok(status), Ok(())) => status,
            (Err(e), Ok(())) => return Err(e),
            (Ok(_), Err(d)) => return Err(d),
            (Err(e), Err(d)) => return Err(e.context(format!("and then: {d:#}"))),
        };
        stop_if_interrupted(step)?;
        let verdict = match status.code() {
            Some(0) => Verdict::Good,
            Some(SKIP_STATUS) => Verdict::Skip,
            Some(c @ (126 | 127)) => bail!(
                "the command could not be run (exit {c}: {}); stopping",
                if c == 126 {
                    "not executable"
                } else {
                    "not found"
                }
            ),
            Some(c) if (1..128).contains(&c) => Verdict::Bad,
            Some(c) => bail!(
                "the command exited with {c} at {} (128 or more: it crashed or was \
                 killed); stopping. 0 means good, 1-127 bad, 125 skip",
                self.describe(sp)
            ),
            None => bail!(
                "the command was killed by a signal at {}; stopping",
                self.describe(sp)
            ),
        };
        eprintln!(
            "rewind: step {step}: {} is {}",
            self.describe(sp),
            match verdict {
                Verdict::Good => "good",
                Verdict::Bad => "bad",
                Verdict::Skip => "skipped (exit 125)",
            }
        );
        self.record(sp, Some(view.device), verdict, status.code());
        Ok(verdict)
    }

    /// Runs the command against view `device` of `sp`, its output on standard error (the
    /// answer alone goes to standard output); passes SIGINT or SIGTERM that bisect gets on
    /// to it as SIGTERM.
    fn run(&self, sp: &SafePointRecord, device: &str) -> Result<std::process::ExitStatus> {
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating standard error")?;
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .env("REWIND_VIEW", device)
            .env("REWIND_SAFE_POINT", sp.id.0.to_string())
            .env("REWIND_DEVICE", paths::device_path(self.id))
            .stdout(stdout)
            .spawn()
            .with_context(|| format!("running {}", self.command[0]))?;
        let mut passed_on = false;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the command")? {
                return Ok(status);
            }
            if INTERRUPTED.load(Ordering::SeqCst) && !passed_on {
                passed_on = true;
                // SAFETY: kill takes a pid and a signal number; the child is not reaped
                // yet, so its pid is still its own.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn record(
        &mut self,
        sp: &SafePointRecord,
        view: Option<String>,
        verdict: Verdict,
        status: Option<i32>,
    ) {
        self.steps.push(StepJson {
            safe_point: sp.id.0,
            time: rfc3339(sp.time_ns, &self.tz),
            label: sp.label.clone(),
            view,
            verdict,
            status,
        });
    }
}

/// Ends the search if SIGINT or SIGTERM came, before step `step` or during it.
fn stop_if_interrupted(step: usize) -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted at step {step}; no view is left");
    }
    Ok(())
}

/// Deletes view device `id`, trying again for a while if it is still in use (a command
/// that mounted it may leave the kernel a moment to let it go).
fn delete_view_patiently(id: u32) -> Result<()> {
    let mut tries = 0;
    loop {
        match removal::delete(id) {
            Ok(()) => return Ok(()),
            Err(e) if tries < 20 => {
                tries += 1;
                log::debug!("deleting view {id}: {e:#}; trying again");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(e.context(format!("deleting the view /dev/ublkb{id}"))),
        }
    }
}

/// `rewind bisect -n ID --good X [--bad Y] -- COMMAND...`.
pub fn bisect_command(
    id: u32,
    good: &str,
    bad: &str,
    command: &[String],
    json: bool,
) -> Result<()> {
    let shown = paths::device_path(id).display().to_string();
    if command.is_empty() {
        bail!("give the command to run after --, e.g. -- sh -c 'cmp \"$REWIND_VIEW\" ...'");
    }
    let window = device_window("rewind bisect", id)?;
    let good = find_safe_point(&window, good)?.clone();
    let bad = match bad {
        "now" => None,
        at => Some(find_safe_point(&window, at)?.clone()),
    };
    if let Some(b) = &bad {
        if b.id <= good.id {
            bail!(
                "the bad safe point ({}) must come after the good one ({})",
                b.id,
                good.id
            );
        }
    }
    let candidates: Vec<SafePointRecord> = window
        .iter()
        .filter(|sp| sp.id > good.id && bad.as_ref().is_none_or(|b| sp.id < b.id))
        .cloned()
        .collect();
    catch_interrupts();
    let mut run = Bisect {
        id,
        command,
        tz: TimeZone::system(),
        steps: Vec::new(),
    };
    eprintln!(
        "rewind: {shown}: {} safe point{} between {} (good) and {} (bad): at most {} step{}",
        candidates.len(),
        if candidates.len() == 1 { "" } else { "s" },
        run.describe(&good),
        bad.as_ref()
            .map_or_else(|| "the live device".to_string(), |b| run.describe(b)),
        steps_at_most(candidates.len()),
        if steps_at_most(candidates.len()) == 1 {
            ""
        } else {
            "s"
        },
    );
    let mut span = candidates.len();
    let found = search(candidates.len(), |i| {
        let v = run.test(&candidates[i], steps_at_most(span))?;
        span /= 2;
        Ok(v)
    })?;
    let first_bad = candidates.get(found.first_bad).or(bad.as_ref());
    let maybe: Vec<&SafePointRecord> = found.maybe.iter().map(|&i| &candidates[i]).collect();
    if json {
        print_json(&BisectJson {
            good: good.id.0,
            bad: bad.as_ref().map(|b| b.id.0),
            steps: run.steps,
            first_bad: first_bad.map(|sp| sp.id.0),
            maybe_first_bad: maybe.iter().map(|sp| sp.id.0).collect(),
        })?;
        if first_bad.is_none() && !maybe.is_empty() {
            bail!("no answer: no safe point was found bad, and some could not be judged");
        }
        return Ok(());
    }
    match first_bad {
        Some(sp) => {
            eprintln!("rewind: the first bad one is {}", run.describe(sp));
            println!("{}", sp.id.0);
        }
        None => {
            let newest = candidates.last().unwrap_or(&good);
            eprintln!(
                "rewind: no safe point after {} is bad: the change came after {}, the newest",
                run.describe(&good),
                run.describe(newest)
            );
        }
    }
    if !maybe.is_empty() {
        let ids: Vec<String> = maybe.iter().map(|sp| sp.id.0.to_string()).collect();
        eprintln!(
            "rewind: skipped safe point{} {} may be the first bad instead",
            if ids.len() == 1 { "" } else { "s" },
            ids.join(", ")
        );
        if first_bad.is_none() {
            bail!("no answer: no safe point was found bad, and some could not be judged");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates `0..n` with the first bad at `first_bad`, and the indices the search
    /// tested.
    fn run(n: usize, first_bad: usize, skip: &[usize]) -> (Found, Vec<usize>) {
        let mut tested = Vec::new();
        let found = search(n, |i| {
            tested.push(i);
            Ok(if skip.contains(&i) {
                Verdict::Skip
            } else if i >= first_bad {
                Verdict::Bad
            } else {
                Verdict::Good
            })
        })
        .unwrap();
        (found, tested)
    }

    #[test]
    fn finds_the_first_bad_in_log2_steps() {
        for n in 0..40 {
            for first_bad in 0..=n {
                let (found, tested) = run(n, first_bad, &[]);
                assert_eq!(found.first_bad, first_bad, "n {n}");
                assert!(found.maybe.is_empty());
                assert!(tested.len() as u32 <= steps_at_most(n), "n {n}: {tested:?}");
                // Never the same safe point twice.
                let mut seen = tested.clone();
                seen.sort_unstable();
                seen.dedup();
                assert_eq!(seen.len(), tested.len());
            }
        }
        assert_eq!(steps_at_most(0), 0);
        assert_eq!(steps_at_most(1), 1);
        assert_eq!(steps_at_most(7), 3);
        assert_eq!(steps_at_most(8), 4);
    }

    #[test]
    fn a_skipped_safe_point_next_to_the_answer_is_named() {
        // 10 candidates, first bad 6; 5 (just before it) cannot be judged.
        let (found, _) = run(10, 6, &[5]);
        assert_eq!(found.first_bad, 6);
        assert_eq!(found.maybe, vec![5]);
        // A skip far from the answer changes nothing.
        let (found, _) = run(10, 6, &[1]);
        assert_eq!((found.first_bad, found.maybe.len()), (6, 0));
        // Everything skipped: the known-bad end, and every candidate may be it.
        let (found, _) = run(4, 2, &[0, 1, 2, 3]);
        assert_eq!(found.first_bad, 4);
        assert_eq!(found.maybe, vec![0, 1, 2, 3]);
    }

    #[test]
    fn an_error_stops_the_search() {
        let mut calls = 0;
        let r = search(10, |_| {
            calls += 1;
            bail!("no")
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
