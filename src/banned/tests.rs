use std::net::IpAddr;

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ban(kind: BanKind, who: &str, until_s: Option<u64>) -> Ban {
    Ban {
        kind,
        who: who.into(),
        by: "test".into(),
        reason: "r".into(),
        at_s: 100,
        until_s,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_ban_names_a_client_by_id_username_or_host_until_it_lifts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Default::default()).unwrap();
    let bans = Bans::default();
    let here = ip("127.0.0.1");
    assert_eq!(bans.check("c1", Some("u1"), here, 150), None);
    rt().block_on(async {
        bans.add(&store, ban(BanKind::ClientId, "c1", Some(200)))
            .await
            .unwrap();
        bans.add(&store, ban(BanKind::Username, "u1", None))
            .await
            .unwrap();
        bans.add(&store, ban(BanKind::PeerHost, "10.0.0.7", None))
            .await
            .unwrap();
    });
    assert_eq!(bans.check("c1", None, here, 150), Some(BanKind::ClientId));
    // Lifted at `until`, not a second later.
    assert_eq!(bans.check("c1", None, here, 200), None);
    assert_eq!(
        bans.check("c2", Some("u1"), here, 150),
        Some(BanKind::Username)
    );
    assert_eq!(bans.check("c2", Some("u2"), here, 150), None);
    // A username is not a client id, nor the other way round.
    assert_eq!(bans.check("u1", Some("c1"), here, 250), None);
    assert_eq!(
        bans.check("c2", None, ip("10.0.0.7"), 150),
        Some(BanKind::PeerHost)
    );
    // An IPv4 client on a dual-stack socket is the same host.
    let mapped = ip("::ffff:10.0.0.7");
    assert_eq!(bans.check("c2", None, mapped, 150), Some(BanKind::PeerHost));
    assert_eq!(bans.list(150).len(), 3);
    assert_eq!(bans.list(200).len(), 2, "a lifted ban is not listed");
}

#[test]
fn bans_are_durable_and_the_sweep_removes_lifted_ones_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let bans = Bans::default();
        rt().block_on(async {
            bans.add(&store, ban(BanKind::ClientId, "short", Some(200)))
                .await
                .unwrap();
            bans.add(&store, ban(BanKind::ClientId, "long", Some(900)))
                .await
                .unwrap();
            bans.add(&store, ban(BanKind::Username, "gone", None))
                .await
                .unwrap();
            assert!(bans
                .delete(&store, BanKind::Username, "gone")
                .await
                .unwrap());
            assert!(!bans
                .delete(&store, BanKind::Username, "gone")
                .await
                .unwrap());
        });
        // Nothing due yet: the sweep takes no lock and deletes nothing.
        assert_eq!(bans.sweep(&store, 199), 0);
        assert_eq!(bans.sweep(&store, 200), 1);
        store.writer().barrier().unwrap();
    }
    let store = Store::open(dir.path(), Default::default()).unwrap();
    let stored = store.banned().unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        (stored[0].0, stored[0].1.as_str()),
        (BanKind::ClientId, "long")
    );
    let bans = Bans::default();
    bans.load(stored);
    assert_eq!(
        bans.check("long", None, ip("127.0.0.1"), 300),
        Some(BanKind::ClientId)
    );
    assert_eq!(bans.list(300)[0].reason, "r");
}
