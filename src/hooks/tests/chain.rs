//! What each hook point decides and passes on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::super::*;
use super::{client, creds, msg, ANON_ALLOW};
use crate::codec::{QoS, ReasonCode};

#[test]
fn nothing_registered_gives_the_callers_default() {
    let hooks = Hooks::new();
    let c = client("c");
    for point in HookPoint::ALL {
        assert!(!hooks.is_registered(point), "{point}");
    }
    let deny = AuthVerdict::Deny(ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        hooks.authenticate(&c, &creds(b"x"), deny).ready().ok(),
        Some(deny)
    );
    assert_eq!(
        hooks
            .authenticate(&c, &creds(b"x"), ANON_ALLOW)
            .ready()
            .ok(),
        Some(ANON_ALLOW)
    );
    for nomatch in [AclVerdict::Allow, AclVerdict::Deny] {
        let d = hooks.check_acl(&c, Access::Publish, "t", nomatch);
        assert_eq!(d.ready().ok(), Some(nomatch));
    }
    let mut m = msg("a/b");
    assert_eq!(
        hooks.message_publish(Some(&c), &mut m),
        PublishOutcome::Publish
    );
    assert_eq!(m, msg("a/b"));
    // Notifications with nothing registered are no-ops (and must not panic).
    hooks.session_unsubscribed(&c, "a/#");
    hooks.message_dropped(&msg("a"), DropReason::NoSubscribers, None);
}

/// An authentication hook that counts its calls and answers `result`.
fn auth_hook(result: AuthResult, calls: &Arc<AtomicUsize>) -> Hook {
    let calls = calls.clone();
    Hook::authenticate(move |_, _| {
        calls.fetch_add(1, Ordering::SeqCst);
        Decision::Ready(result)
    })
}

#[test]
fn authenticate_stops_at_the_first_allow_or_deny_and_skips_ignores() {
    let hooks = Hooks::new();
    let calls: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    hooks
        .add("ignore", 30, auth_hook(AuthResult::Ignore, &calls[0]))
        .unwrap();
    hooks
        .add(
            "deny",
            20,
            auth_hook(
                AuthResult::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
                &calls[1],
            ),
        )
        .unwrap();
    hooks
        .add(
            "allow",
            10,
            auth_hook(AuthResult::Allow { superuser: true }, &calls[2]),
        )
        .unwrap();

    let d = hooks.authenticate(&client("c"), &creds(b"pw"), ANON_ALLOW);
    assert_eq!(
        d.ready().ok(),
        Some(AuthVerdict::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD))
    );
    let counts: Vec<_> = calls.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, vec![1, 1, 0], "the hook after a deny must not run");

    // Without the deny, the allow decides and carries superuser.
    assert!(hooks.remove(HookPoint::ClientAuthenticate, "deny"));
    let d = hooks.authenticate(
        &client("c"),
        &creds(b"pw"),
        AuthVerdict::Deny(ReasonCode::NOT_AUTHORIZED),
    );
    assert_eq!(d.ready().ok(), Some(AuthVerdict::Allow { superuser: true }));

    // Only ignores: the caller's default (allow_anonymous).
    assert!(hooks.remove(HookPoint::ClientAuthenticate, "allow"));
    let deny = AuthVerdict::Deny(ReasonCode::NOT_AUTHORIZED);
    assert_eq!(
        hooks
            .authenticate(&client("c"), &creds(b"pw"), deny)
            .ready()
            .ok(),
        Some(deny)
    );
}

