//! Registration: priority order, unique names, removal, registration while other
//! threads call hooks, and what the fast path costs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::*;
use super::{client, logger, msg};

#[test]
fn higher_priority_runs_first_and_equal_priorities_in_registration_order() {
    let hooks = Hooks::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    hooks.add("a", 0, logger(&log, "a")).unwrap();
    hooks.add("b", 10, logger(&log, "b")).unwrap();
    hooks.add("c", 0, logger(&log, "c")).unwrap();
    hooks.add("d", 10, logger(&log, "d")).unwrap();
    hooks.add("e", -5, logger(&log, "e")).unwrap();
    hooks.add("f", 1000, logger(&log, "f")).unwrap();
    hooks.session_unsubscribed(&client("c"), "x");
    assert_eq!(*log.lock().unwrap(), vec!["f", "b", "d", "a", "c", "e"]);
    let listed: Vec<_> = hooks
        .list(HookPoint::SessionUnsubscribed)
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
    assert_eq!(listed[0], ("f".to_string(), 1000));
    assert_eq!(listed[5], ("e".to_string(), -5));
}

#[test]
fn names_are_unique_per_point_and_removal_is_by_name() {
    let hooks = Hooks::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    hooks.add("plugin", 0, logger(&log, "1")).unwrap();
    assert_eq!(
        hooks.add("plugin", 5, logger(&log, "2")),
        Err(HookError::AlreadyExists {
            point: HookPoint::SessionUnsubscribed,
            name: "plugin".into()
        })
    );
    // The same name on another point is another callback.
    hooks
        .add(
            "plugin",
            0,
            Hook::check_acl(|_, _, _| Decision::Ready(AclResult::Deny)),
        )
        .unwrap();
    hooks.add("other", 0, logger(&log, "3")).unwrap();

    assert!(
        !hooks.remove(HookPoint::MessagePublish, "plugin"),
        "not registered there"
    );
    assert_eq!(
        hooks.remove_all("plugin"),
        2,
        "a plugin unloads from every point"
    );
    assert!(!hooks.is_registered(HookPoint::ClientCheckAcl));
    assert!(hooks.is_registered(HookPoint::SessionUnsubscribed));
    hooks.session_unsubscribed(&client("c"), "x");
    assert_eq!(*log.lock().unwrap(), vec!["3"]);

    assert!(hooks.remove(HookPoint::SessionUnsubscribed, "other"));
    assert!(
        !hooks.is_registered(HookPoint::SessionUnsubscribed),
        "an emptied point takes the fast path again"
    );
    assert_eq!(format!("{hooks:?}"), "{}");
    // Once removed, the name can be registered again.
    hooks.add("plugin", 0, logger(&log, "4")).unwrap();
    assert_eq!(
        format!("{hooks:?}"),
        r#"{"session.unsubscribed": ["plugin@0"]}"#
    );
}

#[test]
fn a_hook_can_unregister_itself_while_it_runs() {
    // Proves no lock is held while hooks run: with one, this would deadlock.
    let hooks = Arc::new(Hooks::new());
    let h = Arc::downgrade(&hooks);
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    hooks
        .add(
            "once",
            0,
            Hook::unsubscribed(move |_, _| {
                n.fetch_add(1, Ordering::SeqCst);
                if let Some(hooks) = h.upgrade() {
                    hooks.remove(HookPoint::SessionUnsubscribed, "once");
                }
            }),
        )
        .unwrap();
    let c = client("c");
    hooks.session_unsubscribed(&c, "x");
    hooks.session_unsubscribed(&c, "x");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!hooks.is_registered(HookPoint::SessionUnsubscribed));
}

