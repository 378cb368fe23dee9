//! `client.check_acl` for PUBLISH and SUBSCRIBE, in the client's order.
//!
//! With no ACL hook (or only in-memory ones) a packet is decided at once and handled
//! at once: one relaxed load on the hot path. When a hook must ask a backend, the
//! packet is held, and so is every packet after it, so that the client's packets are
//! still handled in the order it sent them (MQTT 4.6). The decision itself is a future
//! the driver runs (`Channel::take_decisions`); its answer comes back as a mailbox event
//! (`ConnEvent::Authorized`), and the held packets are released from the front as their
//! answers are in. Meanwhile the channel keeps delivering, acking and timing out as
//! usual; it takes no more packets once `HELD_MAX` are held.

use std::collections::VecDeque;

use super::{Channel, Close, Now};
use crate::codec::Packet;
use crate::hooks::{Access, AclVerdict, BoxFuture, Decision, HookPoint};

/// Packets held behind a decision above which the channel reads no more.
pub(super) const HELD_MAX: usize = 256;

/// One verdict per topic of a packet (a PUBLISH has one, a SUBSCRIBE one per
/// filter); empty = everything allowed.
pub(crate) type Verdicts = Vec<AclVerdict>; // = what `ConnEvent::Authorized` carries

/// Packets waiting for a decision, or behind one.
#[derive(Default)]
pub(super) struct Held {
    queue: VecDeque<(u64, Packet, Option<Verdicts>)>,
    next_ticket: u64,
    /// Decisions for the driver to run.
    to_run: Vec<(u64, BoxFuture<Verdicts>)>,
}

impl Held {
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Channel {
    /// Decide `packet` now, or hold it (and everything after it) for a hook.
    pub(super) fn authorize(&mut self, packet: Packet, now: Now) -> Result<(), Close> {
        if self.held.is_none()
            && !self.broker.hooks.is_registered(HookPoint::ClientCheckAcl)
            && self.broker.config.access.acl_nomatch_allow
        {
            return self.dispatch(packet, Verdicts::new(), now);
        }
        let decision = self.check_acl(&packet);
        let held = match (&mut self.held, decision) {
            (None, Decision::Ready(verdicts)) => return self.dispatch(packet, verdicts, now),
            (held, decision) => {
                let held = held.get_or_insert_with(Default::default);
                let ticket = held.next_ticket;
                held.next_ticket += 1;
                let verdicts = match decision {
                    Decision::Ready(v) => Some(v),
                    Decision::Pending(fut) => {
                        held.to_run.push((ticket, fut));
                        None
                    }
                };
                held.queue.push_back((ticket, packet, verdicts));
                held
            }
        };
        tracing::debug!(client_id = %self.client_id, held = held.len(), "packet held for an authorization decision");
        Ok(())
    }

    /// The decisions a hook is still making, for the driver to run; each answers with
    /// `ConnEvent::Authorized { ticket, verdicts }`.
    pub fn take_decisions(&mut self) -> Vec<(u64, BoxFuture<Verdicts>)> {
        match &mut self.held {
            Some(held) if !held.to_run.is_empty() => std::mem::take(&mut held.to_run),
            _ => Vec::new(),
        }
    }

    /// A decision is in: handle what it releases, in order.
    pub(super) fn authorized(
        &mut self,
        ticket: u64,
        verdicts: Verdicts,
        now: Now,
    ) -> Result<(), Close> {
        if let Some(held) = &mut self.held {
            if let Some(slot) = held.queue.iter_mut().find(|(t, _, _)| *t == ticket) {
                slot.2 = Some(verdicts);
            }
        }
        self.release_held(now)
    }

    /// Handle the held packets whose decisions are in, in order, up to the first
    /// still waiting (for its decision, or behind a store read: `InputPause`).
    pub(super) fn release_held(&mut self, now: Now) -> Result<(), Close> {
        loop {
            if self.paused_for != super::InputPause::No {
                return Ok(());
            }
            let Some(held) = &mut self.held else {
                return Ok(());
            };
            if !matches!(held.queue.front(), Some((_, _, Some(_)))) {
                return Ok(());
            }
            let Some((_, packet, Some(verdicts))) = held.queue.pop_front() else {
                return Ok(());
            };
            if held.queue.is_empty() {
                self.held = None;
            }
            self.dispatch(packet, verdicts, now)?;
        }
    }

    /// `client.check_acl` for each topic `packet` names.
    fn check_acl(&self, packet: &Packet) -> Decision<Verdicts> {
        let hooks = &self.broker.hooks;
        // `acl_nomatch`: what nobody decided.
        let nomatch = if self.broker.config.access.acl_nomatch_allow {
            AclVerdict::Allow
        } else {
            AclVerdict::Deny
        };
        let Some(info) = self.info_for(HookPoint::ClientCheckAcl) else {
            // No ACL hook: `acl_nomatch` decides every topic.
            let topics = match packet {
                Packet::Publish(_) => 1,
                Packet::Subscribe(s) => s.filters.len(),
                _ => 0,
            };
            return Decision::Ready(match nomatch {
                AclVerdict::Allow => Verdicts::new(),
                AclVerdict::Deny => vec![AclVerdict::Deny; topics],
            });
        };
        let decisions: Vec<Decision<AclVerdict>> = match packet {
            Packet::Publish(p) => {
                let topic = std::str::from_utf8(&p.topic).unwrap_or("");
                match hooks.check_acl(&info, Access::Publish, topic, nomatch) {
                    // The common case allocates nothing: empty verdicts allow all.
                    Decision::Ready(AclVerdict::Allow) => return Decision::Ready(Verdicts::new()),
                    decision => vec![decision],
                }
            }
            Packet::Subscribe(s) => s
                .filters
                .iter()
                .map(|(filter, _)| hooks.check_acl(&info, Access::Subscribe, filter, nomatch))
                .collect(),
            _ => return Decision::Ready(Verdicts::new()),
        };
        if decisions.iter().all(Decision::is_ready) {
            let verdicts = decisions
                .into_iter()
                .filter_map(|d| d.ready().ok())
                .collect();
            return Decision::Ready(verdicts);
        }
        Decision::pending(async move {
            let mut verdicts = Verdicts::with_capacity(decisions.len());
            for d in decisions {
                verdicts.push(d.resolve().await);
            }
            verdicts
        })
    }
}

/// Whether topic `i` of a packet was allowed.
pub(super) fn allowed(verdicts: &Verdicts, i: usize) -> bool {
    verdicts.get(i).is_none_or(|v| *v == AclVerdict::Allow)
}
