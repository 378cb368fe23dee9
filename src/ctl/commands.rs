//! `emqx_ctl` commands, answered by the node. Output follows EMQX 4's wording.

use std::fmt::Write;
use std::sync::Arc;

use super::Reply;
use crate::broker::registry::SessionHandle;
use crate::broker::Broker;
use crate::codec::ReasonCode;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const USAGE: &str = "\
status                                  # Show broker status
broker                                  # Show broker version, uptime and description
broker stats                            # Show broker statistics of clients, topics, subscribers
metrics                                 # Show broker metrics
clients list                            # List all clients
clients show <ClientId>                 # Show a client
clients kick <ClientId>                 # Kick out a client
sessions list                           # List all sessions
sessions show <ClientId>                # Show a session
subscriptions list                      # List all subscriptions
subscriptions show <ClientId>           # Show subscriptions of a client
retainer info                           # Show the count of retained messages
retainer topics                         # Show all topics of retained messages
";

fn ok(output: String) -> Reply {
    Reply { code: 0, output }
}

fn usage(output: &str) -> Reply {
    Reply {
        code: 1,
        output: format!("{output}Usage:\n{USAGE}"),
    }
}

pub fn run_command(broker: &Arc<Broker>, args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ping"] => ok("pong\n".into()),
        ["status"] => ok(format!(
            "Node '{}' is started\nquay {VERSION} is running\n",
            broker.config.node.name
        )),
        ["broker"] => ok(format!(
            "sysdescr  : Quay durable MQTT broker\nversion   : {VERSION}\nuptime    : {} seconds\n",
            broker.started_at.elapsed().as_secs()
        )),
        ["broker", "stats"] => {
            let sessions = broker.registry.all();
            let connected = sessions.iter().filter(|s| s.state().conn.is_some()).count();
            ok(format!(
                "connections.count       : {connected}\nconnections.hibernated  : {}\nsessions.count          : {}\nsessions.persistent.count : {}\nsubscriptions.count     : {}\nretained.count          : {}\n",
                broker.hibernated.load(std::sync::atomic::Ordering::Relaxed),
                sessions.len(),
                sessions.iter().filter(|s| s.state().persistent).count(),
                broker.registry.route_count(),
                broker.retained.len()
            ))
        }
        ["metrics"] => {
            let mut out = String::new();
            for (name, value) in broker.metrics.snapshot() {
                let _ = writeln!(out, "{name:<40}: {value}");
            }
            ok(out)
        }
        ["clients", "list"] => ok(list(broker, |s| s.state().conn.is_some(), client_line)),
        ["clients", "show", id] => show(broker, id, client_line),
        ["clients", "kick", id] => match broker.registry.get(id) {
            Some(h) if h.kick(ReasonCode::ADMINISTRATIVE_ACTION) => ok("ok\n".into()),
            _ => Reply {
                code: 1,
                output: "Not Found.\n".into(),
            },
        },
        ["sessions", "list"] => ok(list(broker, |_| true, session_line)),
        ["sessions", "show", id] => show(broker, id, session_line),
        ["subscriptions", "list"] => ok(list(broker, |_| true, subscriptions_lines)),
        ["subscriptions", "show", id] => show(broker, id, subscriptions_lines),
        ["retainer", "info"] => ok(format!("retained/total: {}\n", broker.retained.len())),
        ["retainer", "topics"] => {
            let mut out = String::new();
            for t in broker.retained.matching("#") {
                let _ = writeln!(out, "{t}");
            }
            ok(out)
        }
        [] | ["help"] => usage(""),
        _ => usage(&format!("Unknown command: {}\n", args.join(" "))),
    }
}

fn list(
    broker: &Broker,
    keep: impl Fn(&SessionHandle) -> bool,
    line: fn(&SessionHandle) -> String,
) -> String {
    let mut sessions = broker.registry.all();
    sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    sessions
        .iter()
        .filter(|s| keep(s))
        .map(|s| line(s))
        .collect()
}

fn show(broker: &Broker, id: &str, line: fn(&SessionHandle) -> String) -> Reply {
    match broker.registry.get(id) {
        Some(h) => ok(line(&h)),
        None => Reply {
            code: 1,
            output: "Not Found.\n".into(),
        },
    }
}

fn client_line(s: &SessionHandle) -> String {
    let st = s.state();
    format!(
        "Client({}, peername={}, connected={}, proto_ver={}, clean_start={}, expiry_interval={}, subscriptions={}, connected_at={})\n",
        s.client_id,
        st.peer,
        st.conn.is_some(),
        st.protocol_level,
        !st.persistent,
        st.expiry_interval_s,
        st.subscriptions.len(),
        st.connected_at_ms,
    )
}

fn session_line(s: &SessionHandle) -> String {
    let st = s.state();
    format!(
        "Session({}, clean_start={}, expiry_interval={}, connected={}, subscriptions_count={})\n",
        s.client_id,
        !st.persistent,
        st.expiry_interval_s,
        st.conn.is_some(),
        st.subscriptions.len(),
    )
}

fn subscriptions_lines(s: &SessionHandle) -> String {
    let st = s.state();
    let mut subs: Vec<_> = st.subscriptions.iter().collect();
    subs.sort_by(|a, b| a.0.cmp(b.0));
    subs.into_iter()
        .map(|(filter, o)| format!("{} -> {}:{}\n", s.client_id, filter, o.qos as u8))
        .collect()
}
