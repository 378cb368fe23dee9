//! `Outbound` with a page read out: the answer comes later than the inputs around
//! it (deliveries, acks, `behind`, a failed read), as it does from the store's
//! reader pool. Unit cases, then a property over random interleavings.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use quay_storage::{Op, QueueEntry};

use super::*;
use crate::codec::QoS;
use crate::message::Message;

fn message(seq: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::from_static(b"t"),
        payload: Bytes::from(format!("m{seq}")),
        qos: QoS::AtLeastOnce,
        retain: false,
        from: Arc::from("pub"),
        publish_ms: 0,
        expiry_ms: 0,
        properties: Default::default(),
    })
}

fn stored(seq: u64) -> Outgoing {
    Outgoing {
        seq: Some(seq),
        msg_id: 100 + seq,
        msg: message(seq),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        resend: false,
        unreferenced: true,
    }
}

/// A QoS 0 delivery to the online session (a persistent session's volatile kind).
fn volatile(n: u64) -> Outgoing {
    Outgoing {
        seq: None,
        qos: QoS::AtMostOnce,
        ..stored(1_000_000 + n)
    }
}

fn page(seqs: impl IntoIterator<Item = u64>) -> Page {
    seqs.into_iter()
        .map(|seq| {
            let entry = QueueEntry {
                msg_id: 100 + seq,
                qos: 1,
                retain: false,
                released: false,
                subscription_ids: vec![],
                inline: None,
            };
            PageEntry {
                msg: Some(message(seq)),
                ..PageEntry::from_entry(seq, entry)
            }
        })
        .collect()
}

fn config(max_inflight: u16, page_size: usize) -> SessionConfig {
    SessionConfig {
        max_inflight,
        retry_interval: Duration::from_secs(30),
        max_mqueue_len: 0,
        page_size,
    }
}

fn loads(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::LoadQueue { from, .. } => Some(*from),
            _ => None,
        })
        .collect()
}

/// Payloads of the first sends (DUP resends left out).
fn sent(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                dup: false, out, ..
            } => Some(String::from_utf8_lossy(&out.msg.payload).into_owned()),
            _ => None,
        })
        .collect()
}

fn loading_from(from: u64) -> Cursor {
    Cursor::Disk {
        from,
        loading: true,
    }
}

#[test]
fn a_page_is_asked_for_once_while_its_read_is_out() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 8));
    assert_eq!(loads(&s.attach(65535, now)), vec![0]);
    let mut later = Vec::new();
    later.extend(s.deliver_stored(stored(0), now));
    later.extend(s.deliver_volatile(volatile(0), now));
    later.extend(s.behind(now));
    later.extend(s.tick(now + Duration::from_secs(60)));
    later.extend(s.on_puback(1, now));
    assert!(loads(&later).is_empty(), "{later:?}");
    assert_eq!(s.cursor(), loading_from(0));
    assert!(!s.is_idle(), "a read is out");
}

#[test]
fn deliveries_during_the_read_follow_a_short_page_once_and_in_order() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(16, 8));
    s.attach(65535, now);
    // The read saw seqs 0..=2; 1 and 2 were also delivered before its answer came,
    // and 3 and 4 were written after it ran.
    let mut out = Vec::new();
    for seq in 1..=4 {
        out.extend(s.deliver_stored(stored(seq), now));
    }
    assert!(sent(&out).is_empty(), "stored ones wait for the page");
    out = s.loaded(0, 8, page(0..=2), now);
    assert_eq!(sent(&out), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(s.cursor(), Cursor::Live { next: 5 });
    // A late duplicate is ignored; the next seq goes out.
    out = s.deliver_stored(stored(4), now);
    out.extend(s.deliver_stored(stored(5), now));
    assert_eq!(sent(&out), ["m5"]);
}

#[test]
fn volatile_deliveries_during_the_read_go_out_at_once() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(16, 8));
    s.attach(65535, now);
    let out = s.deliver_volatile(volatile(7), now);
    assert_eq!(sent(&out), ["m1000007"]);
    let out = s.loaded(0, 8, page(0..2), now);
    assert_eq!(sent(&out), ["m0", "m1"]);
}

#[test]
fn a_gap_after_the_page_is_read_from_the_store() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(16, 8));
    s.attach(65535, now);
    // Seq 3 was never delivered to the mailbox: 4 shows a gap after the page.
    s.deliver_stored(stored(4), now);
    let out = s.loaded(0, 8, page(0..=2), now);
    assert_eq!(sent(&out), ["m0", "m1", "m2"]);
    assert_eq!(loads(&out), vec![3]);
    let out = s.loaded(3, 8, page(3..=4), now);
    assert_eq!(sent(&out), ["m3", "m4"]);
    assert_eq!(s.cursor(), Cursor::Live { next: 5 });
}

