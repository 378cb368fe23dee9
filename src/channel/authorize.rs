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

use super::acl_cache::AclCache;
use super::{Channel, Close, Now};
use crate::codec::Packet;
use crate::hooks::{Access, AclVerdict, BoxFuture, Decision, HookPoint};

/// Packets held behind a decision above which the channel reads no more.
pub(super) const HELD_MAX: usize = 256;

/// One verdict per topic of a packet (a PUBLISH has one, a SUBSCRIBE one per
/// filter); empty = everything allowed.
pub(crate) type Verdicts = Vec<AclVerdict>; // = what `ConnEvent::Authorized` carries

/// A client's ACL state beyond the fast path (boxed in the channel: most clients never
/// need it): packets waiting for a decision or behind one, and the answer cache.
#[derive(Default)]
pub(super) struct AclState {
    /// `(ticket, packet, verdicts once known, the ACL generation it was asked under)`.
    queue: VecDeque<(u64, Packet, Option<Verdicts>, u64)>,
    next_ticket: u64,
    /// Decisions for the driver to run.
    to_run: Vec<(u64, BoxFuture<Verdicts>)>,
    /// Recent answers (`enable_acl_cache`), once asked any; dropped at hibernation.
    pub cache: Option<AclCache>,
}

impl AclState {
    /// Packets held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

impl Channel {
    /// Decide `packet` now, or hold it (and everything after it) for a hook.
    pub(super) fn authorize(&mut self, packet: Packet, now: Now) -> Result<(), Close> {
        if !self.holding()
            && !self
                .site
                .broker
                .hooks
                .is_registered(HookPoint::ClientCheckAcl)
            && self.site.broker.config.access.acl_nomatch_allow
        {
            return self.dispatch(packet, Verdicts::new(), now);
        }
        let generation = self.site.broker.hooks.generation(HookPoint::ClientCheckAcl);
        let decision = self.check_acl(&packet, generation, now);
        let decision = match decision {
            Decision::Ready(verdicts) if !self.holding() => {
                return self.dispatch(packet, verdicts, now)
            }
            decision => decision,
        };
        let held = self.acl.get_or_insert_with(Default::default);
        let ticket = held.next_ticket;
        held.next_ticket += 1;
        let verdicts = match decision {
            Decision::Ready(v) => Some(v),
            Decision::Pending(fut) => {
                held.to_run.push((ticket, fut));
                None
            }
        };
        held.queue.push_back((ticket, packet, verdicts, generation));
        tracing::debug!(client_id = %self.handle.client_id, held = held.len(), "packet held for an authorization decision");
        Ok(())
    }

