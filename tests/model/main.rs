//! The deterministic model test of the session and the store (issue 7).
//!
//! In the spirit of quinn-proto's simulated `Pair` and FoundationDB's simulation: a
//! seeded generator drives several clients through connect (clean or persistent,
//! every v5 expiry choice, wills with and without delay), takeover (also while the
//! previous CONNECT is unanswered), publish QoS 0/1/2 (retained set and clear
//! included), subscribe and unsubscribe, late acks, DISCONNECT with every expiry
//! choice, network loss, the clock (session expiry, delayed wills, retained expiry,
//! retries) and crashes at any writer-batch boundary: what was not fsynced is lost
//! (a random prefix of it survives, as a WAL does), all memory is lost, and the
//! broker recovers from the disk as `Broker::open` does. The broker side is the REAL
//! broker and the REAL channels (opened by the real `accept::open`, fed real MQTT 5
//! bytes) over a simulated store (`quay_storage::SimStore`: the real writer logic on
//! a simulated disk, stepped by the seed); only the driver's I/O loop is mirrored
//! (`server.rs`).
//!
//! After every step the reference model checks (see `client.rs` and
//! `world.rs`):
//! - no message acknowledged to its publisher (PUBACK, or PUBREC for QoS 2) is lost
//!   for a persistent session that held a matching QoS 1/2 subscription (SUBACK
//!   received) when the message was routed and that has not ended since (checked
//!   after a final drain that reconnects every such session; half the drains crash
//!   once in their first rounds, and every client back after that crash publishes
//!   once at QoS 2, so acknowledgements of the backlog and packet ids held across
//!   the crash are tested too);
//! - no QoS 2 message reaches a session's application twice, and none is sent
//!   again without DUP;
//! - first deliveries without DUP from one publisher arrive in publish order;
//! - CONNACK's session present is 1 for a session that must exist, 0 for one that
//!   ended (unless a crash may have brought it back: its end is a detached write);
//! - the store's invariants (`quay_storage::check_invariants`: reference counts equal
//!   live queue entries, no orphan keys) after every batch and after every crash.
//!
//! `QUAY_MODEL_SEEDS=<n>` runs n seeds (default 20,000: about 7 s in release),
//! `QUAY_MODEL_SEED=<s>` replays one seed with its step trace printed (with
//! `QUAY_MODEL_MUTATION=pubrel|pubcomp|puback`: with that known defect put back),
//! `QUAY_MODEL_STEPS=<n>` sets steps per seed (default 200). A failing seed prints
//! itself, its trace and what broke.

mod client;
mod rng;
mod server;
mod wire;
mod world;

use std::time::Instant;

use world::{Stats, World};

/// Known defects the model must catch (the mutation check); `None` in normal runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    None,
    /// PUBREL sent in the same turn as the unsynced release (issue 7, item 5).
    PubrelBeforeDurable,
    /// PUBCOMP sent before the deletion of the QoS 2 id is durable (item 4).
    PubcompBeforeDurable,
    /// PUBACK/PUBREC sent before the message is stored.
    PubackBeforeDurable,
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

/// `QUAY_MODEL_MUTATION` (pubrel, pubcomp, puback): replay a seed with that known
/// defect put back, to read how the model catches it.
fn replay_mutation() -> Mutation {
    match std::env::var("QUAY_MODEL_MUTATION").as_deref() {
        Err(_) | Ok("") | Ok("none") => Mutation::None,
        Ok("pubrel") => Mutation::PubrelBeforeDurable,
        Ok("pubcomp") => Mutation::PubcompBeforeDurable,
        Ok("puback") => Mutation::PubackBeforeDurable,
        Ok(other) => panic!("QUAY_MODEL_MUTATION={other:?} is not none, pubrel, pubcomp or puback"),
    }
}

fn steps() -> u64 {
    env_u64("QUAY_MODEL_STEPS").unwrap_or(200)
}

/// Run one seed; the failure report when a check failed.
fn run_seed(seed: u64, mutation: Mutation, steps: u64) -> Result<Stats, String> {
    let mut world = World::new(seed, mutation);
    match world.run(steps) {
        Ok(()) => Ok(world.stats),
        Err(()) => {
            let tail = world.trace.len().saturating_sub(400);
            let mut report = format!(
                "model seed {seed} failed ({mutation:?}); replay with QUAY_MODEL_SEED={seed}\n"
            );
            if tail > 0 {
                report.push_str(&format!("... {tail} earlier trace lines\n"));
            }
            for line in &world.trace[tail..] {
                report.push_str(line);
                report.push('\n');
            }
            report.push_str("problems:\n");
            for p in &world.problems {
                report.push_str("  ");
                report.push_str(p);
                report.push('\n');
            }
            Err(report)
        }
    }
}

#[test]
fn the_model_holds_for_every_seed() {
    let steps = steps();
    if let Some(seed) = env_u64("QUAY_MODEL_SEED") {
        let mutation = replay_mutation();
        let mut world = World::new(seed, mutation);
        let result = world.run(steps);
        for line in &world.trace {
            println!("{line}");
        }
        for p in &world.problems {
            println!("PROBLEM: {p}");
        }
        assert!(
            result.is_ok(),
            "seed {seed} failed ({mutation:?}): {:?}",
            world.problems
        );
        return;
    }
    let seeds = env_u64("QUAY_MODEL_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let started = Instant::now();
    let mut total = Stats::default();
    for seed in 0..seeds {
        match run_seed(seed, Mutation::None, steps) {
            Ok(s) => {
                total.steps += s.steps;
                total.crashes += s.crashes;
                total.commits += s.commits;
                total.acked += s.acked;
                total.checked_deliveries += s.checked_deliveries;
                total.takeovers += s.takeovers;
            }
            Err(report) => panic!("{report}"),
        }
    }
    println!(
        "model: {seeds} seeds x {steps} steps in {:.1} s: {} crashes, {} takeovers, {} batches, {} acknowledged publishes, {} deliveries checked",
        started.elapsed().as_secs_f64(),
        total.crashes,
        total.takeovers,
        total.commits,
        total.acked,
        total.checked_deliveries
    );
}

/// Seeds a normal run tries (each takes well under 1 ms).
const DEFAULT_SEEDS: u64 = 20_000;

/// Seeds the mutation check tries per defect at most: as many as a normal run, so
/// a defect the normal run could miss fails the check.
const MUTATION_SEEDS: u64 = DEFAULT_SEEDS;

/// The model is only worth its seeds if it fails when the broker is wrong: each
/// known defect, put back, must make some seed fail.
#[test]
fn the_model_catches_known_defects() {
    let steps = steps();
    for mutation in [
        Mutation::PubrelBeforeDurable,
        Mutation::PubcompBeforeDurable,
        Mutation::PubackBeforeDurable,
    ] {
        let caught = (0..MUTATION_SEEDS)
            .find_map(|seed| run_seed(seed, mutation, steps).err().map(|r| (seed, r)));
        match caught {
            Some((seed, report)) => {
                // The seed fails because of the defect, not of the model.
                if let Err(clean) = run_seed(seed, Mutation::None, steps) {
                    panic!("seed {seed} fails without {mutation:?} too:\n{clean}");
                }
                let problem = report
                    .lines()
                    .skip_while(|l| *l != "problems:")
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                println!("{mutation:?}: caught by seed {seed}: {problem}");
            }
            None => panic!("{mutation:?}: no seed of {MUTATION_SEEDS} caught it"),
        }
    }
}