#[test]
fn left_out_of_the_mailbox_during_the_read_reads_again() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(16, 8));
    s.attach(65535, now);
    // The writer left seq 3 out of a full mailbox after the read ran.
    assert!(s.behind(now).is_empty());
    let out = s.loaded(0, 8, page(0..=2), now);
    assert_eq!(loads(&out), vec![3], "the short page is not the end");
    let out = s.loaded(3, 8, page([3]), now);
    assert_eq!(sent(&out), ["m3"]);
    assert_eq!(s.cursor(), Cursor::Live { next: 4 });
}

#[test]
fn more_deliveries_than_a_page_during_the_read_are_left_to_the_store() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(16, 4));
    s.attach(65535, now);
    for seq in 0..6 {
        s.deliver_stored(stored(seq), now);
    }
    let out = s.loaded(0, 4, page([0]), now);
    assert_eq!(sent(&out), ["m0"]);
    assert_eq!(loads(&out), vec![1]);
}

#[test]
fn a_failed_read_is_retried_after_a_pause() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 8));
    s.attach(65535, now);
    s.deliver_stored(stored(0), now);
    assert!(s.load_failed(0, now).is_empty());
    let retry = s.next_timeout().expect("a retry is due");
    assert!(retry > now);
    assert!(
        loads(&s.deliver_stored(stored(1), now)).is_empty(),
        "not before the retry"
    );
    assert!(loads(&s.tick(retry - Duration::from_millis(1))).is_empty());
    assert_eq!(loads(&s.tick(retry)), vec![0]);
    let out = s.loaded(0, 8, page(0..=1), retry);
    assert_eq!(sent(&out), ["m0", "m1"]);
    assert_eq!(
        s.next_timeout().map(|t| t > retry),
        Some(true),
        "only the acks' retries"
    );
}

#[test]
fn an_answer_that_is_not_the_read_out_changes_nothing() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 8));
    s.attach(65535, now);
    assert!(s.loaded(5, 8, page([5]), now).is_empty());
    assert!(s.load_failed(5, now).is_empty());
    assert_eq!(s.cursor(), loading_from(0));
    assert_eq!(s.next_timeout(), None);
}

#[test]
fn the_next_page_is_asked_for_when_half_the_page_is_sent() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(2, 8));
    s.attach(65535, now);
    let out = s.loaded(0, 8, page(0..8), now);
    assert!(loads(&out).is_empty(), "6 of 8 still wait");
    let mut asked = Vec::new();
    let mut acked = 0;
    while asked.is_empty() {
        acked += 1;
        asked = loads(&s.on_puback(packet_id_of_seq(acked - 1), now));
    }
    // Window 2: after 3 acks, 5 sent, 3 wait: below half a page.
    assert_eq!((acked, asked), (3, vec![8]));
    assert_eq!(s.pending_len(), 3, "the read runs while these go out");
}

// ---- the property: random interleavings against a simulated store ----

#[derive(Debug, Clone)]
enum Step {
    /// The writer stores the next seq; it reaches the mailbox unless `lost`.
    Write { lost: bool },
    /// The reader thread runs the read that is out (a snapshot of the store).
    Read,
    /// The answer to the read is handled (a failure if `fail`).
    Answer { fail: bool },
    /// A volatile delivery.
    Volatile,
    /// The client acks the oldest in-flight PUBLISH.
    Ack,
    /// The clock moves on (retries).
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..4).prop_map(|l| Step::Write { lost: l == 0 }),
        3 => Just(Step::Read),
        3 => (0u8..10).prop_map(|f| Step::Answer { fail: f == 0 }),
        1 => Just(Step::Volatile),
        4 => Just(Step::Ack),
        1 => Just(Step::Tick),
    ]
}

struct Sim {
    s: Outbound,
    now: Instant,
    /// The store's queue: seqs written and not acked.
    queue: BTreeSet<u64>,
    next_seq: u64,
    /// The mailbox, in order: deliveries (stored or volatile) and read answers.
    mailbox: VecDeque<Input>,
    /// The read out, not yet run: (from, limit).
    out: Option<(u64, usize)>,
    /// Stored seqs first sent, in order; volatile ones counted.
    sent: Vec<u64>,
    volatile_sent: u64,
    volatile_made: u64,
    inflight: VecDeque<u16>,
    by_pid: BTreeMap<u16, u64>,
    behind: bool,
}

enum Input {
    Deliver(Outgoing),
    Answer(u64, usize, Option<Page>),
}