#[test]
fn check_acl_sees_access_and_topic_and_superusers_skip_it() {
    let hooks = Hooks::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    hooks
        .add(
            "acl",
            0,
            Hook::check_acl(move |info, access, topic| {
                s.lock()
                    .unwrap()
                    .push((info.client_id.to_string(), access, topic.to_string()));
                match (access, topic) {
                    (Access::Subscribe, "$SYS/#") => Decision::Ready(AclResult::Deny),
                    (Access::Publish, t) if t.starts_with("open/") => {
                        Decision::Ready(AclResult::Allow)
                    }
                    _ => Decision::Ready(AclResult::Ignore),
                }
            }),
        )
        .unwrap();
    let c = client("c");
    let run = |info: &Arc<ClientInfo>, access, topic, nomatch| {
        hooks.check_acl(info, access, topic, nomatch).ready().ok()
    };
    assert_eq!(
        run(&c, Access::Subscribe, "$SYS/#", AclVerdict::Allow),
        Some(AclVerdict::Deny)
    );
    assert_eq!(
        run(&c, Access::Publish, "open/1", AclVerdict::Deny),
        Some(AclVerdict::Allow)
    );
    // Nothing matched: acl_nomatch decides.
    assert_eq!(
        run(&c, Access::Publish, "closed/1", AclVerdict::Deny),
        Some(AclVerdict::Deny)
    );
    assert_eq!(
        run(&c, Access::Publish, "closed/1", AclVerdict::Allow),
        Some(AclVerdict::Allow)
    );
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert_eq!(
        seen.lock().unwrap()[0],
        ("c".to_string(), Access::Subscribe, "$SYS/#".to_string())
    );

    let su = c.with_superuser(true);
    assert_eq!(
        run(&su, Access::Subscribe, "$SYS/#", AclVerdict::Deny),
        Some(AclVerdict::Allow)
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        4,
        "a superuser's check asks no hook"
    );
}

#[test]
fn message_publish_rewrites_stops_and_drops() {
    let hooks = Hooks::new();
    let late_calls = Arc::new(AtomicUsize::new(0));
    // Priority 10: rewrite the topic of a/*, stop the chain on stop/*, drop secret/*.
    hooks
        .add(
            "rewrite",
            10,
            Hook::message_publish(|from, m| {
                assert_eq!(from.map(|c| &*c.client_id), Some("c"));
                match m.topic_str() {
                    t if t.starts_with("secret/") => PublishResult::Drop,
                    t if t.starts_with("stop/") => PublishResult::Stop,
                    t if t.starts_with("a/") => {
                        m.topic = Bytes::from(format!("mounted/{t}"));
                        PublishResult::Continue
                    }
                    _ => PublishResult::Continue,
                }
            }),
        )
        .unwrap();
    let late = late_calls.clone();
    hooks
        .add(
            "late",
            0,
            Hook::message_publish(move |_, m| {
                late.fetch_add(1, Ordering::SeqCst);
                m.payload = Bytes::from_static(b"seen-by-late");
                PublishResult::Continue
            }),
        )
        .unwrap();
    let c = client("c");

    let mut out = msg("a/b");
    assert_eq!(
        hooks.message_publish(Some(&c), &mut out),
        PublishOutcome::Publish
    );
    assert_eq!(out.topic_str(), "mounted/a/b");
    assert_eq!(
        &out.payload[..],
        b"seen-by-late",
        "the later hook sees the rewritten message"
    );

    let mut out = msg("stop/x");
    assert_eq!(
        hooks.message_publish(Some(&c), &mut out),
        PublishOutcome::Publish
    );
    assert_eq!(&out.payload[..], b"p", "no hook runs after a stop");
    assert_eq!(late_calls.load(Ordering::SeqCst), 1);

    assert_eq!(
        hooks.message_publish(Some(&c), &mut msg("secret/x")),
        PublishOutcome::Dropped {
            by: Arc::from("rewrite")
        }
    );
    assert_eq!(late_calls.load(Ordering::SeqCst), 1);
}

