//! `emqx_ctl bridges ...`, worded as the guide prints it. A change is written to
//! RocksDB before "successfully" is printed (`Bridge::change`), so it survives a
//! restart; the guide's `add-forwards`/`del-forwards` spellings are accepted too.
//!
//! `bridges list` prints the guide's `name: <n>     status: <s>` and then, on the
//! same line in the same style, the cache depth and the counts.

use std::fmt::Write;
use std::sync::Arc;

use super::{Bridge, BridgeFigures};
use crate::codec::QoS;
use crate::ctl::Reply;

fn reply(code: i32, output: impl Into<String>) -> Reply {
    Reply {
        code,
        output: output.into(),
    }
}

/// One line of `bridges list`.
pub fn list_line(name: &str, f: &BridgeFigures) -> String {
    format!(
        "name: {name}     status: {}     queued: {}     queued_bytes: {}     forwarded: {}     dropped: {}     retried: {}     received: {}\n",
        f.status.as_str(),
        f.queued,
        f.queued_bytes,
        f.forwarded,
        f.dropped,
        f.retried,
        f.received
    )
}

async fn changed(b: &Bridge, verb: &str, change: impl FnOnce(&mut super::Topics)) -> Reply {
    match b.change(change).await {
        Ok(()) => reply(0, format!("{verb} topic successfully.\n")),
        Err(e) => reply(1, format!("{verb} topic failed: {e}\n")),
    }
}

fn valid_filter(topic: &str) -> Result<(), Reply> {
    crate::topic::validate_filter(topic, 0)
        .map_err(|e| reply(1, format!("Invalid topic filter {topic}: {e}\n")))
}

pub async fn run(bridges: &[Arc<Bridge>], args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dispatch(bridges, &args).await.unwrap_or_else(|e| e)
}

async fn dispatch(bridges: &[Arc<Bridge>], args: &[&str]) -> Result<Reply, Reply> {
    let find = |name: &str| -> Result<Arc<Bridge>, Reply> {
        bridges
            .iter()
            .find(|b| b.config.name == name)
            .cloned()
            .ok_or_else(|| reply(1, format!("Bridge {name} not found.\n")))
    };
    Ok(match args {
        ["list"] => {
            let mut out = String::new();
            for b in bridges {
                out.push_str(&list_line(&b.config.name, &b.figures()));
            }
            reply(0, out)
        }
        ["start", name] => {
            let b = find(name)?;
            if let Err(e) = b.change(|t| t.record.stopped = false).await {
                return Err(reply(1, format!("Start bridge failed: {e}\n")));
            }
            b.start();
            reply(0, "Start bridge successfully.\n")
        }
        ["stop", name] => {
            let b = find(name)?;
            if let Err(e) = b.change(|t| t.record.stopped = true).await {
                return Err(reply(1, format!("Stop bridge failed: {e}\n")));
            }
            b.stop();
            reply(0, "Stop bridge successfully.\n")
        }
        ["forwards", name] => {
            let mut out = String::new();
            for f in find(name)?.forwards() {
                let _ = writeln!(out, "topic:   {f}");
            }
            reply(0, out)
        }
        ["add-forward" | "add-forwards", name, topic] => {
            let b = find(name)?;
            valid_filter(topic)?;
            changed(&b, "Add-forward", |t| t.add_forward(topic)).await
        }
        ["del-forward" | "del-forwards", name, topic] => {
            let b = find(name)?;
            changed(&b, "Del-forward", |t| t.del_forward(topic)).await
        }
        ["subscriptions", name] => {
            let mut out = String::new();
            for (t, q) in find(name)?.subscriptions() {
                let _ = writeln!(out, "topic: {t}, qos: {}", q as u8);
            }
            reply(0, out)
        }
        ["add-subscription", name, topic, qos] => {
            let b = find(name)?;
            let Some(q) = qos.parse::<u8>().ok().and_then(QoS::from_u8) else {
                return Err(reply(1, format!("Invalid QoS {qos}: expected 0, 1 or 2\n")));
            };
            valid_filter(topic)?;
            let r = changed(&b, "Add-subscription", |t| t.add_subscription(topic, q)).await;
            b.resubscribe();
            r
        }
        ["del-subscription", name, topic] => {
            let b = find(name)?;
            let r = changed(&b, "Del-subscription", |t| t.del_subscription(topic)).await;
            b.resubscribe();
            r
        }
        _ => reply(1, USAGE),
    })
}

pub const USAGE: &str = "\
bridges list                                    # List bridges
bridges start <Name>                            # Start a bridge
bridges stop <Name>                             # Stop a bridge
bridges forwards <Name>                         # Show a bridge forward topic
bridges add-forward <Name> <Topic>              # Add bridge forward topic
bridges del-forward <Name> <Topic>              # Delete bridge forward topic
bridges subscriptions <Name>                    # Show a bridge subscriptions topic
bridges add-subscription <Name> <Topic> <Qos>   # Add bridge subscriptions topic
bridges del-subscription <Name> <Topic>         # Delete bridge subscriptions topic
";