impl Sim {
    fn run(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::LoadQueue { from, limit } => {
                    assert!(self.out.is_none(), "a second read while one is out");
                    self.out = Some((from, limit));
                }
                Action::Publish {
                    packet_id,
                    dup,
                    out,
                } => match (out.seq, packet_id) {
                    (Some(seq), Some(pid)) => {
                        if !dup {
                            self.sent.push(seq);
                        }
                        if !self.by_pid.contains_key(&pid) {
                            self.inflight.push_back(pid);
                        }
                        self.by_pid.insert(pid, seq);
                    }
                    (None, Some(pid)) => {
                        self.volatile_sent += 1;
                        self.inflight.push_back(pid);
                    }
                    _ => self.volatile_sent += 1,
                },
                Action::Store(Op::Ack { seq, .. } | Op::AckUnreferenced { seq, .. }) => {
                    self.queue.remove(&seq);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let actions = match input {
            Input::Deliver(out) if out.seq.is_some() => self.s.deliver_stored(out, self.now),
            Input::Deliver(out) => self.s.deliver_volatile(out, self.now),
            Input::Answer(from, limit, Some(page)) => self.s.loaded(from, limit, page, self.now),
            Input::Answer(from, _, None) => self.s.load_failed(from, self.now),
        };
        self.run(actions);
    }

    /// One turn of the connection: its mailbox, then `behind`.
    fn turn(&mut self) {
        while let Some(input) = self.mailbox.pop_front() {
            self.handle(input);
        }
        if std::mem::take(&mut self.behind) {
            let actions = self.s.behind(self.now);
            self.run(actions);
        }
    }

    fn apply(&mut self, step: &Step, answers: &mut VecDeque<(u64, usize, Option<Page>)>) {
        match step {
            Step::Write { lost } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.queue.insert(seq);
                if *lost {
                    self.behind = true;
                } else {
                    self.mailbox.push_back(Input::Deliver(stored(seq)));
                }
            }
            Step::Read => {
                if let Some((from, limit)) = self.out.take() {
                    let seqs: Vec<u64> = self.queue.range(from..).take(limit).copied().collect();
                    answers.push_back((from, limit, Some(page(seqs))));
                }
            }
            Step::Answer { fail } => {
                if let Some((from, limit, page)) = answers.pop_front() {
                    let page = if *fail { None } else { page };
                    self.mailbox.push_back(Input::Answer(from, limit, page));
                } else if *fail {
                    if let Some((from, limit)) = self.out.take() {
                        self.mailbox.push_back(Input::Answer(from, limit, None));
                    }
                }
            }
            Step::Volatile => {
                self.volatile_made += 1;
                self.mailbox
                    .push_back(Input::Deliver(volatile(self.volatile_made)));
            }
            Step::Ack => {
                if let Some(pid) = self.inflight.pop_front() {
                    self.by_pid.remove(&pid);
                    let actions = self.s.on_puback(pid, self.now);
                    self.run(actions);
                }
            }
            Step::Tick => {
                self.now += Duration::from_millis(150);
                let actions = self.s.tick(self.now);
                self.run(actions);
            }
        }
        self.turn();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the order in which writes, reads, answers, failures and acks come,
    /// every stored seq is sent exactly once (no DUP-less resend), in seq order,
    /// every volatile delivery goes out, and at most one read is ever out.
    #[test]
    fn an_asynchronous_load_loses_nothing_and_sends_nothing_twice(
        steps in proptest::collection::vec(step(), 1..120),
        window in 1u16..6,
        page_size in 1usize..6,
    ) {
        let now = Instant::now();
        let mut sim = Sim {
            s: Outbound::new(Arc::from("c"), true, 0, config(window, page_size)),
            now,
            queue: BTreeSet::new(),
            next_seq: 0,
            mailbox: VecDeque::new(),
            out: None,
            sent: Vec::new(),
            volatile_sent: 0,
            volatile_made: 0,
            inflight: VecDeque::new(),
            by_pid: BTreeMap::new(),
            behind: false,
        };
        let mut answers = VecDeque::new();
        let actions = sim.s.attach(65535, now);
        sim.run(actions);
        for step in &steps {
            sim.apply(step, &mut answers);
        }
        // Drain: run reads, answer them, ack everything, move the clock; bounded.
        for _ in 0..10_000 {
            if sim.queue.is_empty() && sim.out.is_none() && answers.is_empty()
                && sim.volatile_sent == sim.volatile_made {
                break;
            }
            for step in [Step::Read, Step::Answer { fail: false }, Step::Ack, Step::Tick] {
                sim.apply(&step, &mut answers);
            }
        }
        prop_assert!(sim.queue.is_empty(), "left in the store: {:?}", sim.queue);
        let expected: Vec<u64> = (0..sim.next_seq).collect();
        prop_assert_eq!(&sim.sent, &expected, "each stored seq once, in order");
        prop_assert_eq!(sim.volatile_sent, sim.volatile_made);
    }
}
