//! The state of an on-disk segment queue, always used under its lock (`mod.rs`).
//!
//! Files in the queue's directory: `<no as 16 hex digits>.seg` segments, oldest first,
//! the last one open for appends; `COMMIT` (the highest acknowledged seq). A segment
//! is preallocated to `seg_bytes` and mapped (`memmap2::MmapRaw`); appends copy into
//! the map and leave a dirty span for the flusher, which makes spans durable
//! (`msync`) in groups. A finished segment is cut to its written length.
//!
//! Open reads the segment headers and scans only the last segment (to find where
//! appends go on), so start-up does not grow with the cache; older segments are
//! checked record by record as they are read.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use super::format::{self, Read, SEG_HEADER};
use super::{Done, Record, SegmentError};

pub(super) struct Segment {
    pub no: u64,
    pub path: PathBuf,
    pub first_seq: u64,
    map: Arc<MmapRaw>,
    /// Bytes that may hold data: what was written, for the write segment; the file's
    /// length for older ones (which may end in zeros after a crash before the cut).
    pub len: usize,
    _file: File,
}

impl Segment {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the map is at least `len` bytes (`len <= map.len()` is kept by every
        // writer of `len`); bytes below `len` are written only before `len` moves past
        // them, under the queue's lock, which every reader holds too. The flusher only
        // msyncs, which does not change memory.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }

    fn cap(&self) -> usize {
        self.map.len()
    }

    /// Copy `bytes` to `at`. Caller holds the lock and `at + bytes.len() <= cap()`.
    fn write_at(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.cap());
        // SAFETY: in bounds (asserted); nobody reads these bytes before `len` covers
        // them, and only the lock holder writes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(at),
                bytes.len(),
            )
        }
    }
}

/// A span of a map written but not yet made durable.
pub(super) struct Dirty {
    pub map: Arc<MmapRaw>,
    pub from: usize,
    pub to: usize,
}

#[derive(Default, Debug, Clone, Copy)]
pub struct Counters {
    /// Records dropped by the `max_total_size` bound.
    pub dropped: u64,
    /// Corrupt records found (the rest of their segment skipped, or a torn tail cut).
    pub corrupt: u64,
}

pub(super) struct DiskState {
    dir: PathBuf,
    seg_bytes: usize,
    max_total: u64,
    pub durable: bool,
    segs: VecDeque<Segment>,
    next_seq: u64,
    /// The next record to pop: (segment no, offset).
    read: (u64, usize),
    /// Seq of the last record popped since open: a record at or below it is not new.
    last_popped: u64,
    /// Popped and not yet acknowledged: (seq, segment no, offset past it), in seq order.
    popped: VecDeque<(u64, u64, usize)>,
    /// (segment no, offset) just past the last acknowledged record: where the
    /// unacknowledged bytes start (`unacked_bytes`).
    ack_pos: (u64, usize),
    /// Every record at or below this seq is acknowledged.
    acked: u64,
    // --- for the flusher ---
    pub dirty: Vec<Dirty>,
    /// Highest seq whose bytes are in `dirty` (or already durable).
    pub written_seq: u64,
    pub dir_dirty: bool,
    pub waiters: VecDeque<(u64, Done)>,
    pub commit: Option<u64>,
    pub delete: Vec<PathBuf>,
    pub counters: Counters,
    /// Test accessor: where durable data ends in the write segment.
    pub synced_end: (u64, usize),
    /// `LOCK`, flocked while the queue is open: two queues on one directory would
    /// each believe they own its tail.
    _lock: File,
}

fn seg_path(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("{no:016x}.seg"))
}

pub(super) fn commit_path(dir: &Path) -> PathBuf {
    dir.join("COMMIT")
}

fn io_err(path: &Path, e: io::Error) -> SegmentError {
    SegmentError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn lock_dir(dir: &Path) -> Result<File, SegmentError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            SegmentError::Locked {
                path: dir.display().to_string(),
            }
        } else {
            io_err(&path, e)
        });
    }
    Ok(file)
}

fn map_file(file: &File, path: &Path) -> Result<Arc<MmapRaw>, SegmentError> {
    MmapOptions::new()
        .map_raw(file)
        .map(Arc::new)
        .map_err(|e| io_err(path, e))
}

