//! The on-disk framing of segment files and the commit file (replayq's shape).
//!
//! A segment file starts with a header (magic `QSEG`, format version, the seq of its
//! first record, CRC) and holds records back to back:
//!
//! ```text
//! [0]      version (1)        a zero here means "no more records" (preallocated tail)
//! [1]      magic 0x51
//! [2..6]   payload length, u32 big-endian
//! [6..14]  seq, u64 big-endian (strictly increasing across the queue)
//! [14..18] CRC-32 (crc32fast) of bytes 0..14 and the payload
//! [18..]   payload
//! ```
//!
//! Every read checks the header and the CRC before anything is handed out: a torn
//! write or a flipped bit is found here, never passed on.

pub const REC_VERSION: u8 = 1;
pub const REC_MAGIC: u8 = 0x51;
pub const REC_HEADER: usize = 18;

pub const SEG_MAGIC: &[u8; 4] = b"QSEG";
pub const SEG_VERSION: u8 = 1;
/// magic(4) version(1) pad(3) first_seq(8) crc(4) pad(4).
pub const SEG_HEADER: usize = 24;

pub const COMMIT_MAGIC: &[u8; 4] = b"QCMT";
/// magic(4) acked_seq(8) crc(4).
pub const COMMIT_LEN: usize = 16;

/// What a read found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    /// A whole, checked record; `next` is the offset just past it.
    Record {
        seq: u64,
        payload: &'a [u8],
        next: usize,
    },
    /// Zeros where a header would start: the end of what was written.
    End,
    /// Not a record: a torn write, a short tail, or corruption. Why, for the log.
    Corrupt(&'static str),
}

/// Bytes a record of `payload_len` takes.
pub fn record_len(payload_len: usize) -> usize {
    REC_HEADER + payload_len
}

/// Frame one record into `out` (exactly `record_len(payload.len())` bytes).
pub fn encode_record(out: &mut [u8], seq: u64, payload: &[u8]) {
    debug_assert_eq!(out.len(), record_len(payload.len()));
    out[0] = REC_VERSION;
    out[1] = REC_MAGIC;
    out[2..6].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    out[6..14].copy_from_slice(&seq.to_be_bytes());
    let crc = record_crc(&out[0..14], payload);
    out[14..18].copy_from_slice(&crc.to_be_bytes());
    out[REC_HEADER..].copy_from_slice(payload);
}

fn record_crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// Read the record at `at` in `buf` (a segment's bytes up to where it may hold data).
pub fn read_record(buf: &[u8], at: usize) -> Read<'_> {
    let Some(rest) = buf.get(at..) else {
        return Read::Corrupt("offset past the end");
    };
    if rest.is_empty() {
        return Read::End;
    }
    if rest[0] == 0 {
        // A preallocated, never written tail is all zeros; anything else after a zero
        // version byte is a torn header.
        let probe = &rest[..rest.len().min(REC_HEADER)];
        return if probe.iter().all(|b| *b == 0) {
            Read::End
        } else {
            Read::Corrupt("torn header")
        };
    }
    if rest.len() < REC_HEADER {
        return Read::Corrupt("short header");
    }
    if rest[0] != REC_VERSION || rest[1] != REC_MAGIC {
        return Read::Corrupt("bad version or magic");
    }
    let len = u32::from_be_bytes([rest[2], rest[3], rest[4], rest[5]]) as usize;
    let Some(payload) = rest.get(REC_HEADER..REC_HEADER + len) else {
        return Read::Corrupt("record runs past the end");
    };
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rest[6..14]);
    let stored = u32::from_be_bytes([rest[14], rest[15], rest[16], rest[17]]);
    if record_crc(&rest[0..14], payload) != stored {
        return Read::Corrupt("CRC mismatch");
    }
    Read::Record {
        seq: u64::from_be_bytes(seq),
        payload,
        next: at + REC_HEADER + len,
    }
}

pub fn encode_segment_header(first_seq: u64) -> [u8; SEG_HEADER] {
    let mut h = [0u8; SEG_HEADER];
    h[0..4].copy_from_slice(SEG_MAGIC);
    h[4] = SEG_VERSION;
    h[8..16].copy_from_slice(&first_seq.to_be_bytes());
    let crc = crc32fast::hash(&h[0..16]);
    h[16..20].copy_from_slice(&crc.to_be_bytes());
    h
}

/// The first seq a segment header names, or why it is not a header.
pub fn decode_segment_header(buf: &[u8]) -> Result<u64, &'static str> {
    let h = buf
        .get(..SEG_HEADER)
        .ok_or("file shorter than a segment header")?;
    if &h[0..4] != SEG_MAGIC || h[4] != SEG_VERSION {
        return Err("bad segment magic or version");
    }
    let crc = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
    if crc32fast::hash(&h[0..16]) != crc {
        return Err("segment header CRC mismatch");
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&h[8..16]);
    Ok(u64::from_be_bytes(seq))
}

pub fn encode_commit(acked_seq: u64) -> [u8; COMMIT_LEN] {
    let mut c = [0u8; COMMIT_LEN];
    c[0..4].copy_from_slice(COMMIT_MAGIC);
    c[4..12].copy_from_slice(&acked_seq.to_be_bytes());
    let crc = crc32fast::hash(&c[0..12]);
    c[12..16].copy_from_slice(&crc.to_be_bytes());
    c
}

pub fn decode_commit(buf: &[u8]) -> Result<u64, &'static str> {
    if buf.len() != COMMIT_LEN || &buf[0..4] != COMMIT_MAGIC {
        return Err("bad commit file");
    }
    let crc = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]);
    if crc32fast::hash(&buf[0..12]) != crc {
        return Err("commit file CRC mismatch");
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&buf[4..12]);
    Ok(u64::from_be_bytes(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_every_flipped_byte_is_caught() {
        let payload = b"hello segment";
        let mut buf = vec![0u8; record_len(payload.len()) + 8];
        encode_record(&mut buf[..record_len(payload.len())], 42, payload);
        assert_eq!(
            read_record(&buf, 0),
            Read::Record {
                seq: 42,
                payload,
                next: record_len(payload.len())
            }
        );
        assert_eq!(read_record(&buf, record_len(payload.len())), Read::End);
        for i in 0..record_len(payload.len()) {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                !matches!(read_record(&bad, 0), Read::Record { .. }),
                "flip at {i} not caught"
            );
        }
        for cut in 1..record_len(payload.len()) {
            assert!(matches!(read_record(&buf[..cut], 0), Read::Corrupt(_)));
        }
    }

    #[test]
    fn headers_and_commits_check_their_crc() {
        let h = encode_segment_header(7);
        assert_eq!(decode_segment_header(&h), Ok(7));
        let mut bad = h;
        bad[9] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
        let c = encode_commit(99);
        assert_eq!(decode_commit(&c), Ok(99));
        let mut bad = c;
        bad[5] ^= 1;
        assert!(decode_commit(&bad).is_err());
        assert!(decode_commit(&c[..10]).is_err());
    }
}
