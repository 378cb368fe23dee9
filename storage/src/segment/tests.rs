//! The segment queue against a model: random appends, pops, acks, clean reopens,
//! crashes that cut the unsynced tail, and cuts at any byte.
//!
//! Each payload carries a unique counter, so identity survives seq reuse after a cut.
//! Checked after every pop: counters strictly increase within one open (no reorder),
//! each was appended, and one acknowledged before a clean close never returns. At the
//! end, after a clean reopen, every record that was durable, not acknowledged and not
//! cut away comes out (no acked-then-lost).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::format::{self, Read, SEG_HEADER};
use super::{QueueConfig, SegmentQueue};

fn payload(counter: u64, size: usize) -> Vec<u8> {
    let mut p = counter.to_be_bytes().to_vec();
    p.extend(std::iter::repeat_n((counter % 251) as u8, size));
    p
}

fn counter_of(p: &[u8]) -> u64 {
    let mut c = [0u8; 8];
    c.copy_from_slice(&p[..8]);
    u64::from_be_bytes(c)
}

fn cfg(dir: &std::path::Path, seg_bytes: u64) -> QueueConfig {
    QueueConfig {
        dir: Some(dir.to_path_buf()),
        seg_bytes,
        max_total_bytes: 0,
        durable: true,
    }
}

#[derive(Debug, Clone)]
enum Step {
    Append(usize),
    Sync,
    Pop(usize),
    AckAll,
    Reopen,
    /// Crash, then cut the write segment in its unsynced part (fraction of it).
    CrashTorn(f64),
    /// Crash, then cut the write segment at any byte (fraction of its length).
    CrashCutAnywhere(f64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..200).prop_map(Step::Append),
        2 => Just(Step::Sync),
        4 => (1usize..8).prop_map(Step::Pop),
        3 => Just(Step::AckAll),
        1 => Just(Step::Reopen),
        1 => (0.0f64..1.0).prop_map(Step::CrashTorn),
        1 => (0.0f64..1.0).prop_map(Step::CrashCutAnywhere),
    ]
}

/// The counters the write segment's file holds, in order, read with the format's own
/// checks: what survives a cut.
fn surviving(path: &std::path::Path) -> BTreeSet<u64> {
    let buf = std::fs::read(path).unwrap_or_default();
    let mut out = BTreeSet::new();
    if format::decode_segment_header(&buf).is_err() {
        return out;
    }
    let mut at = SEG_HEADER;
    while let Read::Record { payload, next, .. } = format::read_record(&buf, at) {
        out.insert(counter_of(payload));
        at = next;
    }
    out
}

struct Model {
    next_counter: u64,
    /// counter -> seq it was given.
    appended: BTreeMap<u64, u64>,
    durable: BTreeSet<u64>,
    /// Acknowledged and committed by a clean close: must never come back.
    acked_clean: BTreeSet<u64>,
    /// Acknowledged since the last open: committed by a clean close.
    acked: BTreeSet<u64>,
    /// Acknowledged, then a crash: the commit may or may not have been written.
    acked_uncertain: BTreeSet<u64>,
    lost: BTreeSet<u64>,
    popped: Vec<(u64, u64)>,
    last_in_open: Option<u64>,
}

