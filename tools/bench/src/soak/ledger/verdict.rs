//! The end of a run: the checker's figures from everything the ledger recorded, and
//! examples of each failure (per subscriber, and messages no session got) for stderr.

use std::collections::HashMap;
use std::time::Instant;

use super::{Ledger, MsgId, Owed, Sample, SubscriberLog, SAMPLES_KEPT};

/// How many of its earliest lost messages the report shows for each subscriber.
const LOST_SAMPLES_PER_SUBSCRIBER: usize = 3;

/// The checker's figures at the end of a run (see the module doc for each word).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub published: u64,
    pub acked: u64,
    pub refused: u64,
    pub unacked: u64,
    /// Distinct (subscriber, message) deliveries.
    pub delivered: u64,
    pub owed: u64,
    pub lost: u64,
    pub forfeited: u64,
    pub ambiguous: u64,
    pub qos1_duplicates: u64,
    pub qos2_duplicates: u64,
    pub stale: u64,
}

impl Ledger {
    /// The figures, and examples of what failed.
    pub fn check(&self) -> (Verdict, Vec<Sample>) {
        let mut v = Verdict {
            qos1_duplicates: self.qos1_duplicates,
            qos2_duplicates: self.qos2_duplicates,
            stale: self.stale,
            ..Verdict::default()
        };
        for m in self.messages.iter().flatten() {
            v.published += 1;
            match (m.refused, m.acked) {
                (true, _) => v.refused += 1,
                (false, Some(_)) => v.acked += 1,
                (false, None) => v.unacked += 1,
            }
        }
        let mut samples = self.samples.clone();
        // Per message: (lost somewhere, delivered to someone it was owed to).
        let mut per_message: HashMap<MsgId, (bool, bool)> = HashMap::new();
        for log in &self.subscribers {
            v.delivered += log.deliveries.len() as u64;
            let mut owed = 0u64;
            let mut lost: Vec<(Instant, MsgId, usize)> = Vec::new();
            self.for_each_match(log, |id, verdict| match verdict {
                Owed::To { incarnation, ended } => {
                    owed += 1;
                    let delivered = log.deliveries.contains_key(&id);
                    let entry = per_message.entry(id).or_default();
                    entry.1 |= delivered;
                    if delivered {
                        return;
                    }
                    if ended {
                        v.forfeited += 1;
                        return;
                    }
                    entry.0 = true;
                    if let Some(acked) = self.message(id).and_then(|m| m.acked) {
                        lost.push((acked, id, incarnation));
                    }
                }
                Owed::Ambiguous => v.ambiguous += 1,
                Owed::No => {}
            });
            v.owed += owed;
            v.lost += lost.len() as u64;
            lost.sort_unstable();
            if let (Some(first), Some(last)) = (lost.first(), lost.last()) {
                let detail = format!(
                    "{} of {owed} owed, acked between {} and {}",
                    lost.len(),
                    self.at(first.0),
                    self.at(last.0)
                );
                samples.push(Sample {
                    kind: "lost_total",
                    client: log.name.clone(),
                    msg: None,
                    detail,
                });
            }
            for (_, id, incarnation) in lost.iter().take(LOST_SAMPLES_PER_SUBSCRIBER) {
                samples.push(self.lost_sample(log, *id, *incarnation));
            }
        }
        // A message lost wherever it was owed was never routed, or lost with its log
        // entry; one lost in some sessions only was lost by those sessions.
        let mut nowhere: Vec<MsgId> = per_message
            .iter()
            .filter(|(_, (lost, delivered))| *lost && !*delivered)
            .map(|(id, _)| *id)
            .collect();
        nowhere.sort_unstable_by_key(|id| self.message(*id).and_then(|m| m.acked));
        if !nowhere.is_empty() {
            samples.push(Sample {
                kind: "lost_everywhere",
                client: "all subscribers".into(),
                msg: None,
                detail: format!(
                    "{} messages were delivered to none of the sessions owed them",
                    nowhere.len()
                ),
            });
        }
        for id in nowhere.iter().take(SAMPLES_KEPT) {
            if let Some(m) = self.message(*id) {
                let detail = format!(
                    "QoS {} on soak/{}, sent {} acked {}",
                    m.qos as u8,
                    m.topic,
                    self.at(m.sent),
                    m.acked.map_or("-".to_string(), |t| self.at(t)),
                );
                samples.push(Sample {
                    kind: "lost_everywhere",
                    client: format!("publisher {}", id.publisher),
                    msg: Some(*id),
                    detail,
                });
            }
        }
        (v, samples)
    }

    fn lost_sample(&self, log: &SubscriberLog, id: MsgId, incarnation: usize) -> Sample {
        let e = &log.incarnations[incarnation];
        let stamp = |t: Option<Instant>| t.map_or("-".to_string(), |t| self.at(t));
        let detail = match self.message(id) {
            Some(m) => format!(
                "QoS {} on soak/{}, sent {} acked {}; incarnation {incarnation} subscribed {}",
                m.qos as u8,
                m.topic,
                self.at(m.sent),
                stamp(m.acked),
                stamp(e.suback),
            ),
            None => String::new(),
        };
        Sample {
            kind: "lost",
            client: log.name.clone(),
            msg: Some(id),
            detail,
        }
    }
}
