//! The registry's gauges equal what a scan of the registry counts, after every change
//! (new session, resume, detach, takeover, subscribe, resubscribe, unsubscribe, end).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::config::{Zone, ZoneConfig};

fn zone() -> Arc<Zone> {
    Arc::new(Zone {
        name: "external".into(),
        config: ZoneConfig::DEFAULT,
    })
}

fn link(conn_id: u64) -> ConnLink {
    ConnLink {
        conn_id,
        mailbox: Arc::new(Mailbox::default()),
    }
}

fn session(client: &str, persistent: bool, conn: Option<ConnLink>) -> Arc<SessionHandle> {
    SessionHandle::new(
        Arc::from(client),
        SessionState {
            meta: SessionMeta {
                incarnation: 1,
                persistent,
                expiry_interval_s: if persistent { u32::MAX } else { 0 },
                subscriptions: Default::default(),
                protocol_level: 4,
                dup_below: 0,
            },
            live: true,
            conn,
            offline_since: Stamp::NONE,
            zone: zone(),
            connected_at: Stamp::NONE,
            peer: Box::from(""),
        },
    )
}

/// (connections, sessions, persistent, subscriptions, topics), counted by a scan.
fn scanned(r: &Registry) -> [u64; 5] {
    let all = r.all();
    let mut filters = HashSet::new();
    let mut subs = 0;
    for h in &all {
        for f in h.state().meta.subscriptions.keys() {
            filters.insert(f.clone());
            subs += 1;
        }
    }
    [
        all.iter().filter(|h| h.state().conn.is_some()).count() as u64,
        all.len() as u64,
        all.iter().filter(|h| h.state().meta.persistent).count() as u64,
        subs,
        filters.len() as u64,
    ]
}

fn gauged(r: &Registry) -> [u64; 5] {
    let g = r.gauges();
    assert_eq!(g.routes.get(), g.topics.get(), "one route per filter");
    [
        g.connections.get(),
        g.sessions.get(),
        g.sessions_persistent.get(),
        g.subscriptions.get(),
        g.topics.get(),
    ]
}

#[test]
fn gauges_follow_a_session_through_its_life() {
    let r = Registry::default();
    let a = session("a", true, Some(link(1)));
    r.insert(a.clone());
    let opts = SubOpts::default();
    assert!(!r.subscribe(&a, "t/1", opts));
    assert!(r.subscribe(&a, "t/1", opts), "resubscribe: the same filter");
    r.subscribe(&a, "t/+", opts);
    let b = session("b", false, Some(link(2)));
    r.insert(b.clone());
    r.subscribe(&b, "t/1", opts);
    assert_eq!(gauged(&r), [2, 2, 1, 3, 2]);
    assert_eq!(gauged(&r), scanned(&r));

    // a goes offline (persistent: stays), b's clean session ends.
    r.detach(&mut a.state());
    r.remove(&b);
    assert_eq!(gauged(&r), [0, 1, 1, 2, 2]);
    // Removed again, or detached again: nothing changes.
    assert!(!r.remove(&b));
    r.detach(&mut b.state());
    r.detach(&mut a.state());
    assert_eq!(gauged(&r), scanned(&r));

    // a resumes; then a clean-start reconnect ends it and starts a new one.
    r.attach(&mut a.state(), link(3));
    assert_eq!(gauged(&r)[0], 1);
    assert!(r.unsubscribe(&a, "t/+"));
    assert!(!r.unsubscribe(&a, "t/+"));
    assert_eq!(gauged(&r), [1, 1, 1, 1, 1]);
    r.remove(&a);
    let a2 = session("a", false, Some(link(4)));
    r.insert(a2.clone());
    assert_eq!(gauged(&r), [1, 1, 0, 0, 0]);
    // A subscription of the ended session adds no route.
    assert!(!r.subscribe(&a, "late", opts));
    assert_eq!(gauged(&r), scanned(&r));

    let g = r.gauges();
    assert_eq!(
        [
            g.connections.max(),
            g.sessions.max(),
            g.subscriptions.max(),
            g.topics.max()
        ],
        [2, 2, 3, 2]
    );
}

#[derive(Debug, Clone)]
enum Step {
    Connect { client: u8, clean: bool },
    Disconnect { client: u8 },
    Takeover { client: u8 },
    Subscribe { client: u8, filter: u8 },
    Unsubscribe { client: u8, filter: u8 },
    End { client: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0u8..4;
    let f = 0u8..3;
    prop_oneof![
        (c.clone(), any::<bool>()).prop_map(|(client, clean)| Step::Connect { client, clean }),
        c.clone().prop_map(|client| Step::Disconnect { client }),
        c.clone().prop_map(|client| Step::Takeover { client }),
        (c.clone(), f.clone()).prop_map(|(client, filter)| Step::Subscribe { client, filter }),
        (c.clone(), f).prop_map(|(client, filter)| Step::Unsubscribe { client, filter }),
        c.prop_map(|client| Step::End { client }),
    ]
}

proptest! {
    /// Random lives of four clients, driven the way the connection driver drives the
    /// registry: the gauges equal a scan after every step.
    #[test]
    fn gauges_equal_a_scan_after_every_step(steps in proptest::collection::vec(step(), 1..60)) {
        let r = Registry::default();
        let mut conn_ids = 10;
        // The handles connections hold, which outlive their sessions.
        let mut held: BTreeMap<u8, Arc<SessionHandle>> = BTreeMap::new();
        for s in steps {
            conn_ids += 1;
            match s {
                Step::Connect { client, clean } => {
                    let id = format!("c{client}");
                    let existing = r.get(&id);
                    let resumable = existing.as_ref().filter(|h| {
                        let st = h.state();
                        !clean && st.live && st.meta.persistent && st.conn.is_none()
                    });
                    match resumable {
                        Some(h) => r.attach(&mut h.state(), link(conn_ids)),
                        None => {
                            if let Some(old) = existing {
                                r.detach(&mut old.state());
                                r.remove(&old);
                            }
                            let h = session(&id, !clean, Some(link(conn_ids)));
                            r.insert(h.clone());
                            held.insert(client, h);
                        }
                    }
                    if let Some(h) = r.get(&id) {
                        held.insert(client, h);
                    }
                }
                Step::Disconnect { client } => {
                    if let Some(h) = held.get(&client) {
                        let persistent = h.state().meta.persistent;
                        if persistent {
                            r.detach(&mut h.state());
                        } else {
                            r.remove(h);
                        }
                    }
                }
                Step::Takeover { client } => {
                    // The old connection detaches, the new one attaches.
                    if let Some(h) = held.get(&client) {
                        let had = r.detach(&mut h.state()).is_some();
                        if had {
                            r.attach(&mut h.state(), link(conn_ids));
                        }
                    }
                }
                Step::Subscribe { client, filter } => {
                    if let Some(h) = held.get(&client) {
                        r.subscribe(h, &format!("f/{filter}"), SubOpts::default());
                    }
                }
                Step::Unsubscribe { client, filter } => {
                    if let Some(h) = held.get(&client) {
                        r.unsubscribe(h, &format!("f/{filter}"));
                    }
                }
                Step::End { client } => {
                    if let Some(h) = held.get(&client) {
                        r.remove(h);
                    }
                }
            }
            prop_assert_eq!(gauged(&r), scanned(&r));
            prop_assert_eq!(r.gauges().subscriptions.get() as usize, r.route_count());
        }
    }
}
