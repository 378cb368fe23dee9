//! `emqx_ctl listeners`, `listeners stop <Identifier>`, `listeners restart
//! <Identifier>`, worded as EMQX 4 (`emqx_mgmt_cli`). An identifier is
//! `mqtt:tcp:external` (EMQX 4.3+) or the older address form `mqtt:tcp:0.0.0.0:1883`
//! / `mqtt:tcp:1883`; the oldest two-word form `stop mqtt:tcp 1883` is taken too.

use std::fmt::Write;
use std::sync::Arc;

use super::Reply;
use crate::listener::control::{Command, ListenerEntry};

const USAGE: &str = "\
listeners                               # List listeners
listeners stop    <Identifier>          # Stop a listener
listeners restart <Identifier>          # Restart a listener
                                        # Identifier: mqtt:tcp:external or mqtt:tcp:0.0.0.0:1883
";

pub async fn run(listeners: &[Arc<ListenerEntry>], args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (verb, id) = match args.as_slice() {
        [] | ["list"] => return reply(0, list(listeners)),
        [verb @ ("stop" | "restart"), id] => (*verb, id.to_string()),
        [verb @ ("stop" | "restart"), proto, addr] => (*verb, format!("{proto}:{addr}")),
        _ => return reply(1, format!("Usage:\n{USAGE}")),
    };
    let Some(entry) = listeners.iter().find(|l| l.is_named(&id)) else {
        let known: Vec<String> = listeners.iter().map(|l| l.config.id()).collect();
        return reply(
            1,
            format!(
                "No such listener \"{id}\" (listeners: {})\n",
                known.join(", ")
            ),
        );
    };
    let name = entry.config.id();
    let on = entry.listen_on();
    match verb {
        "stop" => match entry.command(Command::Stop).await {
            Ok(()) => reply(0, format!("Stop {name} listener on {on} successfully.\n")),
            Err(e) => reply(1, format!("Failed to stop {name} listener on {on}: {e}\n")),
        },
        _ => match entry.command(Command::Restart).await {
            Ok(()) => reply(0, format!("Restarted {name} listener successfully.\n")),
            Err(e) => reply(1, format!("Failed to restart {name} listener: {e}\n")),
        },
    }
}

fn reply(code: i32, output: String) -> Reply {
    Reply { code, output }
}

/// EMQX 4's listing: the id, then its figures (`shutdown_count` lists this
/// listener's refusals by reason, in Erlang's list syntax as EMQX prints it).
fn list(listeners: &[Arc<ListenerEntry>]) -> String {
    let mut out = String::new();
    for l in listeners {
        let refusals: Vec<String> = l
            .refusals()
            .iter()
            .map(|(why, n)| format!("{{{why},{n}}}"))
            .collect();
        let running = if l.bound_now().is_some() {
            "true"
        } else {
            "false"
        };
        let _ = writeln!(out, "{}", l.config.id());
        let rows = [
            ("listen_on", l.listen_on().to_string()),
            ("acceptors", l.config.acceptors.to_string()),
            ("max_conns", l.config.max_connections.to_string()),
            ("current_conn", l.current().to_string()),
            ("shutdown_count", format!("[{}]", refusals.join(","))),
            ("running", running.to_string()),
        ];
        for (key, value) in rows {
            let _ = writeln!(out, "  {key:<16}: {value}");
        }
    }
    out
}
