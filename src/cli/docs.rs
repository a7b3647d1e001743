//! `rewind completions` and `rewind man`: shell completions and man pages generated from the
//! clap definitions in [`args`](super::args), so they always match the commands.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::args::Cli;

/// Prints the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    clap_complete::generate(shell, &mut completed(), "rewind", &mut std::io::stdout());
    Ok(())
}

/// The completion script for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut completed(), "rewind", &mut script);
    script
}

/// What the shell completes: `rewind` with the commands a user runs (the generators would
/// offer the hidden internal ones too).
fn completed() -> clap::Command {
    let full = Cli::command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .cloned()
        .collect();
    clap::Command::new("rewind")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommands(visible)
}

/// Prints `rewind.1`, or writes it and one `rewind-COMMAND.1` per visible command into
/// `dir`.
pub fn man(dir: Option<&Path>) -> Result<()> {
    let Some(dir) = dir else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(Cli::command()).render(&mut out)?;
        return Ok(out.flush()?);
    };
    for path in write_man_pages(dir)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes `rewind.1` and one `rewind-COMMAND.1` per visible command into `dir` (created if
/// missing); returns their paths.
pub fn write_man_pages(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, page) in pages(Cli::command()) {
        let path = dir.join(format!("{name}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page).render(&mut bytes)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The pages: `rewind` itself, then `rewind-COMMAND` for each command a user can run (the
/// internal ones are hidden).
fn pages(cmd: clap::Command) -> Vec<(String, clap::Command)> {
    let mut out = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("rewind-{}", sub.get_name());
        // The page's name is what `man` looks up; the version is the tool's.
        let page = sub
            .clone()
            .name(name.clone())
            .version(env!("CARGO_PKG_VERSION"));
        out.push((name, page));
    }
    out.insert(0, ("rewind".to_string(), cmd));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_the_commands_a_user_runs_and_not_the_internal_ones() {
        let script = String::from_utf8(completion_script(clap_complete::Shell::Bash)).unwrap();
        for word in ["rollback", "view", "--data-path", "--on-crash"] {
            assert!(script.contains(word), "{word} is not completed");
        }
        assert!(
            !script.contains("__serve"),
            "an internal command is completed"
        );
    }

    #[test]
    fn a_page_for_rewind_and_for_every_command_a_user_runs() {
        let names: Vec<String> = pages(Cli::command()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "rewind");
        for want in ["rewind-add", "rewind-rollback", "rewind-view", "rewind-man"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("__")),
            "an internal command has a page: {names:?}"
        );
        let mut page = Vec::new();
        let add = pages(Cli::command())
            .into_iter()
            .find(|(n, _)| n == "rewind-add")
            .unwrap();
        clap_mangen::Man::new(add.1).render(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.contains(".TH rewind-add"),
            "{}",
            &page[..200.min(page.len())]
        );
        assert!(page.contains("on\\-crash"), "the options are on the page");
    }
}