    /// The decisions a hook is still making, for the driver to run; each answers with
    /// `ConnEvent::Authorized { ticket, verdicts }`.
    pub fn take_decisions(&mut self) -> Vec<(u64, BoxFuture<Verdicts>)> {
        match &mut self.acl {
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
        if let Some(held) = &mut self.acl {
            if let Some(slot) = held.queue.iter_mut().find(|(t, ..)| *t == ticket) {
                if let Some(cfg) = self.site.broker.config.access.acl_cache {
                    let cache = held.cache.get_or_insert_with(|| AclCache::new(slot.3));
                    for (i, (access, topic)) in topics(&slot.1).enumerate() {
                        let v = if allowed(&verdicts, i) {
                            AclVerdict::Allow
                        } else {
                            AclVerdict::Deny
                        };
                        cache.put(slot.3, access, topic, v, now.at, cfg.max_size);
                    }
                }
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
            let Some(held) = &mut self.acl else {
                return Ok(());
            };
            if !matches!(held.queue.front(), Some((_, _, Some(_), _))) {
                return Ok(());
            }
            let Some((_, packet, Some(verdicts), _)) = held.queue.pop_front() else {
                return Ok(());
            };
            if held.queue.is_empty() && held.cache.is_none() {
                self.acl = None;
            }
            self.dispatch(packet, verdicts, now)?;
        }
    }

    /// `client.check_acl` for each topic `packet` names, through this client's ACL
    /// cache when it is on; `generation` is the chain's, read before asking it.
    fn check_acl(&mut self, packet: &Packet, generation: u64, now: Now) -> Decision<Verdicts> {
        let hooks = &self.site.broker.hooks;
        // `acl_nomatch`: what nobody decided.
        let nomatch = if self.site.broker.config.access.acl_nomatch_allow {
            AclVerdict::Allow
        } else {
            AclVerdict::Deny
        };
        let Some(info) = self.info_for(HookPoint::ClientCheckAcl) else {
            // No ACL hook: `acl_nomatch` decides every topic.
            return Decision::Ready(match nomatch {
                AclVerdict::Allow => Verdicts::new(),
                AclVerdict::Deny => vec![AclVerdict::Deny; topics(packet).count()],
            });
        };
        // A superuser is allowed by the chain at once: nothing worth caching.
        let cache_cfg = self
            .site
            .broker
            .config
            .access
            .acl_cache
            .filter(|_| !info.is_superuser);
        let acl = &mut self.acl;
        let mut ask = |access: Access, topic: &str| -> Decision<AclVerdict> {
            let Some(cfg) = cache_cfg else {
                return hooks.check_acl(&info, access, topic, nomatch);
            };
            let cache = acl
                .get_or_insert_with(Default::default)
                .cache
                .get_or_insert_with(|| AclCache::new(generation));
            if let Some(v) = cache.get(generation, access, topic, now.at, cfg.ttl) {
                return Decision::Ready(v);
            }
            let decision = hooks.check_acl(&info, access, topic, nomatch);
            if let Decision::Ready(v) = decision {
                cache.put(generation, access, topic, v, now.at, cfg.max_size);
            }
            decision
        };
        let decisions: Vec<Decision<AclVerdict>> = match packet {
            Packet::Publish(_) => {
                let (access, topic) = topics(packet).next().unwrap_or((Access::Publish, ""));
                match ask(access, topic) {
                    // The common case allocates nothing: empty verdicts allow all.
                    Decision::Ready(AclVerdict::Allow) => return Decision::Ready(Verdicts::new()),
                    decision => vec![decision],
                }
            }
            Packet::Subscribe(_) => topics(packet).map(|(a, t)| ask(a, t)).collect(),
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

    /// Packets are held behind a decision.
    pub(super) fn holding(&self) -> bool {
        self.acl.as_ref().is_some_and(|a| !a.queue.is_empty())
    }

    /// Forget the cached answers (`emqx_ctl acl cache-clean <ClientId>`, hibernation).
    pub(super) fn clean_acl_cache(&mut self) {
        if let Some(acl) = &mut self.acl {
            acl.cache = None;
            if acl.queue.is_empty() && acl.to_run.is_empty() {
                self.acl = None;
            }
        }
    }
}

/// The topics a packet asks access to, in order: a PUBLISH's topic name, a
/// SUBSCRIBE's filters as the client sent them (before the mountpoint).
fn topics(packet: &Packet) -> impl Iterator<Item = (Access, &str)> {
    let (publish, filters) = match packet {
        Packet::Publish(p) => (Some(std::str::from_utf8(&p.topic).unwrap_or("")), None),
        Packet::Subscribe(s) => (None, Some(&s.filters)),
        _ => (None, None),
    };
    publish.map(|t| (Access::Publish, t)).into_iter().chain(
        filters
            .into_iter()
            .flatten()
            .map(|(f, _)| (Access::Subscribe, &**f)),
    )
}

/// Whether topic `i` of a packet was allowed.
pub(super) fn allowed(verdicts: &Verdicts, i: usize) -> bool {
    verdicts.get(i).is_none_or(|v| *v == AclVerdict::Allow)
}
