//! `rewind install-units`: the systemd unit (`dist/rewind@.service`), the shell completions
//! and the man pages, each where its tool looks for it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::docs::{completion_script, write_man_pages};

/// The unit, with `@BINARY@` for the path of the rewind to run.
const UNIT: &str = include_str!("../../dist/rewind@.service");

/// Where each file goes, under the root (`/` unless `--root`).
const UNIT_DIR: &str = "etc/systemd/system";
const MAN_DIR: &str = "usr/local/share/man/man1";
const COMPLETIONS: [(clap_complete::Shell, &str); 3] = [
    (
        clap_complete::Shell::Bash,
        "usr/local/share/bash-completion/completions/rewind",
    ),
    (
        clap_complete::Shell::Zsh,
        "usr/local/share/zsh/site-functions/_rewind",
    ),
    (
        clap_complete::Shell::Fish,
        "usr/local/share/fish/vendor_completions.d/rewind.fish",
    ),
];

/// The unit's text for the rewind at `binary` (quoted for systemd if it has a space).
pub fn unit_text(binary: &Path) -> String {
    let path = binary.display().to_string();
    let path = if path.contains(char::is_whitespace) {
        format!("\"{path}\"")
    } else {
        path
    };
    UNIT.replace("@BINARY@", &path)
}

/// Writes the unit (running `binary`), the completions and the man pages under `root`;
/// returns the paths written.
pub fn install(root: &Path, binary: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut write = |relative: &str, bytes: &[u8]| -> Result<()> {
        let path = root.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write(
        &format!("{UNIT_DIR}/rewind@.service"),
        unit_text(binary).as_bytes(),
    )?;
    for (shell, relative) in COMPLETIONS {
        write(relative, &completion_script(shell))?;
    }
    written.extend(write_man_pages(&root.join(MAN_DIR))?);
    Ok(written)
}

/// `rewind install-units [--root DIR] [--binary PATH]`.
pub fn install_units_command(root: &Path, binary: Option<&Path>) -> Result<()> {
    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .context("finding this rewind's own path, for the unit to run")?,
    };
    let written = install(root, &binary)?;
    for path in &written {
        println!("{}", path.display());
    }
    eprintln!(
        "rewind: installed the unit (running {}), completions and man pages; then \
         `systemctl daemon-reload` and, for an image made with `rewind create`, \
         `systemctl enable --now rewind@$(systemd-escape --path IMAGE).service`",
        binary.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_this_binary_in_the_foreground_under_the_notify_protocol() {
        let text = unit_text(Path::new("/opt/bin/rewind"));
        for line in [
            "Type=notify",
            "NotifyAccess=main",
            "ExecStart=/opt/bin/rewind add %f --foreground $REWIND_ADD_OPTS",
            "WatchdogSec=30",
            "Restart=on-failure",
            "StartLimitIntervalSec=0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("@BINARY@"));
        let spaced = unit_text(Path::new("/opt/my tools/rewind"));
        assert!(spaced.contains("ExecStart=\"/opt/my tools/rewind\" add %f"));
    }

    #[test]
    fn everything_goes_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let written = install(root.path(), Path::new("/usr/bin/rewind")).unwrap();
        for want in [
            "etc/systemd/system/rewind@.service",
            "usr/local/share/bash-completion/completions/rewind",
            "usr/local/share/zsh/site-functions/_rewind",
            "usr/local/share/fish/vendor_completions.d/rewind.fish",
            "usr/local/share/man/man1/rewind.1",
            "usr/local/share/man/man1/rewind-add.1",
        ] {
            let path = root.path().join(want);
            assert!(written.contains(&path), "{want} not written");
            assert!(
                std::fs::metadata(&path).unwrap().len() > 0,
                "{want} is empty"
            );
        }
        assert!(written.iter().all(|p| p.starts_with(root.path())));
    }
}