#[test]
fn registration_while_other_threads_call_hooks() {
    // Readers run the chain in a loop while a writer adds and removes a denying ACL
    // hook and a message.publish hook. Readers must see both states (the changes take
    // effect while they run), nothing may deadlock, and once the writer is done the
    // final state must be seen. Bounded: the writer stops after 10 s at most.
    let hooks = Arc::new(Hooks::new());
    let stop = Arc::new(AtomicBool::new(false));
    let allowed = Arc::new(AtomicUsize::new(0));
    let denied = Arc::new(AtomicUsize::new(0));
    hooks
        .add(
            "base",
            0,
            Hook::check_acl(|_, _, _| Decision::Ready(AclResult::Ignore)),
        )
        .unwrap();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (hooks, stop) = (hooks.clone(), stop.clone());
            let (allowed, denied) = (allowed.clone(), denied.clone());
            std::thread::spawn(move || {
                let c = client("c");
                while !stop.load(Ordering::Relaxed) {
                    match hooks
                        .check_acl(&c, Access::Publish, "t", AclVerdict::Allow)
                        .ready()
                    {
                        Ok(AclVerdict::Allow) => allowed.fetch_add(1, Ordering::Relaxed),
                        Ok(AclVerdict::Deny) => denied.fetch_add(1, Ordering::Relaxed),
                        Err(_) => panic!("no hook here is async"),
                    };
                    let mut m = msg("t");
                    match hooks.message_publish(None, &mut m) {
                        PublishOutcome::Publish => assert_eq!(m, msg("t")),
                        PublishOutcome::Dropped { by } => panic!("dropped by {by}"),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rounds = 0u32;
    while rounds < 1_000
        || (allowed.load(Ordering::Relaxed) < 100 || denied.load(Ordering::Relaxed) < 100)
            && Instant::now() < deadline
    {
        hooks
            .add(
                "deny",
                10,
                Hook::check_acl(|_, _, _| Decision::Ready(AclResult::Deny)),
            )
            .unwrap();
        hooks
            .add(
                "pass",
                (rounds % 7) as i32,
                Hook::message_publish(|_, _| PublishResult::Continue),
            )
            .unwrap();
        std::thread::yield_now();
        assert!(hooks.remove(HookPoint::ClientCheckAcl, "deny"));
        assert_eq!(hooks.remove_all("pass"), 1);
        std::thread::yield_now();
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread");
    }
    let (allowed, denied) = (
        allowed.load(Ordering::Relaxed),
        denied.load(Ordering::Relaxed),
    );
    assert!(
        allowed >= 100 && denied >= 100,
        "readers saw both states: {allowed} allowed, {denied} denied in {rounds} rounds"
    );
    let c = client("c");
    assert_eq!(
        hooks
            .check_acl(&c, Access::Publish, "t", AclVerdict::Allow)
            .ready()
            .ok(),
        Some(AclVerdict::Allow)
    );
    assert_eq!(hooks.list(HookPoint::ClientCheckAcl).len(), 1);
    assert!(!hooks.is_registered(HookPoint::MessagePublish));
}

/// Not a timing assertion: prints what a call site pays for hooks, with none
/// registered (the fast path: one relaxed load) and with one pass-through hook, on
/// one thread and on two at once (the snapshot's lock and reference count are shared).
/// Run with `cargo test --release --lib hooks::tests::registry::fast_path -- --nocapture`.
#[test]
fn fast_path_cost_measurement() {
    const N: u32 = 2_000_000;
    fn time(hooks: &Hooks) -> (f64, f64) {
        let c = client("c");
        let mut m = msg("a/b");
        let start = Instant::now();
        let mut published = 0u32;
        for _ in 0..N {
            let out = hooks.message_publish(Some(&c), std::hint::black_box(&mut m));
            published += (out == PublishOutcome::Publish) as u32;
        }
        let publish_ns = start.elapsed().as_nanos() as f64 / N as f64;
        let start = Instant::now();
        let mut allowed = 0u32;
        for _ in 0..N {
            let topic = std::hint::black_box("a/b");
            let d = hooks.check_acl(&c, Access::Publish, topic, AclVerdict::Allow);
            allowed += matches!(d, Decision::Ready(AclVerdict::Allow)) as u32;
        }
        let acl_ns = start.elapsed().as_nanos() as f64 / N as f64;
        assert_eq!((published, allowed), (N, N));
        assert_eq!(m, msg("a/b"));
        (publish_ns, acl_ns)
    }
    fn report(label: &str, hooks: &Arc<Hooks>) {
        let (p, a) = time(hooks);
        eprintln!("hooks {label}, 1 thread: message.publish {p:.2} ns/call, client.check_acl {a:.2} ns/call");
        let other = {
            let hooks = hooks.clone();
            std::thread::spawn(move || time(&hooks))
        };
        let (p, a) = time(hooks);
        let (p2, a2) = other.join().expect("timing thread");
        eprintln!(
            "hooks {label}, 2 threads: message.publish {:.2} ns/call, client.check_acl {:.2} ns/call",
            (p + p2) / 2.0,
            (a + a2) / 2.0
        );
    }
    let hooks = Arc::new(Hooks::new());
    report("none registered", &hooks);
    hooks
        .add(
            "pass",
            0,
            Hook::message_publish(|_, _| PublishResult::Continue),
        )
        .unwrap();
    hooks
        .add(
            "pass",
            0,
            Hook::check_acl(|_, _, _| Decision::Ready(AclResult::Ignore)),
        )
        .unwrap();
    report("one pass-through hook each", &hooks);
}