#[test]
fn notifications_reach_every_hook_with_their_arguments() {
    let hooks = Hooks::new();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = log.clone();
    hooks
        .add(
            "sys",
            0,
            Hook::connected(move |c, ev| {
                l.lock().unwrap().push(format!(
                    "connected {} {} {}",
                    c.client_id, ev.keepalive_s, ev.connected_at_ms
                ))
            }),
        )
        .unwrap();
    let l = log.clone();
    hooks
        .add(
            "sys",
            0,
            Hook::disconnected(move |c, r, at| {
                l.lock()
                    .unwrap()
                    .push(format!("disconnected {} {} {at}", c.client_id, r.as_str()))
            }),
        )
        .unwrap();
    let l = log.clone();
    hooks
        .add(
            "sys",
            0,
            Hook::subscribed(move |c, f, o| {
                l.lock()
                    .unwrap()
                    .push(format!("subscribed {} {f} {:?}", c.client_id, o.qos))
            }),
        )
        .unwrap();
    let l = log.clone();
    hooks
        .add(
            "trace",
            0,
            Hook::delivered(move |c, m| {
                l.lock()
                    .unwrap()
                    .push(format!("delivered {} {}", c.client_id, m.topic_str()))
            }),
        )
        .unwrap();
    let l = log.clone();
    hooks
        .add(
            "trace",
            0,
            Hook::acked(move |c, m| {
                l.lock()
                    .unwrap()
                    .push(format!("acked {} {}", c.client_id, m.topic_str()))
            }),
        )
        .unwrap();
    let l = log.clone();
    hooks
        .add(
            "trace",
            0,
            Hook::dropped(move |m, r, to| {
                l.lock().unwrap().push(format!(
                    "dropped {} {} {}",
                    m.topic_str(),
                    r.as_str(),
                    to.map(|c| &**c).unwrap_or("-")
                ))
            }),
        )
        .unwrap();

    let c = client("c");
    let ev = ConnectedInfo {
        clean_start: true,
        keepalive_s: 30,
        session_present: false,
        expiry_interval_s: 0,
        connected_at_ms: 5,
    };
    hooks.client_connected(&c, &ev);
    let opts = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        ..Default::default()
    };
    hooks.session_subscribed(&c, "a/#", &opts);
    hooks.message_delivered(&c, &msg("a/1"));
    hooks.message_acked(&c, &msg("a/1"));
    hooks.message_dropped(
        &msg("a/2"),
        crate::session::DropReason::QueueFull.into(),
        Some(&c.client_id),
    );
    hooks.message_dropped(&msg("z"), DropReason::NoSubscribers, None);
    hooks.client_disconnected(&c, DisconnectReason::KeepaliveTimeout, 9);
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            "connected c 30 5",
            "subscribed c a/# ExactlyOnce",
            "delivered c a/1",
            "acked c a/1",
            "dropped a/2 queue_full c",
            "dropped z no_subscribers -",
            "disconnected c keepalive_timeout 9",
        ]
    );
}

#[tokio::test]
async fn async_hooks_suspend_the_chain_and_resume_it_on_ignore() {
    let hooks = Hooks::new();
    let (tx, rx) = tokio::sync::oneshot::channel::<AuthResult>();
    let rx = Mutex::new(Some(rx));
    hooks
        .add(
            "http",
            10,
            Hook::authenticate(move |info, creds| {
                let rx = rx.lock().unwrap().take();
                // What a backend does: clone what it needs into the future.
                let (info, creds) = (info.clone(), creds.clone());
                Decision::pending(async move {
                    assert_eq!(&*info.client_id, "c");
                    assert_eq!(creds.password.as_deref(), Some(&b"pw"[..]));
                    match rx {
                        Some(rx) => rx.await.unwrap_or(AuthResult::Ignore),
                        None => AuthResult::Ignore,
                    }
                })
            }),
        )
        .unwrap();
    let later = Arc::new(AtomicUsize::new(0));
    hooks
        .add(
            "builtin",
            0,
            auth_hook(AuthResult::Allow { superuser: false }, &later),
        )
        .unwrap();

    let d = hooks.authenticate(
        &client("c"),
        &creds(b"pw"),
        AuthVerdict::Deny(ReasonCode::NOT_AUTHORIZED),
    );
    assert!(!d.is_ready());
    assert_eq!(
        later.load(Ordering::SeqCst),
        0,
        "the chain waits for the pending hook"
    );
    let waiting = tokio::spawn(d.resolve());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiting.is_finished());
    tx.send(AuthResult::Ignore).unwrap();
    assert_eq!(
        waiting.await.unwrap(),
        AuthVerdict::Allow { superuser: false }
    );
    assert_eq!(
        later.load(Ordering::SeqCst),
        1,
        "the hooks after an ignoring async hook ran"
    );
}

