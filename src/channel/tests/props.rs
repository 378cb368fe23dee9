//! Randomized steps (proptest): three clients and a will observer over one broker,
//! each case a bounded list of steps on the simulated clock, checked by `world`.
//!
//! `PROPTEST_CASES` sets the number of cases (default 64), `CHANNEL_STEPS` the steps
//! per case (default 64). A failure prints the steps that led to it (shrunk).

use proptest::prelude::*;

use super::client::ConnectOpts;
use super::world::{How, Step, World, FILTERS, TOPICS};

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
        8 => (c.clone(), topic.clone(), 0u8..=2, any::<bool>())
            .prop_map(|(c, topic, qos, retain)| Step::Publish { c, topic, qos, retain }),
        1 => (c.clone(), topic, 1u8..=2)
            .prop_map(|(c, topic, qos)| Step::PublishThenLose { c, topic, qos }),
        3 => (c.clone(), filter.clone(), 0u8..=2)
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