impl DiskState {
    pub fn open(
        dir: &Path,
        seg_bytes: usize,
        max_total: u64,
        durable: bool,
    ) -> Result<DiskState, SegmentError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock = lock_dir(dir)?;
        let _ = std::fs::remove_file(dir.join("COMMIT.tmp"));
        let acked = match std::fs::read(commit_path(dir)) {
            Ok(buf) => format::decode_commit(&buf).unwrap_or_else(|why| {
                tracing::warn!(dir = %dir.display(), why, "segment queue: commit file unreadable; replaying from the first record");
                0
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&commit_path(dir), e)),
        };
        let mut nos: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let hex = name.strip_suffix(".seg")?;
                (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
            })
            .collect();
        nos.sort_unstable();
        let mut state = DiskState {
            dir: dir.to_path_buf(),
            seg_bytes: seg_bytes.max(SEG_HEADER + format::REC_HEADER + 1),
            max_total,
            durable,
            segs: VecDeque::new(),
            next_seq: acked + 1,
            read: (0, SEG_HEADER),
            last_popped: 0,
            popped: VecDeque::new(),
            ack_pos: (0, SEG_HEADER),
            acked,
            dirty: Vec::new(),
            written_seq: acked,
            dir_dirty: false,
            waiters: VecDeque::new(),
            commit: None,
            delete: Vec::new(),
            counters: Counters::default(),
            synced_end: (0, 0),
            _lock: lock,
        };
        let last_no = nos.last().copied();
        for no in nos {
            let path = seg_path(dir, no);
            match state.open_segment(no, &path, Some(no) == last_no) {
                Ok(seg) => state.segs.push_back(seg),
                Err(why) => {
                    state.counters.corrupt += 1;
                    let aside = path.with_extension("seg.corrupt");
                    tracing::error!(path = %path.display(), why = %why, aside = %aside.display(), "segment queue: unreadable segment skipped and set aside");
                    let _ = std::fs::rename(&path, &aside);
                }
            }
        }
        if let Some(last) = state.segs.back() {
            state.next_seq = state.next_seq.max(state.scan_tail_seq(last));
        }
        if state.segs.is_empty() {
            let no = last_no.map_or(0, |n| n + 1);
            let seg = state.new_segment(no, state.seg_bytes)?;
            state.segs.push_back(seg);
        }
        state.written_seq = state.next_seq - 1;
        let front = state.segs.front().map_or(0, |s| s.no);
        state.read = (front, SEG_HEADER);
        state.ack_pos = state.scan_ack_pos();
        state.synced_end = state.segs.back().map_or((0, 0), |s| (s.no, s.len));
        Ok(state)
    }

    /// Map one existing segment; the last one's torn or corrupt tail is cut here.
    fn open_segment(&mut self, no: u64, path: &Path, last: bool) -> Result<Segment, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let file_len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        if file_len < SEG_HEADER {
            return Err("shorter than a segment header".into());
        }
        let map = map_file(&file, path).map_err(|e| e.to_string())?;
        let mut seg = Segment {
            no,
            path: path.to_path_buf(),
            first_seq: 0,
            map,
            len: file_len,
            _file: file,
        };
        seg.first_seq = format::decode_segment_header(seg.bytes())?;
        if last {
            let (end, why) = scan_end(&seg);
            if let Some(why) = why {
                self.counters.corrupt += 1;
                let cut = seg.len - end;
                tracing::warn!(path = %path.display(), offset = end, bytes = cut, why, "segment queue: torn or corrupt tail truncated; everything before it kept");
                let zeros = vec![0u8; cut];
                seg.write_at(end, &zeros);
                if let Err(e) = seg.map.flush_range(end, cut) {
                    tracing::error!(path = %path.display(), error = %e, "segment queue: cannot sync the truncated tail");
                }
            }
            seg.len = end;
        }
        Ok(seg)
    }

    /// Where the records at or below `acked` end, from the front: whole segments
    /// below it (left by a crash before their deletion) are stepped over by their
    /// headers, and only the segment holding the boundary is scanned.
    fn scan_ack_pos(&self) -> (u64, usize) {
        let mut pos = self
            .segs
            .front()
            .map_or((0, SEG_HEADER), |s| (s.no, SEG_HEADER));
        for (i, seg) in self.segs.iter().enumerate() {
            let next_first = self.segs.get(i + 1).map(|s| s.first_seq);
            if next_first.is_some_and(|n| n <= self.acked + 1) {
                pos = (seg.no, seg.len);
                continue;
            }
            pos = (seg.no, SEG_HEADER);
            let mut at = SEG_HEADER;
            while let Read::Record { seq, next, .. } = format::read_record(seg.bytes(), at) {
                if seq > self.acked {
                    break;
                }
                at = next;
                pos = (seg.no, next);
            }
            break;
        }
        pos
    }

    /// Bytes of records not yet acknowledged (their framing included).
    pub fn unacked_bytes(&self) -> u64 {
        let (ack_no, ack_at) = self.ack_pos;
        self.segs
            .iter()
            .map(|s| match s.no.cmp(&ack_no) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => s.len.saturating_sub(ack_at) as u64,
                std::cmp::Ordering::Greater => s.len.saturating_sub(SEG_HEADER) as u64,
            })
            .sum()
    }

    /// Seq to append next after the last segment's records.
    fn scan_tail_seq(&self, seg: &Segment) -> u64 {
        let mut next = seg.first_seq;
        let mut at = SEG_HEADER;
        while let Read::Record { seq, next: n, .. } = format::read_record(seg.bytes(), at) {
            next = seq + 1;
            at = n;
        }
        next
    }

    fn new_segment(&mut self, no: u64, cap: usize) -> Result<Segment, SegmentError> {
        let path = seg_path(&self.dir, no);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        file.set_len(cap as u64).map_err(|e| io_err(&path, e))?;
        let map = map_file(&file, &path)?;
        let seg = Segment {
            no,
            path,
            first_seq: self.next_seq,
            map: map.clone(),
            len: SEG_HEADER,
            _file: file,
        };
        seg.write_at(0, &format::encode_segment_header(self.next_seq));
        if self.durable {
            self.dirty.push(Dirty {
                map,
                from: 0,
                to: SEG_HEADER,
            });
            self.dir_dirty = true;
        }
        Ok(seg)
    }

    /// Append one record; its seq. In durable mode its bytes are left for the flusher.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SegmentError> {
        let rec = format::record_len(payload.len());
        self.enforce_bound(rec)?;
        let need_roll = {
            let w = self.write_seg();
            w.len + rec > w.cap()
        };
        if need_roll {
            self.roll(rec)?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut buf = vec![0u8; rec];
        format::encode_record(&mut buf, seq, payload);
        let durable = self.durable;
        let w = self.segs.back_mut().ok_or(SegmentError::Closed)?;
        let at = w.len;
        w.write_at(at, &buf);
        w.len += rec;
        if durable {
            match self.dirty.last_mut() {
                Some(d) if Arc::ptr_eq(&d.map, &w.map) && d.to == at => d.to = at + rec,
                _ => self.dirty.push(Dirty {
                    map: w.map.clone(),
                    from: at,
                    to: at + rec,
                }),
            }
        }
        self.written_seq = seq;
        Ok(seq)
    }

    fn write_seg(&self) -> &Segment {
        self.segs
            .back()
            .expect("a segment queue always has a write segment")
    }

    /// Finish the write segment (cut to its length) and start the next.
    fn roll(&mut self, rec: usize) -> Result<(), SegmentError> {
        let (no, len) = {
            let w = self.write_seg();
            (w.no, w.len)
        };
        if len > SEG_HEADER {
            let w = self.write_seg();
            // Only bytes past `len` go: the map stays valid below it, which is all
            // anyone reads. A crash before this leaves zeros that read as the end.
            if let Err(e) = w._file.set_len(len as u64) {
                tracing::warn!(path = %w.path.display(), error = %e, "segment queue: cannot cut a finished segment");
            }
        } else {
            // An empty write segment too small for this record: replace it.
            let empty = self.segs.pop_back().expect("write segment");
            let _ = std::fs::remove_file(&empty.path);
        }
        let cap = self.seg_bytes.max(SEG_HEADER + rec);
        let seg = self.new_segment(no + 1, cap)?;
        self.segs.push_back(seg);
        if self.read.0 < self.segs.front().map_or(0, |s| s.no) {
            self.read = (self.segs.front().map_or(0, |s| s.no), SEG_HEADER);
        }
        Ok(())
    }

    /// Bytes the queue holds on disk (written lengths).
    pub fn total_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len as u64).sum()
    }

    /// Drop the oldest segments until `rec` more bytes fit under `max_total`.
    fn enforce_bound(&mut self, rec: usize) -> Result<(), SegmentError> {
        while self.max_total > 0 && self.total_bytes() + rec as u64 > self.max_total {
            if self.segs.len() == 1 {
                if self.write_seg().len == SEG_HEADER {
                    return Ok(()); // nothing left to drop: one record over the bound is kept
                }
                self.roll(rec)?;
            }
            let Some(old) = self.segs.pop_front() else {
                return Ok(());
            };
            let next_first = self.segs.front().map_or(self.next_seq, |s| s.first_seq);
            let lost = next_first.saturating_sub(old.first_seq.max(self.acked + 1));
            self.counters.dropped += lost;
            tracing::warn!(path = %old.path.display(), records = lost, total_dropped = self.counters.dropped, "segment queue: max_total_size reached; oldest segment dropped");
            self.popped.retain(|(_, no, _)| *no != old.no);
            if self.ack_pos.0 <= old.no {
                self.ack_pos = (self.segs.front().map_or(0, |s| s.no), SEG_HEADER);
            }
            if self.read.0 <= old.no {
                self.read = (self.segs.front().map_or(0, |s| s.no), SEG_HEADER);
            }
            self.acked = self.acked.max(next_first.saturating_sub(1));
            self.last_popped = self.last_popped.max(next_first.saturating_sub(1));
            self.commit = Some(self.acked);
            let _ = std::fs::remove_file(&old.path);
        }
        Ok(())
    }

    /// Up to `max_count` records (at least one when any) and about `max_bytes`.
    pub fn pop(&mut self, max_count: usize, max_bytes: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_count.max(1) && (out.is_empty() || bytes < max_bytes) {
            let Some(idx) = self.segs.iter().position(|s| s.no >= self.read.0) else {
                break;
            };
            if self.segs[idx].no != self.read.0 {
                self.read = (self.segs[idx].no, SEG_HEADER);
            }
            let is_write = idx + 1 == self.segs.len();
            let seg = &self.segs[idx];
            match format::read_record(seg.bytes(), self.read.1) {
                Read::Record { seq, payload, next } => {
                    self.read.1 = next;
                    if seq <= self.acked || seq <= self.last_popped {
                        continue;
                    }
                    self.last_popped = seq;
                    bytes += payload.len();
                    out.push(Record {
                        seq,
                        payload: Bytes::copy_from_slice(payload),
                    });
                    self.popped.push_back((seq, seg.no, next));
                }
                Read::End if is_write => break,
                Read::End => self.read = (seg.no + 1, SEG_HEADER),
                Read::Corrupt(why) => {
                    self.counters.corrupt += 1;
                    tracing::error!(path = %seg.path.display(), offset = self.read.1, why, "segment queue: corrupt record; the rest of this segment is skipped");
                    if is_write {
                        break;
                    }
                    self.read = (seg.no + 1, SEG_HEADER);
                }
            }
        }
        self.reclaim();
        out
    }

    /// Everything at or below `seq` is acknowledged by the consumer.
    pub fn ack(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq;
        while self.popped.front().is_some_and(|(s, _, _)| *s <= seq) {
            if let Some((_, no, end)) = self.popped.pop_front() {
                self.ack_pos = (no, end);
            }
        }
        self.commit = Some(seq);
        self.reclaim();
    }

    /// Segments wholly before the first unacknowledged record are deleted (after the
    /// commit that covers them is written: the flusher does both, in that order).
    fn reclaim(&mut self) {
        let first_unacked_no = self.popped.front().map_or(self.read.0, |(_, no, _)| *no);
        while self.segs.len() > 1 && self.segs[0].no < first_unacked_no {
            if let Some(old) = self.segs.pop_front() {
                self.delete.push(old.path.clone());
            }
        }
    }

    /// Records not yet acknowledged (appended - acked).
    pub fn depth(&self) -> u64 {
        self.next_seq.saturating_sub(self.acked + 1)
    }

    pub fn segment_count(&self) -> usize {
        self.segs.len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Test accessor: the write segment's path and first seq.
    pub fn write_segment(&self) -> (PathBuf, u64, usize) {
        let w = self.write_seg();
        (w.path.clone(), w.first_seq, w.len)
    }

    /// The last written span position, to note once synced.
    pub fn write_pos(&self) -> (u64, usize) {
        let w = self.write_seg();
        (w.no, w.len)
    }
}

/// Where a segment's valid records end, and why the scan stopped early, if it did.
fn scan_end(seg: &Segment) -> (usize, Option<&'static str>) {
    let mut at = SEG_HEADER;
    let mut prev: Option<u64> = None;
    loop {
        match format::read_record(seg.bytes(), at) {
            Read::Record { seq, next, .. } => {
                if prev.is_some_and(|p| seq <= p) || (prev.is_none() && seq < seg.first_seq) {
                    return (at, Some("sequence out of order"));
                }
                prev = Some(seq);
                at = next;
            }
            Read::End => return (at, None),
            Read::Corrupt(why) => return (at, Some(why)),
        }
    }
}
