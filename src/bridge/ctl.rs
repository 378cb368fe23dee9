//! `emqx_ctl bridges ...`, with the guide's wording. Forward and subscription
//! changes are written durably (`topics_file`: tmp, fsync, rename) before
//! "successfully" is printed, and replace the configured lists at the next start.

use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::Bridge;
use crate::codec::QoS;
use crate::ctl::Reply;

fn reply(code: i32, output: impl Into<String>) -> Reply {
    Reply {
        code,
        output: output.into(),
    }
}

/// Where `name`'s forwards and subscriptions live once changed by `emqx_ctl`.
pub fn topics_file(data_dir: &std::path::Path, name: &str) -> PathBuf {
    data_dir.join(format!("bridge_{name}.topics"))
}

/// Read a topics file: `forward <filter>` and `sub <filter> <qos>` lines.
pub fn read_topics(path: &std::path::Path) -> Option<(Vec<String>, Vec<(String, QoS)>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (mut fwd, mut subs) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut w = line.splitn(3, ' ');
        match (w.next(), w.next(), w.next()) {
            (Some("forward"), Some(t), None) => fwd.push(t.to_string()),
            (Some("sub"), Some(q), Some(t)) => {
                if let Some(q) = q.parse::<u8>().ok().and_then(QoS::from_u8) {
                    subs.push((t.to_string(), q))
                }
            }
            _ => tracing::warn!(path = %path.display(), line, "bridge topics file: line ignored"),
        }
    }
    Some((fwd, subs))
}

fn save(b: &Bridge) -> std::io::Result<()> {
    use std::io::Write as _;
    let path = topics_file(&b.broker.config.node.data_dir, &b.config.name);
    let mut text = String::new();
    for f in b.forwards() {
        let _ = writeln!(text, "forward {f}");
    }
    for (t, q) in b.subscriptions() {
        let _ = writeln!(text, "sub {} {t}", q as u8);
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn saved(b: &Bridge, what: &str) -> Reply {
    match save(b) {
        Ok(()) => reply(0, format!("{what} topic successfully.\n")),
        Err(e) => reply(1, format!("{what} topic failed: {e}\n")),
    }
}

pub fn run(args: &[&str]) -> Reply {
    let Some(bridges) = super::running() else {
        return reply(1, "The emqx_bridge_mqtt plugin is not loaded.\n");
    };
    let find = |name: &str| -> Result<Arc<Bridge>, Reply> {
        bridges
            .iter()
            .find(|b| b.config.name == name)
            .cloned()
            .ok_or_else(|| reply(1, format!("Bridge {name} not found.\n")))
    };
    let r = (|| -> Result<Reply, Reply> {
        Ok(match args {
            ["list"] => {
                let mut out = String::new();
                for b in &bridges {
                    let _ = writeln!(out, "name: {}     status: {}", b.config.name, b.status());
                }
                reply(0, out)
            }
            ["start", name] => {
                find(name)?.start();
                reply(0, "Start bridge successfully.\n")
            }
            ["stop", name] => {
                find(name)?.stop();
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
                if crate::topic::validate_filter(topic, 0).is_err() {
                    return Err(reply(1, format!("Invalid topic filter: {topic}\n")));
                }
                b.edit_forwards(|f| {
                    if !f.iter().any(|x| x == topic) {
                        f.push(topic.to_string())
                    }
                });
                saved(&b, "Add-forward")
            }
            ["del-forward" | "del-forwards", name, topic] => {
                let b = find(name)?;
                b.edit_forwards(|f| f.retain(|x| x != topic));
                saved(&b, "Del-forward")
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
                    return Err(reply(1, format!("Invalid QoS: {qos}\n")));
                };
                if crate::topic::validate_filter(topic, 0).is_err() {
                    return Err(reply(1, format!("Invalid topic filter: {topic}\n")));
                }
                b.edit_subscriptions(|s| {
                    s.retain(|(t, _)| t != topic);
                    s.push((topic.to_string(), q));
                });
                let r = saved(&b, "Add-subscription");
                b.resubscribe();
                r
            }
            ["del-subscription", name, topic] => {
                let b = find(name)?;
                b.edit_subscriptions(|s| s.retain(|(t, _)| t != topic));
                let r = saved(&b, "Del-subscription");
                b.resubscribe();
                r
            }
            _ => reply(1, USAGE),
        })
    })();
    r.unwrap_or_else(|e| e)
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
