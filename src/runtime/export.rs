//! Fetching an archive from the daemon of a device (`rewind export -n`, `rewind mirror`):
//! the daemon answers an `export` request with a line and then the archive's bytes, which
//! are copied to a writer with their directory checked on the way.

use std::io::{self, Read, Write};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;

use rewind_archive::{Directory, ExportOptions, PageSink};
use rewind_history::PAGE_SIZE;

use crate::daemon::backing::zero_range;

use crate::ipc::control::ControlRequest;
use crate::ipc::paths;
use crate::runtime::client::ask_for_stream;

/// How long each read from the daemon may wait: its first answer comes after it planned the
/// archive (a walk of the history), then the archive streams.
const READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Bytes copied at a time.
const CHUNK: usize = 1 << 20;

/// Asks the daemon of device `id` (for `command`) for the archive `options` names and
/// copies it to `w`, whole or not at all (an error says the stream was cut short).
/// `check` sees the directory before any page is copied, and may refuse it; `progress`
/// is called with the bytes copied so far and the archive's size, before each read.
pub fn fetch(
    command: &str,
    id: u32,
    options: ExportOptions,
    w: &mut dyn Write,
    check: &dyn Fn(&Directory) -> Result<()>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Directory> {
    let device = paths::device_path(id).display().to_string();
    let request = ControlRequest::Export {
        from: options.from,
        to: options.to,
        incremental: options.incremental,
        net: options.net,
    };
    let (_, mut conn) = match ask_for_stream(command, id, &request, READ_TIMEOUT)? {
        Ok(reply) => reply,
        Err(why) => bail!("no export of {device}: {why}"),
    };
    let cut = |e: &dyn std::fmt::Display| {
        anyhow!(
            "the archive from the daemon of {device} is incomplete ({e}); its log says why: `rewind logs -n {id}`"
        )
    };
    let mut tee = Tee {
        r: &mut conn,
        w,
        write_error: None,
    };
    let read = Directory::read(&mut tee);
    if let Some(e) = tee.write_error.take() {
        return Err(e).context("writing the archive");
    }
    let d = read.map_err(|e| cut(&e))?;
    check(&d)?;
    let total = d.total_bytes();
    let mut done = total - d.data_bytes();
    let mut buf = vec![0u8; CHUNK];
    while done < total {
        progress(done, total);
        let want = (total - done).min(CHUNK as u64) as usize;
        let got = match conn.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(cut(&format_args!(
                    "it stopped {} bytes short",
                    total - done
                )))
            }
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(cut(&e)),
        };
        w.write_all(&buf[..got]).context("writing the archive")?;
        done += got as u64;
    }
    progress(done, total);
    Ok(d)
}

/// A reader that writes what it reads to `w`: the directory passes through to the output
/// as it is checked. A failed write is kept apart, so that it is not taken for a stream
/// cut short.
struct Tee<'a, R: Read> {
    r: &'a mut R,
    w: &'a mut dyn Write,
    write_error: Option<io::Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        if let Err(e) = self.w.write_all(&buf[..n]) {
            let kind = e.kind();
            self.write_error = Some(e);
            return Err(io::Error::new(kind, "the output refused a write"));
        }
        Ok(n)
    }
}

/// An image file or block device a restore writes: `rewind import`'s output, a mirror's
/// replica.
pub struct ImageSink {
    /// The file or device.
    pub file: File,
    /// Zero the pages that read as zeros. Not needed for a new file, which reads as zeros
    /// already and to which a restore writes each page once.
    pub zero: bool,
}

impl PageSink for ImageSink {
    fn write_pages(&mut self, first: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, first * PAGE_SIZE)
    }

    fn zero_pages(&mut self, first: u64, count: u64) -> io::Result<()> {
        if !self.zero {
            return Ok(());
        }
        zero_range(&self.file, first * PAGE_SIZE, count * PAGE_SIZE)
    }
}
