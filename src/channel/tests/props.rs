//! Randomized steps (proptest): three clients and a will observer over one broker,
//! each case a bounded list of steps on the simulated clock, checked by `world`.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64), `CHANNEL_STEPS` the steps
//! per case (default 64). A failure prints the steps that led to it (shrunk).

use proptest::prelude::*;

use super::client::ConnectOpts;
use super::world::{How, Stats, Step, World, FILTERS, TOPICS};

const CLIENTS: usize = 3;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn connect_opts() -> impl Strategy<Value = ConnectOpts> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec![0u32, 10, 60]),
        1u16..=5,
        0u16..=2,
        prop::sample::select(vec![0u16, 10]),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![0u32, 5, 30])),
    )
        .prop_map(
            |(clean, v5, expiry_s, receive_max, alias_max, keep_alive, pinging, will)| {
                ConnectOpts {
                    clean,
                    v5,
                    expiry_s,
                    receive_max,
                    alias_max,
                    keep_alive,
                    pinging,
                    will_delay_s: will,
                }
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    let c = 0..CLIENTS;
    let topic = 0..TOPICS.len();
    let filter = 0..FILTERS.len();
    prop_oneof![
        10 => (c.clone(), topic.clone(), 0u8..=2, any::<bool>())
            .prop_map(|(c, topic, qos, retain)| Step::Publish { c, topic, qos, retain }),
        1 => (c.clone(), topic, 1u8..=2)
            .prop_map(|(c, topic, qos)| Step::PublishThenLose { c, topic, qos }),
        4 => (c.clone(), filter.clone(), 0u8..=2)
            .prop_map(|(c, filter, qos)| Step::Subscribe { c, filter, qos }),
        1 => (c.clone(), filter).prop_map(|(c, filter)| Step::Unsubscribe { c, filter }),
        2 => (c.clone(), any::<bool>()).prop_map(|(c, withhold)| Step::Acks { c, withhold }),
        2 => prop::sample::select(vec![1u64, 5, 16, 35, 61]).prop_map(|secs| Step::Advance { secs }),
        2 => (c.clone(), prop::sample::select(vec![How::Normal, How::WithWill, How::Lost]))
            .prop_map(|(c, how)| Step::Disconnect { c, how }),
        2 => (c, connect_opts()).prop_map(|(c, opts)| Step::Connect { c, opts }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: env_or("PROPTEST_CASES", 64) as u32,
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn channels_keep_the_mqtt_rules_over_random_steps(
        initial in prop::collection::vec(connect_opts(), CLIENTS),
        steps in prop::collection::vec(step(), env_or("CHANNEL_STEPS", 64)),
    ) {
        let mut world = World::new(&initial);
        for step in &steps {
            world.step(step);
        }
        world.finish();
    }
}

/// The random steps reach every rule they are meant to check: 32 fixed cases (a
/// deterministic generator), the situations counted and printed
/// (`-- --nocapture`), each at least once.
#[test]
fn the_random_steps_reach_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let case = (
        prop::collection::vec(connect_opts(), CLIENTS),
        prop::collection::vec(step(), 64),
    );
    let mut total = Stats::default();
    for _ in 0..32 {
        let (initial, steps) = case.new_tree(&mut runner).expect("a case").current();
        let mut world = World::new(&initial);
        for step in &steps {
            world.step(step);
        }
        total += world.finish();
    }
    println!("32 cases x 64 steps: {total:?}");
    let c = total.client;
    let reached = [
        ("deliveries", total.deliveries),
        ("QoS downgrades", total.downgraded),
        ("retained deliveries", total.retained),
        ("wills at once", total.wills_at_once),
        ("delayed wills", total.wills_delayed),
        ("wills cancelled by a reconnect", total.wills_cancelled),
        ("keepalive timeouts", total.keepalive_closes),
        ("sessions expired", total.sessions_expired),
        ("sessions resumed", total.resumed),
        ("takeovers", total.takeovers),
        ("resent QoS 2 PUBLISHes", total.qos2_resent),
        ("DUP resends", c.dup_resends),
        ("alias-only deliveries", c.alias_only),
        ("full Receive Maximum", c.receive_max_full),
    ];
    for (what, n) in reached {
        assert!(n > 0, "no {what} in 32 cases: {total:?}");
    }
}
