//! One rule per test, deterministic: the harness's channels driven by hand.

use std::time::Duration;

use bytes::Bytes;

use super::harness::{Conn, Sim};
use crate::channel::Close;
use crate::codec::{
    Connect, LastWill, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions,
};

fn connect(id: &str, expiry_s: u32) -> Connect {
    let properties = Properties {
        session_expiry_interval: Some(expiry_s),
        ..Properties::default()
    };
    Connect {
        protocol: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 0,
        properties,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}

fn open(sim: &mut Sim, connect: Connect) -> (Conn, Vec<Packet>) {
    let (opened, _) = sim.connect(connect, None);
    let Ok(mut conn) = opened else {
        panic!("refused: {opened:?}", opened = opened.err())
    };
    let output = conn.take_output(sim.now());
    (conn, output)
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::from(topic.to_owned()),
        packet_id,
        properties,
        payload: Bytes::from_static(b"x"),
    })
}

fn subscribe(conn: &mut Conn, sim: &Sim, filter: &str, qos: QoS) {
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(filter.into(), options)],
    });
    conn.send(&packet, sim.now()).expect("SUBSCRIBE taken");
    let out = settle(sim, &mut [&mut *conn]);
    assert!(matches!(out[0].as_slice(), [Packet::SubAck(_)]), "{out:?}");
}

