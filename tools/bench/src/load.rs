//! The load loops every scenario is built from: a QoS 0 publisher that writes as fast as
//! the socket takes it, a QoS 1/2 publisher that keeps a window of unacknowledged
//! PUBLISHes in flight, and a subscriber that counts (and acknowledges) deliveries.
//!
//! Each loop is bounded by its message count; the scenario bounds it in time by
//! dropping (aborting) the task. Loops report into a shared `Progress`, never print.

use std::future::Future;
use std::sync::Arc;

use anyhow::{bail, Result};
use quay::codec::{Packet, PubResp, Publish, QoS};
use tokio::task::JoinSet;

use crate::client::{next_packet_id, payload_seq, MqttConn};
use crate::measure::Progress;

/// QoS 0 PUBLISHes encoded per write.
const QOS0_BATCH: u64 = 256;

/// Spawn `work` into `tasks`; an error ends the scenario's wait on `progress`.
pub fn spawn_reporting<F>(tasks: &mut JoinSet<()>, progress: &Arc<Progress>, work: F)
where
    F: Future<Output = Result<()>> + Send + 'static,
{
    let progress = progress.clone();
    tasks.spawn(async move {
        if let Err(e) = work.await {
            progress.fail(&e);
        }
    });
}

/// Closed-loop QoS 0: publishers hold back while too much is published and not yet
/// delivered, so the run measures what the broker sustains without piling up backlog
/// (which a broker may rightly shed: QoS 0 allows it).
#[derive(Clone)]
pub struct Pacing {
    pub delivered: Arc<Progress>,
    /// Deliveries each PUBLISH makes (the number of matching subscribers).
    pub deliveries_per_message: u64,
    /// Messages (all publishers together) that may be published and not yet delivered.
    pub max_ahead: u64,
}

impl Pacing {
    /// Wait until `sent` messages may be on their way.
    async fn allow(&self, sent: u64) {
        let ahead = self.max_ahead * self.deliveries_per_message;
        let needed = (sent * self.deliveries_per_message).saturating_sub(ahead);
        self.delivered.reach(needed).await;
    }
}

/// Publish `count` copies of the QoS 0 `template`, numbered from `first_seq`, in batches.
/// `sent` counts messages handed to the kernel by all publishers; with `pacing`, a
/// batch waits until it would not put more than `max_ahead` undelivered messages out.
pub async fn publish_qos0(
    mut conn: MqttConn,
    template: Publish,
    first_seq: u64,
    count: u64,
    sent: Arc<Progress>,
    pacing: Option<Pacing>,
) -> Result<()> {
    let mut seq = first_seq;
    let end = first_seq + count;
    while seq < end {
        let batch_end = (seq + QOS0_BATCH).min(end);
        if let Some(pacing) = &pacing {
            pacing.allow(sent.count() + (batch_end - seq)).await;
        }
        for s in seq..batch_end {
            conn.queue_publish_seq(&template, None, s)?;
        }
        conn.flush().await?;
        sent.add(batch_end - seq);
        seq = batch_end;
    }
    Ok(())
}

