//! The plugin manager on a real broker (temp data dir) with test plugins.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::hooks::{AuthResult, Decision, Hook, HookPoint};

static STOPS: AtomicUsize = AtomicUsize::new(0);

struct Counted;

impl Running for Counted {
    fn stop(self: Box<Self>) {
        STOPS.fetch_add(1, Ordering::SeqCst);
    }
}

fn allow_hook(name: &'static str) -> StartFn {
    match name {
        "p_a" => |ctx| {
            Box::pin(async move {
                ctx.broker
                    .hooks
                    .add(
                        "p_a",
                        0,
                        Hook::authenticate(|_, _| {
                            Decision::Ready(AuthResult::Allow { superuser: false })
                        }),
                    )
                    .map_err(|e| PluginError::Start(e.to_string()))?;
                Ok(Box::new(Counted) as Box<dyn Running>)
            })
        },
        _ => |ctx| {
            Box::pin(async move {
                ctx.broker
                    .hooks
                    .add(
                        "p_b",
                        0,
                        Hook::authenticate(|_, _| Decision::Ready(AuthResult::Ignore)),
                    )
                    .map_err(|e| PluginError::Start(e.to_string()))?;
                Ok(Box::new(()) as Box<dyn Running>)
            })
        },
    }
}

/// Registers a hook, then fails: the manager must take the hook away again.
fn failing(ctx: Context) -> BoxFuture<Result<Box<dyn Running>, PluginError>> {
    Box::pin(async move {
        ctx.broker
            .hooks
            .add(
                "p_bad",
                0,
                Hook::authenticate(|_, _| Decision::Ready(AuthResult::Ignore)),
            )
            .map_err(|e| PluginError::Start(e.to_string()))?;
        Err(PluginError::Start("auth.bad.server: nobody home".into()))
    })
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "p_a",
            description: "A",
            start: allow_hook("p_a"),
        },
        Spec {
            name: "p_b",
            description: "B",
            start: allow_hook("p_b"),
        },
        Spec {
            name: "p_bad",
            description: "Bad",
            start: failing,
        },
    ]
}

struct Fixture {
    plugins: Plugins,
    broker: Arc<Broker>,
    dir: tempfile::TempDir,
}

fn fixture(shipped: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/emqx.conf"), "").unwrap();
    if let Some(text) = shipped {
        std::fs::write(dir.path().join("etc/loaded_plugins"), text).unwrap();
    }
    let mut config = crate::config::Config::defaults(dir.path());
    config.node.data_dir = dir.path().join("data");
    let broker = Broker::open(config).expect("broker opens");
    Fixture {
        plugins: Plugins::new(broker.clone(), specs()),
        broker,
        dir,
    }
}

fn chain(f: &Fixture) -> Vec<String> {
    f.broker
        .hooks
        .list(HookPoint::ClientAuthenticate)
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect()
}

fn file(f: &Fixture) -> String {
    std::fs::read_to_string(f.dir.path().join("data/loaded_plugins")).unwrap_or_default()
}

#[tokio::test]
async fn load_and_unload_change_the_chain_and_the_file_together() {
    let f = fixture(None);
    f.plugins.load("p_b").await.unwrap();
    f.plugins.load("p_a").await.unwrap();
    assert_eq!(chain(&f), ["p_b", "p_a"], "loaded first checks first");
    assert_eq!(file(&f), "{p_b, true}.\n{p_a, true}.\n");
    let active: Vec<_> = f
        .plugins
        .list()
        .await
        .into_iter()
        .map(|s| (s.name, s.active))
        .collect();
    assert_eq!(active, [("p_a", true), ("p_b", true), ("p_bad", false)]);

    let stops = STOPS.load(Ordering::SeqCst);
    f.plugins.unload("p_a").await.unwrap();
    assert!(
        STOPS.load(Ordering::SeqCst) > stops,
        "its handle was stopped"
    );
    assert_eq!(chain(&f), ["p_b"]);
    assert_eq!(file(&f), "{p_b, true}.\n{p_a, false}.\n");
}

#[tokio::test]
async fn wrong_states_and_names_are_refused_with_emqx_words() {
    let f = fixture(None);
    f.plugins.load("p_a").await.unwrap();
    let err = |r: Result<(), PluginError>| r.unwrap_err().to_string();
    assert_eq!(err(f.plugins.load("p_a").await), "already_started");
    assert_eq!(err(f.plugins.unload("p_b").await), "not_started");
    assert_eq!(err(f.plugins.reload("p_b").await), "not_started");
    assert_eq!(err(f.plugins.load("nope").await), "not_found");
    assert_eq!(chain(&f), ["p_a"]);
}

#[tokio::test]
async fn a_plugin_that_fails_to_start_leaves_no_hook_and_no_record() {
    let f = fixture(None);
    let e = f.plugins.load("p_bad").await.unwrap_err();
    assert!(e.to_string().contains("nobody home"), "{e}");
    assert!(chain(&f).is_empty());
    assert_eq!(file(&f), "");
    assert!(!f.plugins.list().await.iter().any(|s| s.active));
}

#[tokio::test]
async fn boot_starts_the_shipped_list_in_order_and_skips_unknown_names() {
    let f = fixture(Some("{p_a, true}.\n{who, true}.\n{p_bad, false}.\np_b.\n"));
    f.plugins.start_at_boot().await.unwrap();
    assert_eq!(chain(&f), ["p_a", "p_b"]);
    // The data file, once written, wins over the shipped one.
    f.plugins.unload("p_a").await.unwrap();
    let again = Plugins::new(f.broker.clone(), specs());
    f.plugins.stop_all().await;
    assert!(chain(&f).is_empty(), "stop_all removes every hook");
    again.start_at_boot().await.unwrap();
    assert_eq!(chain(&f), ["p_b"]);
}

#[tokio::test]
async fn boot_fails_when_a_listed_plugin_cannot_start() {
    let f = fixture(Some("{p_a, true}.\n{p_bad, true}.\n"));
    let e = f.plugins.start_at_boot().await.unwrap_err();
    assert!(e.to_string().contains("nobody home"), "{e}");
}

#[tokio::test]
async fn reload_restarts_with_settings_read_again() {
    let f = fixture(None);
    f.plugins.load("p_a").await.unwrap();
    f.plugins.reload("p_a").await.unwrap();
    assert_eq!(chain(&f), ["p_a"]);
    // A broken config file: reload refuses before stopping anything.
    std::fs::write(
        f.dir.path().join("etc/emqx.conf"),
        "auth.x.y = 1\nnonsense\n",
    )
    .unwrap();
    let e = f.plugins.reload("p_a").await.unwrap_err();
    assert!(e.to_string().contains("emqx.conf:2"), "{e}");
    assert_eq!(chain(&f), ["p_a"]);
}
