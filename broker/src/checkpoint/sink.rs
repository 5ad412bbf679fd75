//! The checkpoint file: one JSON object per line, appended and fsynced one checkpoint at a time. Several
//! brokers may append to one file (a shared data dir): each line is a single `write` in append mode.

use std::io::{BufRead as _, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use super::{Checkpoint, Error};

/// Longest line read back; a checkpoint line is about 300 bytes.
pub const MAX_LINE_BYTES: usize = 4096;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, Error> {
    let created = !path.exists();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    if created {
        // The new file's directory entry must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
    }
    Ok(file)
}

/// Creates the file (and its directory) if missing, so that a broker that cannot write there says so
/// when it starts.
pub fn ensure(path: &Path) -> Result<(), Error> {
    open_append(path).map(drop)
}

/// Appends `checkpoint` as one line and fsyncs it. After a line cut short (a crash mid-write), it starts
/// a new line, so the cut line stays the only unreadable one.
pub fn append(path: &Path, checkpoint: &Checkpoint) -> Result<(), Error> {
    let json = serde_json::to_string(checkpoint).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    let mut file = open_append(path)?;
    let len = file.metadata().map_err(io(path))?.len();
    let mut last = [b'\n'];
    if len > 0 {
        file.seek(std::io::SeekFrom::Start(len.saturating_sub(1)))
            .and_then(|_| file.read_exact(&mut last))
            .map_err(io(path))?;
    }
    let line = if last == [b'\n'] {
        format!("{json}\n")
    } else {
        format!("\n{json}\n")
    };
    file.write_all(line.as_bytes()).map_err(io(path))?;
    file.sync_data().map_err(io(path))
}

/// The last checkpoint in the file, if its last line is one; `None` when the file is missing or empty.
pub fn last(path: &Path) -> Result<Option<Checkpoint>, Error> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let len = file.metadata().map_err(io(path))?.len();
    let tail = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX);
    file.seek(std::io::SeekFrom::Start(len.saturating_sub(tail)))
        .map_err(io(path))?;
    let mut buf = String::new();
    file.take(tail).read_to_string(&mut buf).map_err(io(path))?;
    Ok(buf
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok()))
}

/// One line of the file: its number (from 1) and the checkpoint, or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub line: u64,
    pub checkpoint: Result<Checkpoint, String>,
}

/// Reads the file line by line (blank lines skipped), without holding it all in memory. A last line
/// without its newline is a write still in progress (each checkpoint is written with its newline in
/// one `write`): it is not read, and [`Reader::incomplete_tail`] says so.
pub struct Reader {
    path: PathBuf,
    lines: std::io::BufReader<std::fs::File>,
    line: u64,
    incomplete_tail: bool,
}

impl Reader {
    /// `Ok(None)` when the file does not exist.
    pub fn open(path: &Path) -> Result<Option<Self>, Error> {
        match std::fs::File::open(path) {
            Ok(f) => Ok(Some(Self {
                path: path.to_path_buf(),
                lines: std::io::BufReader::new(f),
                line: 0,
                incomplete_tail: false,
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path)(e)),
        }
    }

    /// Whether the file ended in the middle of a line (seen once [`Reader::next_entry`] returned `None`).
    pub fn incomplete_tail(&self) -> bool {
        self.incomplete_tail
    }

    /// The next entry, or `None` at the end of the file.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        loop {
            let mut raw = Vec::new();
            let limit = u64::try_from(MAX_LINE_BYTES + 1).unwrap_or(u64::MAX);
            let n = (&mut self.lines)
                .take(limit)
                .read_until(b'\n', &mut raw)
                .map_err(io(&self.path))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if raw.len() > MAX_LINE_BYTES && raw.last() != Some(&b'\n') {
                // Skip the rest of the oversized line.
                self.lines.skip_until(b'\n').map_err(io(&self.path))?;
                return Ok(Some(Entry {
                    line: self.line,
                    checkpoint: Err(format!("line is longer than {MAX_LINE_BYTES} bytes")),
                }));
            }
            if raw.last() != Some(&b'\n') {
                // The end of the file in the middle of a line.
                self.incomplete_tail = !raw.trim_ascii().is_empty();
                return Ok(None);
            }
            let text = String::from_utf8_lossy(&raw);
            if text.trim().is_empty() {
                continue;
            }
            return Ok(Some(Entry {
                line: self.line,
                checkpoint: serde_json::from_str(text.trim()).map_err(|e| e.to_string()),
            }));
        }
    }
}