/// Publish `count` QoS 1 or 2 copies of `template` (its QoS decides), numbered from
/// `first_seq`, keeping at most `window` unfinished. `acked` counts finished flows
/// (PUBACK; PUBCOMP after PUBREC and PUBREL for QoS 2). Returns the connection so a
/// caller can go on using it.
pub async fn publish_acked(
    mut conn: MqttConn,
    template: Publish,
    first_seq: u64,
    count: u64,
    window: u64,
    acked: Arc<Progress>,
) -> Result<MqttConn> {
    conn.bulk();
    let mut packet_id = 0u16;
    let (mut sent, mut acks) = (0u64, 0u64);
    while acks < count {
        while sent - acks < window && sent < count {
            packet_id = next_packet_id(packet_id);
            conn.queue_publish_seq(&template, Some(packet_id), first_seq + sent)?;
            sent += 1;
        }
        conn.flush().await?;
        conn.fill().await?;
        let mut n = 0;
        while let Some(packet) = conn.next_buffered()? {
            match (template.qos, packet) {
                (QoS::AtLeastOnce, Packet::PubAck(_)) | (QoS::ExactlyOnce, Packet::PubComp(_)) => {
                    n += 1
                }
                (QoS::ExactlyOnce, Packet::PubRec(r)) => {
                    conn.queue(&Packet::PubRel(PubResp::new(r.packet_id)))?
                }
                (_, other) => bail!("{}: publisher got {}", conn.client_id, other.name()),
            }
        }
        if acks + n > sent {
            bail!("{}: more acknowledgements than PUBLISHes", conn.client_id);
        }
        acks += n;
        acked.add(n);
    }
    Ok(conn)
}

/// How a subscriber counts what it receives.
pub enum Counting {
    /// Every delivery counts; stop after this many.
    All(u64),
    /// Payloads carry sequence numbers `0..n`; only the first delivery of each counts
    /// (repeats go to `Progress::add_duplicates`); stop once all `n` arrived.
    Unique(u64),
}

/// Receive on `conn`, acknowledging QoS 1 (PUBACK) and QoS 2 (PUBREC, then PUBCOMP
/// for each PUBREL) deliveries, until `counting` is satisfied.
pub async fn subscribe_loop(
    mut conn: MqttConn,
    counting: Counting,
    delivered: Arc<Progress>,
) -> Result<()> {
    conn.bulk();
    let (goal, mut seen) = match counting {
        Counting::All(n) => (n, None),
        Counting::Unique(n) => (n, Some(SeqSet::new(n))),
    };
    let mut counted = 0u64;
    while counted < goal {
        conn.fill().await?;
        let (mut fresh, mut repeats) = (0u64, 0u64);
        while let Some(packet) = conn.next_buffered()? {
            let publish = match packet {
                Packet::Publish(publish) => publish,
                Packet::PubRel(r) => {
                    conn.queue(&Packet::PubComp(PubResp::new(r.packet_id)))?;
                    continue;
                }
                other => bail!("{}: subscriber got {}", conn.client_id, other.name()),
            };
            match (publish.qos, publish.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => conn.queue_puback(id)?,
                (QoS::ExactlyOnce, Some(id)) => conn.queue(&Packet::PubRec(PubResp::new(id)))?,
                _ => {}
            }
            match seen.as_mut() {
                None => fresh += 1,
                Some(set) => {
                    let Some(seq) = payload_seq(&publish.payload) else {
                        bail!("{}: payload without a sequence number", conn.client_id);
                    };
                    if !set.contains_seq(seq) {
                        bail!(
                            "{}: sequence number {seq} was never published",
                            conn.client_id
                        );
                    }
                    if set.insert(seq) {
                        fresh += 1;
                    } else {
                        repeats += 1;
                    }
                }
            }
        }
        conn.flush().await?;
        counted += fresh;
        delivered.add(fresh);
        delivered.add_duplicates(repeats);
    }
    Ok(())
}

/// A bitmap of the sequence numbers `0..len` seen so far.
struct SeqSet {
    words: Vec<u64>,
    len: u64,
}

impl SeqSet {
    fn new(len: u64) -> SeqSet {
        SeqSet {
            words: vec![0; len.div_ceil(64) as usize],
            len,
        }
    }

    fn contains_seq(&self, seq: u64) -> bool {
        seq < self.len
    }

    /// True if `seq` was not seen before.
    fn insert(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    #[test]
    fn seq_set_counts_each_number_once() {
        let mut s = SeqSet::new(130);
        assert!(s.insert(0));
        assert!(s.insert(129));
        assert!(!s.insert(129));
        assert!(s.contains_seq(129));
        assert!(!s.contains_seq(130));
    }
}