fn run(steps: Vec<Step>, seg_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut q = SegmentQueue::open(&cfg(dir.path(), seg_bytes)).unwrap();
    let mut m = Model {
        next_counter: 0,
        appended: BTreeMap::new(),
        durable: BTreeSet::new(),
        acked_clean: BTreeSet::new(),
        acked: BTreeSet::new(),
        acked_uncertain: BTreeSet::new(),
        lost: BTreeSet::new(),
        popped: Vec::new(),
        last_in_open: None,
    };
    let durable = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    for s in steps {
        match s {
            Step::Append(size) => {
                let c = m.next_counter;
                m.next_counter += 1;
                let d = durable.clone();
                let seq = q
                    .append(
                        &payload(c, size),
                        Some(Box::new(move |ok| {
                            if ok {
                                d.lock().unwrap().insert(c);
                            }
                        })),
                    )
                    .unwrap();
                m.appended.insert(c, seq);
            }
            Step::Sync => assert!(q.sync(Duration::from_secs(10))),
            Step::Pop(n) => {
                for r in q.pop(n, usize::MAX) {
                    let c = counter_of(&r.payload);
                    assert!(m.appended.contains_key(&c), "popped {c}, never appended");
                    assert!(!m.lost.contains(&c), "popped {c}, which was cut away");
                    assert!(
                        !m.acked_clean.contains(&c),
                        "popped {c} again after its ack was committed"
                    );
                    assert!(
                        m.last_in_open.is_none_or(|l| c > l),
                        "reorder: {c} after {:?}",
                        m.last_in_open
                    );
                    assert_eq!(r.payload, payload(c, r.payload.len() - 8));
                    m.last_in_open = Some(c);
                    m.popped.push((c, r.seq));
                }
            }
            Step::AckAll => {
                if let Some((_, seq)) = m.popped.last() {
                    q.ack(*seq);
                    m.acked.extend(m.popped.drain(..).map(|(c, _)| c));
                }
            }
            Step::Reopen => {
                assert!(q.sync(Duration::from_secs(10)));
                drop(q);
                m.acked_clean.extend(std::mem::take(&mut m.acked));
                m.durable.extend(durable.lock().unwrap().iter().copied());
                q = SegmentQueue::open(&cfg(dir.path(), seg_bytes)).unwrap();
                m.popped.clear();
                m.last_in_open = None;
            }
            Step::CrashTorn(f) | Step::CrashCutAnywhere(f) => {
                m.durable.extend(durable.lock().unwrap().iter().copied());
                let (path, first_seq, len, synced) = q.write_segment().unwrap();
                q.crash();
                m.acked_uncertain.extend(std::mem::take(&mut m.acked));
                let from = if matches!(s, Step::CrashTorn(_)) {
                    synced.max(SEG_HEADER)
                } else {
                    0
                };
                let cut = from + ((len.saturating_sub(from)) as f64 * f) as usize;
                let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                file.set_len(cut as u64).unwrap();
                drop(file);
                let kept = surviving(&path);
                for (c, seq) in &m.appended {
                    if *seq >= first_seq && !kept.contains(c) && !m.lost.contains(c) {
                        if matches!(s, Step::CrashTorn(_)) {
                            assert!(
                                !m.durable.contains(c)
                                    || m.acked_clean.contains(c)
                                    || m.acked_uncertain.contains(c),
                                "a cut in the unsynced tail took durable record {c}"
                            );
                        }
                        m.lost.insert(*c);
                    }
                }
                q = SegmentQueue::open(&cfg(dir.path(), seg_bytes)).unwrap();
                m.popped.clear();
                m.last_in_open = None;
            }
        }
    }
    // Drain after a clean reopen: every durable, unacknowledged, surviving record.
    assert!(q.sync(Duration::from_secs(10)));
    drop(q);
    m.acked_clean.extend(std::mem::take(&mut m.acked));
    m.durable.extend(durable.lock().unwrap().iter().copied());
    let q = SegmentQueue::open(&cfg(dir.path(), seg_bytes)).unwrap();
    let mut seen = BTreeSet::new();
    let mut last = None;
    loop {
        let batch = q.pop(64, usize::MAX);
        if batch.is_empty() {
            break;
        }
        for r in batch {
            let c = counter_of(&r.payload);
            assert!(last.is_none_or(|l| c > l), "reorder in the final drain");
            assert!(
                !m.acked_clean.contains(&c),
                "{c} came back after a committed ack"
            );
            last = Some(c);
            seen.insert(c);
        }
    }
    for c in &m.durable {
        if !m.acked_clean.contains(c) && !m.acked_uncertain.contains(c) && !m.lost.contains(c) {
            assert!(seen.contains(c), "durable record {c} lost");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_acked_then_lost_and_no_reorder(steps in prop::collection::vec(step(), 1..120), seg in 200u64..2000) {
        run(steps, seg);
    }
}

#[test]
fn segments_rotate_and_acked_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = SegmentQueue::open(&cfg(dir.path(), 1024)).unwrap();
    for i in 0..100u64 {
        q.append(&payload(i, 100), None).unwrap();
    }
    assert!(q.sync(Duration::from_secs(10)));
    assert!(q.stats().segments > 5, "{:?}", q.stats());
    let files = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count()
    };
    assert_eq!(files(), q.stats().segments);
    let all = q.pop(1000, usize::MAX);
    assert_eq!(all.len(), 100);
    q.ack(all.last().unwrap().seq);
    assert!(q.sync(Duration::from_secs(10)));
    assert_eq!(q.stats().segments, 1);
    assert_eq!(files(), 1);
    assert_eq!(q.stats().records, 0);
}