/// Mailbox events and output until nothing moves across two store barriers.
fn settle(sim: &Sim, conns: &mut [&mut Conn]) -> Vec<Vec<Packet>> {
    let mut out = vec![Vec::new(); conns.len()];
    let mut quiet = 0;
    for _ in 0..5_000 {
        let mut moved = false;
        for (i, conn) in conns.iter_mut().enumerate() {
            moved |= conn.take_mailbox(sim.now()).expect("still open");
            let packets = conn.take_output(sim.now());
            moved |= !packets.is_empty();
            out[i].extend(packets);
        }
        if moved {
            quiet = 0;
            continue;
        }
        // Reads come from the reader pool: wait for them too (bounded by the loop).
        if conns.iter().any(|c| c.awaiting_store()) {
            std::thread::sleep(Duration::from_millis(1));
        } else if quiet > 1 {
            return out;
        }
        sim.barrier();
        quiet += 1;
    }
    panic!("did not settle");
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn one_publish_above_receive_maximum_closes_with_0x93() {
    let mut sim = Sim::new(|z| z.max_inflight = 2);
    let (mut conn, out) = open(&mut sim, connect("p", 0));
    let Some(Packet::ConnAck(ack)) = out.first() else {
        panic!("{out:?}")
    };
    assert_eq!(ack.properties.receive_maximum, Some(2));
    let now = sim.now();
    // Sent back to back: none is acknowledged before the third arrives.
    for id in 1..=2 {
        let p = publish("t", QoS::AtLeastOnce, Some(id), Properties::default());
        conn.send(&p, now).expect("within Receive Maximum");
    }
    let third = publish("t", QoS::ExactlyOnce, Some(3), Properties::default());
    let close = conn
        .send(&third, now)
        .expect_err("one above Receive Maximum");
    assert_eq!(close, Close::Error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
    let ended = conn.finish(close, now);
    let Some(Packet::Disconnect(d)) = ended.output.last() else {
        panic!("{:?}", ended.output)
    };
    assert_eq!(d.reason, ReasonCode(0x93));
}

#[test]
fn acknowledged_publishes_free_their_receive_maximum_slots() {
    let mut sim = Sim::new(|z| z.max_inflight = 2);
    let (mut conn, _) = open(&mut sim, connect("p", 0));
    for id in 1..=6 {
        let p = publish("t", QoS::AtLeastOnce, Some(id), Properties::default());
        conn.send(&p, sim.now()).expect("acks came in between");
        let out = settle(&sim, &mut [&mut conn]);
        assert!(matches!(out[0].as_slice(), [Packet::PubAck(a)] if a.packet_id == id));
    }
}

#[test]
fn topic_alias_0_closes_with_0x94_and_an_unset_alias_with_0x82() {
    let mut sim = Sim::new(|_| {});
    for (alias, topic, reason) in [(0, "t", 0x94), (7, "", 0x82)] {
        let (mut conn, _) = open(&mut sim, connect("p", 0));
        let props = Properties {
            topic_alias: Some(alias),
            ..Properties::default()
        };
        let close = conn
            .send(&publish(topic, QoS::AtMostOnce, None, props), sim.now())
            .expect_err("refused");
        assert_eq!(close, Close::Error(ReasonCode(reason)));
        let ended = conn.finish(close, sim.now());
        assert!(
            matches!(ended.output.last(), Some(Packet::Disconnect(d)) if d.reason == ReasonCode(reason)),
            "{:?}",
            ended.output
        );
    }
}

#[test]
fn a_resent_qos2_publish_is_delivered_once() {
    let mut sim = Sim::new(|_| {});
    let (mut sub, _) = open(&mut sim, connect("s", 0));
    subscribe(&mut sub, &sim, "t/q2", QoS::ExactlyOnce);
    let (mut publ, _) = open(&mut sim, connect("p", 60));
    let mut p = publish("t/q2", QoS::ExactlyOnce, Some(7), Properties::default());
    publ.send(&p, sim.now()).expect("PUBLISH");
    let out = settle(&sim, &mut [&mut publ, &mut sub]);
    assert!(matches!(out[0].as_slice(), [Packet::PubRec(r)] if r.packet_id == 7));
    assert_eq!(publishes(&out[1]).len(), 1);
    // PUBREC lost: the client sends the PUBLISH again, with DUP.
    if let Packet::Publish(p) = &mut p {
        p.dup = true;
    }
    publ.send(&p, sim.now()).expect("resent PUBLISH");
    let out = settle(&sim, &mut [&mut publ, &mut sub]);
    assert!(matches!(out[0].as_slice(), [Packet::PubRec(r)] if r.packet_id == 7));
    assert!(
        publishes(&out[1]).is_empty(),
        "delivered twice: {:?}",
        out[1]
    );
    publ.send(&Packet::PubRel(PubResp::new(7)), sim.now())
        .expect("PUBREL");
    let out = settle(&sim, &mut [&mut publ, &mut sub]);
    assert!(
        matches!(out[0].as_slice(), [Packet::PubComp(r)] if r.packet_id == 7 && r.reason == ReasonCode::Success)
    );
    // The id is free again: a new PUBLISH with it is a new message.
    let p = publish("t/q2", QoS::ExactlyOnce, Some(7), Properties::default());
    publ.send(&p, sim.now()).expect("PUBLISH");
    let out = settle(&sim, &mut [&mut publ, &mut sub]);
    assert_eq!(publishes(&out[1]).len(), 1);
}

#[test]
fn an_unacknowledged_delivery_is_resent_with_dup_after_retry_interval() {
    let mut sim = Sim::new(|z| z.retry_interval = Duration::from_secs(5));
    let (mut sub, _) = open(&mut sim, connect("s", 0));
    subscribe(&mut sub, &sim, "t", QoS::AtLeastOnce);
    let (mut publ, _) = open(&mut sim, connect("p", 0));
    publ.send(
        &publish("t", QoS::AtLeastOnce, Some(1), Properties::default()),
        sim.now(),
    )
    .expect("PUBLISH");
    let out = settle(&sim, &mut [&mut publ, &mut sub]);
    let first = publishes(&out[1]);
    assert!(matches!(first.as_slice(), [p] if !p.dup), "{:?}", out[1]);
    let id = first[0].packet_id;
    sim.clock.advance(Duration::from_secs(4));
    sub.channel.on_timer(sim.now()).expect("open");
    assert!(
        publishes(&sub.take_output(sim.now())).is_empty(),
        "too early"
    );
    sim.clock.advance(Duration::from_secs(1));
    sub.channel.on_timer(sim.now()).expect("open");
    let again = sub.take_output(sim.now());
    assert!(
        matches!(publishes(&again).as_slice(), [p] if p.dup && p.packet_id == id),
        "{again:?}"
    );
}

/// A v5 client with a delayed will, and an observer subscribed to wills.
fn will_client(sim: &mut Sim, delay_s: u32) -> Conn {
    let mut c = connect("w", 60);
    c.will = Some(LastWill {
        topic: Bytes::from_static(b"will/w"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties {
            will_delay_interval: Some(delay_s),
            ..Properties::default()
        },
    });
    open(sim, c).0
}

#[test]
fn a_delayed_will_is_published_after_its_delay_on_the_simulated_clock() {
    let mut sim = Sim::new(|_| {});
    let (mut obs, _) = open(&mut sim, connect("obs", 0));
    subscribe(&mut obs, &sim, "will/#", QoS::AtLeastOnce);
    let w = will_client(&mut sim, 10);
    w.finish(Close::Lost, sim.now());
    for _ in 0..9 {
        sim.clock.advance(Duration::from_secs(1));
        sim.sweep();
        let out = settle(&sim, &mut [&mut obs]);
        assert!(publishes(&out[0]).is_empty(), "will before its delay");
    }
    sim.clock.advance(Duration::from_secs(1));
    sim.sweep();
    let out = settle(&sim, &mut [&mut obs]);
    assert!(
        matches!(publishes(&out[0]).as_slice(), [p] if p.payload == "gone"),
        "{out:?}"
    );
}

#[test]
fn a_reconnect_within_the_will_delay_cancels_the_will_and_a_normal_disconnect_has_none() {
    let mut sim = Sim::new(|_| {});
    let (mut obs, _) = open(&mut sim, connect("obs", 0));
    subscribe(&mut obs, &sim, "will/#", QoS::AtLeastOnce);
    let w = will_client(&mut sim, 10);
    w.finish(Close::Lost, sim.now());
    sim.clock.advance(Duration::from_secs(5));
    let mut w = will_client(&mut sim, 0);
    // The resumed session's first page comes before anything the client sends.
    settle(&sim, &mut [&mut w]);
    // Normal DISCONNECT: no will, even with no delay.
    let d = Packet::Disconnect(crate::codec::Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: Properties::default(),
    });
    let close = w.send(&d, sim.now()).expect_err("DISCONNECT closes");
    w.finish(close, sim.now());
    for _ in 0..20 {
        sim.clock.advance(Duration::from_secs(1));
        sim.sweep();
        let out = settle(&sim, &mut [&mut obs]);
        assert!(
            publishes(&out[0]).is_empty(),
            "a will was published: {out:?}"
        );
    }
}

#[test]
fn an_offline_session_ends_at_its_expiry_on_the_simulated_clock() {
    let mut sim = Sim::new(|_| {});
    let (mut conn, _) = open(&mut sim, connect("e", 10));
    subscribe(&mut conn, &sim, "t", QoS::AtLeastOnce);
    conn.finish(Close::Lost, sim.now());
    sim.clock.advance(Duration::from_millis(9_999));
    sim.sweep();
    assert!(sim.broker.registry.get("e").is_some(), "expired early");
    sim.clock.advance(Duration::from_millis(1));
    sim.sweep();
    assert!(sim.broker.registry.get("e").is_none(), "not expired");
    assert!(
        sim.broker.registry.targets("t").is_empty(),
        "its route stays"
    );
    let (_conn, out) = open(&mut sim, connect("e", 10));
    assert!(matches!(out.first(), Some(Packet::ConnAck(a)) if !a.session_present));
}

// ---- CONNECT's session decision (`channel::session_open`) ----

fn connack(out: &[Packet]) -> &crate::codec::ConnAck {
    match out.first() {
        Some(Packet::ConnAck(ack)) => ack,
        other => panic!("no CONNACK first: {other:?}"),
    }
}

/// A persistent session "p" subscribed to "t" at QoS 1, offline with one message queued.
fn offline_with_one_queued(sim: &mut Sim) {
    let (mut p, _) = open(sim, connect("p", 60));
    subscribe(&mut p, sim, "t", QoS::AtLeastOnce);
    p.finish(Close::Lost, sim.now());
    let (mut publisher, _) = open(sim, connect("pub", 0));
    let packet = publish("t", QoS::AtLeastOnce, Some(1), Properties::default());
    publisher.send(&packet, sim.now()).expect("PUBLISH taken");
    let out = settle(sim, &mut [&mut publisher]);
    assert!(matches!(out[0].as_slice(), [Packet::PubAck(_)]), "{out:?}");
}

#[test]
fn a_persistent_session_resumes_with_session_present_and_its_queue() {
    let mut sim = Sim::new(|_| {});
    offline_with_one_queued(&mut sim);
    let (mut p, out) = open(&mut sim, connect("p", 60));
    assert!(connack(&out).session_present, "{out:?}");
    let more = settle(&sim, &mut [&mut p]);
    assert_eq!(publishes(&more[0]).len(), 1, "{more:?}");
}

#[test]
fn a_resume_with_expiry_0_delivers_the_queue_and_the_session_ends_with_the_connection() {
    let mut sim = Sim::new(|_| {});
    offline_with_one_queued(&mut sim);
    let (mut p, out) = open(&mut sim, connect("p", 0));
    assert!(connack(&out).session_present, "{out:?}");
    let more = settle(&sim, &mut [&mut p]);
    assert_eq!(publishes(&more[0]).len(), 1, "{more:?}");
    p.finish(Close::Lost, sim.now());
    assert!(
        sim.broker.registry.get("p").is_none(),
        "the session outlived expiry 0"
    );
    let (_p, out) = open(&mut sim, connect("p", 60));
    assert!(!connack(&out).session_present, "{out:?}");
}

#[test]
fn clean_start_discards_the_stored_session_and_publishes_its_waiting_will_at_once() {
    let mut sim = Sim::new(|_| {});
    let (mut obs, _) = open(&mut sim, connect("obs", 0));
    subscribe(&mut obs, &sim, "will/#", QoS::AtLeastOnce);
    let w = will_client(&mut sim, 3_600);
    w.finish(Close::Lost, sim.now());
    let mut fresh = connect("w", 60);
    fresh.clean_start = true;
    let (mut w, out) = open(&mut sim, fresh);
    assert!(!connack(&out).session_present, "{out:?}");
    let seen = settle(&sim, &mut [&mut obs, &mut w]);
    assert!(
        matches!(publishes(&seen[0]).as_slice(), [p] if p.payload == "gone"),
        "the old session's will was not published at its end: {seen:?}"
    );
    sim.clock.advance(Duration::from_secs(3_600));
    sim.sweep();
    let later = settle(&sim, &mut [&mut obs]);
    assert!(
        publishes(&later[0]).is_empty(),
        "the will came twice: {later:?}"
    );
}

#[test]
fn an_empty_client_id_is_assigned_one_and_told_in_connack() {
    let mut sim = Sim::new(|_| {});
    let mut c = connect("", 0);
    c.clean_start = true;
    let (conn, out) = open(&mut sim, c);
    let assigned = connack(&out)
        .properties
        .assigned_client_identifier
        .clone()
        .expect("an Assigned Client Identifier");
    assert!(!assigned.is_empty());
    assert_eq!(conn.channel.client_id().as_ref(), assigned);
    assert!(sim.broker.registry.get(&assigned).is_some());
}

#[test]
fn a_takeover_moves_the_session_and_the_old_connection_ends_with_0x8e() {
    let mut sim = Sim::new(|_| {});
    let (first, _) = open(&mut sim, connect("t", 60));
    let (opened, ended) = sim.connect(connect("t", 60), Some(first));
    let mut second = opened.expect("the takeover connects");
    let ended = ended.expect("the first connection ended");
    assert_eq!(ended.close, Close::Kicked(ReasonCode::SESSION_TAKEN_OVER));
    let out = second.take_output(sim.now());
    assert!(connack(&out).session_present, "{out:?}");
}

/// Found by the model test (seed 634): on a kick, the driver handles what the client
/// sent before it; a second SUBSCRIBE there paused input again for its retained
/// lookup, and the DISCONNECT with expiry 0 behind it was ignored, so the session
/// outlived it. Never taking the mailbox holds the first lookup's answer back, as a
/// kick that comes first does.
#[test]
fn a_kicked_connection_takes_a_disconnect_behind_subscribes_waiting_for_retained_lookups() {
    let mut sim = Sim::new(|_| {});
    let (mut publisher, _) = open(&mut sim, connect("pub", 0));
    let Packet::Publish(mut retained) = publish("r", QoS::AtMostOnce, None, Properties::default())
    else {
        unreachable!()
    };
    retained.retain = true;
    publisher
        .send(&Packet::Publish(retained), sim.now())
        .expect("PUBLISH taken");
    settle(&sim, &mut [&mut publisher]);
    let (mut k, _) = open(&mut sim, connect("k", 60));
    for packet_id in [1, 2] {
        let packet = Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![("r".into(), SubscriptionOptions::default())],
        });
        k.send(&packet, sim.now()).expect("SUBSCRIBE taken");
    }
    assert!(k.awaiting_store(), "the first SUBSCRIBE reads retained");
    let properties = Properties {
        session_expiry_interval: Some(0),
        ..Properties::default()
    };
    let disconnect = Packet::Disconnect(crate::codec::Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties,
    });
    k.send(&disconnect, sim.now())
        .expect("held behind the SUBSCRIBEs");
    let close = k.kicked(sim.now()).expect_err("the DISCONNECT is handled");
    assert_eq!(close, Close::ByClient { with_will: false });
    k.finish(close, sim.now());
    assert!(
        sim.broker.registry.get("k").is_none(),
        "the session outlived its DISCONNECT with expiry 0"
    );
}
