//! The memory-only queue (no `replayq_dir`): the same contract minus the disk.
//! Bounded by `max_total_size`; overflow drops the oldest records, counted.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Record;

pub(super) struct MemoryState {
    max_total: u64,
    /// Not yet acknowledged, in seq order; `read` indexes the next to pop.
    records: VecDeque<Record>,
    read: usize,
    bytes: u64,
    next_seq: u64,
    pub dropped: u64,
}

impl MemoryState {
    pub fn new(max_total: u64) -> MemoryState {
        MemoryState {
            max_total,
            records: VecDeque::new(),
            read: 0,
            bytes: 0,
            next_seq: 1,
            dropped: 0,
        }
    }

    pub fn append(&mut self, payload: &[u8]) -> u64 {
        let len = payload.len() as u64;
        while self.max_total > 0 && self.bytes + len > self.max_total {
            let Some(old) = self.records.pop_front() else {
                break;
            };
            self.bytes -= old.payload.len() as u64;
            self.read = self.read.saturating_sub(1);
            self.dropped += 1;
            tracing::warn!(
                seq = old.seq,
                total_dropped = self.dropped,
                "memory queue: max_total_size reached; oldest record dropped"
            );
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += len;
        self.records.push_back(Record {
            seq,
            payload: Bytes::copy_from_slice(payload),
        });
        seq
    }

    pub fn pop(&mut self, max_count: usize, max_bytes: usize) -> Vec<Record> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_count.max(1) && (out.is_empty() || bytes < max_bytes) {
            let Some(r) = self.records.get(self.read) else {
                break;
            };
            bytes += r.payload.len();
            out.push(r.clone());
            self.read += 1;
        }
        out
    }

    pub fn ack(&mut self, seq: u64) {
        while self.records.front().is_some_and(|r| r.seq <= seq) {
            if let Some(r) = self.records.pop_front() {
                self.bytes -= r.payload.len() as u64;
                self.read = self.read.saturating_sub(1);
            }
        }
    }

    pub fn depth(&self) -> u64 {
        self.records.len() as u64
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}