#[test]
fn queued_bytes_count_only_unacknowledged_records_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rec = format::record_len(8 + 100) as u64;
    {
        let q = SegmentQueue::open(&cfg(dir.path(), 1024)).unwrap();
        for i in 0..30u64 {
            q.append(&payload(i, 100), None).unwrap();
        }
        assert_eq!(q.stats().bytes, 30 * rec);
        let got = q.pop(12, usize::MAX);
        q.ack(got[11].seq);
        assert_eq!(q.stats().bytes, 18 * rec);
        assert!(q.sync(Duration::from_secs(10)));
    }
    let q = SegmentQueue::open(&cfg(dir.path(), 1024)).unwrap();
    assert_eq!(q.stats().records, 18);
    assert_eq!(q.stats().bytes, 18 * rec);
    let rest = q.pop(100, usize::MAX);
    q.ack(rest.last().unwrap().seq);
    assert_eq!(q.stats().bytes, 0);
}

#[test]
fn a_durable_append_completes_after_the_sync() {
    let dir = tempfile::tempdir().unwrap();
    let q = SegmentQueue::open(&cfg(dir.path(), 1 << 20)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..50u64 {
        let tx = tx.clone();
        q.append(
            &payload(i, 10),
            Some(Box::new(move |ok| tx.send((i, ok)).unwrap())),
        )
        .unwrap();
    }
    let got: Vec<_> = (0..50)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap())
        .collect();
    assert!(got.iter().all(|(_, ok)| *ok));
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>(),
        "completed in append order"
    );
}

#[test]
fn max_total_size_drops_the_oldest_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), 1024);
    c.max_total_bytes = 4096;
    let q = SegmentQueue::open(&c).unwrap();
    for i in 0..200u64 {
        q.append(&payload(i, 100), None).unwrap();
    }
    let st = q.stats();
    assert!(st.bytes <= 4096, "{st:?}");
    assert!(st.dropped > 150, "{st:?}");
    let left = q.pop(1000, usize::MAX);
    assert_eq!(
        left.len() as u64 + st.dropped,
        200,
        "every record is either kept or counted as dropped"
    );
    let counters: Vec<u64> = left.iter().map(|r| counter_of(&r.payload)).collect();
    assert_eq!(
        counters,
        (200 - left.len() as u64..200).collect::<Vec<_>>(),
        "the newest are kept, in order"
    );
}

#[test]
fn memory_mode_is_bounded_and_ordered() {
    let q = SegmentQueue::open(&QueueConfig {
        dir: None,
        seg_bytes: 0,
        max_total_bytes: 1000,
        durable: true,
    })
    .unwrap();
    for i in 0..100u64 {
        q.append(&payload(i, 92), None).unwrap();
    }
    assert_eq!(q.stats().dropped, 90);
    let a = q.pop(3, usize::MAX);
    assert_eq!(
        a.iter().map(|r| counter_of(&r.payload)).collect::<Vec<_>>(),
        vec![90, 91, 92]
    );
    q.ack(a[1].seq);
    assert_eq!(q.stats().records, 8);
    let b = q.pop(100, usize::MAX);
    assert_eq!(
        counter_of(&b[0].payload),
        93,
        "popped-unacked records are not handed out twice"
    );
}

#[test]
fn a_corrupt_middle_segment_is_skipped_and_the_rest_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = SegmentQueue::open(&cfg(dir.path(), 1024)).unwrap();
        for i in 0..40u64 {
            q.append(&payload(i, 100), None).unwrap();
        }
        assert!(q.sync(Duration::from_secs(10)));
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3);
    // Flip a byte in the second record of the second segment.
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[SEG_HEADER + format::record_len(108) + 20] ^= 0xff;
    std::fs::write(&segs[1], &bytes).unwrap();
    let q = SegmentQueue::open(&cfg(dir.path(), 1024)).unwrap();
    let mut got = Vec::new();
    loop {
        let b = q.pop(16, usize::MAX);
        if b.is_empty() {
            break;
        }
        got.extend(b.iter().map(|r| counter_of(&r.payload)));
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        *got.last().unwrap(),
        39,
        "the segments after the corrupt one are served"
    );
    assert!(
        got.len() < 40 && got.len() >= 30,
        "only the rest of the corrupt segment is skipped: {got:?}"
    );
    assert_eq!(q.stats().corrupt, 1);
}