#[tokio::test]
async fn async_acl_decides_without_running_later_hooks() {
    let hooks = Hooks::new();
    hooks
        .add(
            "redis",
            10,
            Hook::check_acl(|_, access, topic| {
                let deny = access == Access::Publish && topic == "forbidden";
                Decision::pending(async move {
                    tokio::task::yield_now().await;
                    if deny {
                        AclResult::Deny
                    } else {
                        AclResult::Ignore
                    }
                })
            }),
        )
        .unwrap();
    let later = Arc::new(AtomicUsize::new(0));
    let n = later.clone();
    hooks
        .add(
            "file",
            0,
            Hook::check_acl(move |_, _, _| {
                n.fetch_add(1, Ordering::SeqCst);
                Decision::Ready(AclResult::Ignore)
            }),
        )
        .unwrap();
    let c = client("c");
    let v = hooks
        .check_acl(&c, Access::Publish, "forbidden", AclVerdict::Allow)
        .resolve()
        .await;
    assert_eq!(v, AclVerdict::Deny);
    assert_eq!(later.load(Ordering::SeqCst), 0);
    let v = hooks
        .check_acl(&c, Access::Publish, "fine", AclVerdict::Deny)
        .resolve()
        .await;
    assert_eq!(v, AclVerdict::Deny, "ignored by all: acl_nomatch");
    assert_eq!(later.load(Ordering::SeqCst), 1);
    // Decision::map composes with a pending answer.
    let d = hooks
        .check_acl(&c, Access::Subscribe, "x", AclVerdict::Allow)
        .map(|v| v == AclVerdict::Allow);
    assert!(d.resolve().await);
}

/// An exchange that answers every message with `label`.
struct Echo(&'static str);

impl AuthExchange for Echo {
    fn step(&mut self, _data: &[u8]) -> AuthStep {
        AuthStep::Continue(Bytes::from_static(self.0.as_bytes()))
    }
}

#[test]
fn enhanced_auth_asks_in_order_for_the_method_and_goes_with_its_plugin() {
    let hooks = Hooks::new();
    assert!(hooks.enhanced_auth("SCRAM-SHA-256").is_none());
    let serves = |method: &'static str, label: &'static str| {
        Hook::enhanced_auth(move |m| {
            (m == method).then(|| Box::new(Echo(label)) as Box<dyn AuthExchange>)
        })
    };
    hooks.add("kerberos", 0, serves("GS2-KRB5", "krb")).unwrap();
    hooks
        .add("scram-a", 0, serves("SCRAM-SHA-256", "a"))
        .unwrap();
    hooks
        .add("scram-b", 0, serves("SCRAM-SHA-256", "b"))
        .unwrap();
    let step = |m: &str| hooks.enhanced_auth(m).map(|mut x| x.step(b""));
    // The first hook that serves the method, past one that does not.
    assert_eq!(
        step("SCRAM-SHA-256"),
        Some(AuthStep::Continue(Bytes::from_static(b"a")))
    );
    assert_eq!(
        step("GS2-KRB5"),
        Some(AuthStep::Continue(Bytes::from_static(b"krb")))
    );
    assert_eq!(step("PLAIN"), None);
    // A plugin unloading takes its exchange with it.
    assert_eq!(hooks.remove_all("scram-a"), 1);
    assert_eq!(
        step("SCRAM-SHA-256"),
        Some(AuthStep::Continue(Bytes::from_static(b"b")))
    );
}
