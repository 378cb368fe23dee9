//! A size-rolled log file (`log.rotation.size`, `log.rotation.count`): when the next
//! write would take `emqx.log` past the size, it becomes `emqx.log.1` (`.1` becomes
//! `.2`, ...; the oldest beyond the count is deleted) and a new `emqx.log` starts.
//! EMQX 4 (logger_disk_log_h) names its files the same way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    written: u64,
    /// None: never roll over (`log.rotation = off`).
    max_size: Option<u64>,
    keep: u32,
}

impl RotatingFile {
    pub fn open(path: &Path, max_size: Option<u64>, keep: u32) -> io::Result<RotatingFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            written,
            max_size,
            keep: keep.max(1),
        })
    }

    fn numbered(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn roll_over(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let _ = std::fs::remove_file(self.numbered(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.numbered(n);
            if from.exists() {
                std::fs::rename(&from, self.numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(max) = self.max_size {
            if self.written > 0 && self.written + buf.len() as u64 > max {
                // A failed roll-over keeps writing to the current file: losing the
                // log is worse than a file over its size.
                if let Err(e) = self.roll_over() {
                    eprintln!("log rotation of {} failed: {e}", self.path.display());
                    self.written = 0;
                }
            }
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_roll_over_at_the_size_and_only_count_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emqx.log");
        let mut f = RotatingFile::open(&path, Some(100), 2).unwrap();
        for i in 0..10 {
            // One write per line, as the fmt layer writes an event: 40 bytes, 2 a file.
            f.write_all(format!("{i:0>39}\n").as_bytes()).unwrap();
        }
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(path.clone()).lines().count(), 2);
        assert!(read(path.clone()).contains("000000009"));
        assert!(read(f.numbered(1)).contains("000000007"));
        assert!(read(f.numbered(2)).contains("000000005"));
        assert!(!f.numbered(3).exists());
        for p in [path.clone(), f.numbered(1), f.numbered(2)] {
            assert!(std::fs::metadata(p).unwrap().len() <= 100);
        }
    }
}
