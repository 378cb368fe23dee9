//! The MQTT bridge's driver: the one task per running bridge that owns its
//! connection to the remote broker.
//!
//! Connect (TCP or TLS, `remote.rs`), subscribe the remote subscriptions (v5: No
//! Local, so what we forward does not come back), send again what the window still
//! holds from the last connection, then loop: fill the window from the cache, gather
//! the PUBLISHes into one write, and feed the remote's acknowledgements to the window
//! (`window.rs`), which says how far the cache may forget. Anything that goes wrong
//! ends the connection; the next one starts after `reconnect_interval`. What the
//! window holds survives that, and a stop and start of the bridge.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::remote::{Failure, Remote};
use super::window::{AckOutcome, InflightWindow, SUBSCRIBE_ID};
use super::{Bridge, Status};
use crate::codec::{Packet, Properties, PubResp, QoS, Subscribe, SubscriptionOptions};
use crate::message::now_ms;

/// Run `bridge` until `stop` changes.
pub async fn run(bridge: Arc<Bridge>, mut stop: watch::Receiver<bool>) {
    // The window is held for the task's life: a task started while the previous one
    // is still ending waits here, so one connection runs at a time.
    let mut window = tokio::select! {
        w = bridge.window.lock() => w,
        _ = stop.changed() => return,
    };
    let super::config::Address::Mqtt(addr) = bridge.config.address.clone() else {
        return;
    };
    loop {
        bridge.set_status(Status::Connecting);
        let ended = tokio::select! {
            r = session(&bridge, &addr, &mut window) => r,
            _ = stop.changed() => return,
        };
        let Err(why) = ended;
        bridge.set_status(Status::Disconnected);
        bridge.failed(&why);
        tokio::select! {
            _ = tokio::time::sleep(bridge.config.reconnect_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn session(
    bridge: &Arc<Bridge>,
    addr: &str,
    window: &mut InflightWindow,
) -> Result<Infallible, Failure> {
    let cfg = &bridge.config;
    let mut remote = Remote::connect(cfg, addr, bridge.tls.as_ref()).await?;
    bridge.connected(addr);
    let subs = bridge.subscriptions();
    if !subs.is_empty() {
        let filters = subs
            .into_iter()
            .map(|(t, qos)| {
                let options = SubscriptionOptions {
                    qos,
                    no_local: true,
                    ..Default::default()
                };
                (t, options)
            })
            .collect();
        remote.queue(&Packet::Subscribe(Subscribe {
            packet_id: SUBSCRIBE_ID,
            properties: Properties::default(),
            filters,
        }))?;
    }
    for p in window.resend(now_ms()) {
        if !remote.queue(&p)? {
            return Err(format!("a {} is larger than the remote accepts", p.name()));
        }
    }
    remote.flush().await?;
    let v3 = !cfg.proto_ver.is_v5();
    let retry_ms = if v3 {
        cfg.retry_interval.as_millis() as u64
    } else {
        0
    };
    let keepalive = remote.limits.keepalive;
    let mut last_sent = Instant::now();
    let mut last_heard = Instant::now();
    // QoS 2 PUBLISHes from the remote stored here and waiting for PUBREL: a resent
    // one is acknowledged again, not published twice.
    let mut awaiting_rel = std::collections::HashSet::new();
    loop {
        if fill(bridge, &mut remote, window).await? | remote.flush().await? {
            last_sent = Instant::now();
        }
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if !keepalive.is_zero() {
            wake = wake
                .min(last_sent + keepalive / 2)
                .min(last_heard + keepalive * 3 / 2);
        }
        if let Some(due) = window.next_due_ms(retry_ms).filter(|_| retry_ms > 0) {
            let in_ms = due.saturating_sub(now_ms());
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        let room = window.room(remote.limits.receive_max) > 0;
        tokio::select! {
            p = remote.recv() => {
                last_heard = Instant::now();
                let mut next = Some(p?);
                // Everything already read, before filling again.
                while let Some(p) = next {
                    handle(bridge, &mut remote, window, &mut awaiting_rel, p).await?;
                    next = remote.try_next()?;
                }
            }
            _ = bridge.appended.notified(), if room => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if !keepalive.is_zero() {
            if now >= last_heard + keepalive * 3 / 2 {
                return Err(format!(
                    "keepalive: nothing from the remote for {}s",
                    (keepalive * 3 / 2).as_secs()
                ));
            }
            if now >= last_sent + keepalive / 2 {
                remote.queue(&Packet::PingReq)?;
                last_sent = now;
            }
        }
        if retry_ms > 0 {
            let again = window.due(now_ms(), retry_ms);
            bridge.counters.add_retried(again.len() as u64);
            for p in again {
                remote.queue(&p)?;
            }
        }
    }
}

/// Move records from the cache into the window while it has room, flushing as the
/// write buffer fills. Whether anything was written.
async fn fill(
    bridge: &Arc<Bridge>,
    remote: &mut Remote,
    window: &mut InflightWindow,
) -> Result<bool, Failure> {
    let cfg = &bridge.config;
    let mut wrote = false;
    loop {
        let room = window.room(remote.limits.receive_max);
        if room == 0 {
            return Ok(wrote);
        }
        let batch = bridge.queue.pop(
            room.min(cfg.batch_count_limit),
            cfg.batch_bytes_limit.min(usize::MAX as u64) as usize,
        );
        if batch.is_empty() {
            return Ok(wrote);
        }
        let now = now_ms();
        for r in batch {
            let Some(out) = bridge.outbound(&r, now) else {
                window.skip(r.seq);
                continue;
            };
            let p = window.push(r.seq, out, now);
            if !remote.queue(&p)? {
                window.abandon_last();
                bridge.counters.add_dropped(1);
                bridge.too_large(r.seq, remote.limits.max_packet);
            }
        }
        if let Some(seq) = window.ackable() {
            bridge.queue.ack(seq);
        }
        if remote.full() {
            wrote |= remote.flush().await?;
        }
    }
}

async fn handle(
    bridge: &Arc<Bridge>,
    remote: &mut Remote,
    window: &mut InflightWindow,
    awaiting_rel: &mut std::collections::HashSet<u16>,
    p: Packet,
) -> Result<(), Failure> {
    let outcome = match p {
        // v5: a reason code of 0x80 or more is the remote refusing the message (an
        // ACL, a quota): it is done with, counted as dropped, never retried.
        Packet::PubAck(a) if a.reason.is_error() => {
            bridge.refused(a.reason);
            window.on_refused(a.packet_id)
        }
        Packet::PubAck(a) => window.on_puback(a.packet_id),
        Packet::PubRec(a) if a.reason.is_error() => {
            bridge.refused(a.reason);
            window.on_refused(a.packet_id)
        }
        Packet::PubRec(a) => window.on_pubrec(a.packet_id, now_ms()),
        Packet::PubComp(a) => window.on_pubcomp(a.packet_id),
        Packet::Publish(p) => {
            let id = p.packet_id;
            let qos = p.qos;
            if qos == QoS::ExactlyOnce && id.is_some_and(|id| awaiting_rel.contains(&id)) {
                AckOutcome::Reply(Box::new(Packet::PubRec(PubResp::new(id.unwrap_or(0)))))
            } else {
                // Acknowledged only once stored here (durable for persistent
                // subscribers): the remote keeps it until then.
                if !bridge.receive(p).await {
                    return Err("a message from the remote could not be stored".into());
                }
                match (qos, id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        AckOutcome::Reply(Box::new(Packet::PubAck(PubResp::new(id))))
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        awaiting_rel.insert(id);
                        AckOutcome::Reply(Box::new(Packet::PubRec(PubResp::new(id))))
                    }
                    _ => AckOutcome::Unknown,
                }
            }
        }
        Packet::PubRel(r) => {
            awaiting_rel.remove(&r.packet_id);
            AckOutcome::Reply(Box::new(Packet::PubComp(PubResp::new(r.packet_id))))
        }
        Packet::SubAck(a) => {
            bridge.subscribed(&a.reasons);
            AckOutcome::Unknown
        }
        Packet::PingResp | Packet::UnsubAck(_) => AckOutcome::Unknown,
        Packet::Disconnect(d) => {
            let why = d.properties.reason_string.clone().unwrap_or_default();
            return Err(format!("the remote sent DISCONNECT {:?} {why}", d.reason));
        }
        p => return Err(format!("unexpected {} from the remote", p.name())),
    };
    match outcome {
        AckOutcome::Reply(p) => {
            remote.queue(&p)?;
        }
        AckOutcome::Progress | AckOutcome::Refused => {
            if matches!(outcome, AckOutcome::Progress) {
                bridge.counters.add_forwarded(1);
            }
            if let Some(seq) = window.ackable() {
                bridge.queue.ack(seq);
            }
        }
        AckOutcome::Unknown => {}
    }
    Ok(())
}
