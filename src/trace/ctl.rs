//! `emqx_ctl trace ...`, with EMQX 4's wording.

use std::path::Path;
use std::sync::Arc;

use super::Target;
use crate::broker::Broker;
use crate::config::LogLevel;
use crate::ctl::Reply;

fn reply(code: i32, output: String) -> Reply {
    Reply { code, output }
}

fn target(kind: &str, name: &str) -> Option<Target> {
    match kind {
        "client" => Some(Target::Client(name.to_string())),
        "topic" => Some(Target::Topic(name.to_string())),
        _ => None,
    }
}

/// `all` (None) or a level name.
fn level(name: &str) -> Result<Option<LogLevel>, ()> {
    if name == "all" {
        return Ok(None);
    }
    LogLevel::ALL
        .into_iter()
        .find(|l| l.as_str() == name)
        .map(Some)
        .ok_or(())
}

const USAGE: &str = "\
Usage:
trace list                                        # List all traces
trace start client <ClientId> <File> [<Level>]    # Trace a client to a file
trace stop client <ClientId>                      # Stop tracing a client
trace start topic <Topic> <File> [<Level>]        # Trace a topic to a file
trace stop topic <Topic>                          # Stop tracing a topic
";

/// `args` after `trace`.
pub fn run_command(broker: &Arc<Broker>, args: &[&str]) -> Reply {
    let traces = &broker.traces;
    match args {
        ["list"] => {
            let mut out = String::new();
            for t in traces.list() {
                out.push_str(&format!(
                    "Trace({}={}, level={}, destination={:?})\n",
                    t.target.kind(),
                    t.target.name(),
                    t.level.map_or("all", LogLevel::as_str),
                    t.path.display().to_string()
                ));
            }
            reply(0, out)
        }
        ["start", kind, name, file, rest @ ..] if rest.len() <= 1 => {
            let Some(target) = target(kind, name) else {
                return reply(1, USAGE.into());
            };
            let Ok(level) = level(rest.first().copied().unwrap_or("all")) else {
                return reply(1, format!("[error] invalid level: {}\n", rest[0]));
            };
            // A relative file is relative to the release root, as the node's other paths.
            let path = broker.config.release_root.join(Path::new(file));
            let (who, name) = (target.kind(), target.name().to_string());
            match traces.start(&broker.hooks, target, level, path) {
                Ok(()) => reply(0, format!("trace {who} {name} successfully\n")),
                Err(e) => reply(1, format!("[error] trace {who} {name}: {e}\n")),
            }
        }
        ["stop", kind, name] => {
            let Some(target) = target(kind, name) else {
                return reply(1, USAGE.into());
            };
            let who = target.kind();
            match traces.stop(&broker.hooks, &target) {
                Ok(()) => reply(0, format!("stop tracing {who} {name} successfully\n")),
                Err(e) => reply(1, format!("[error] stop tracing {who} {name}: {e}\n")),
            }
        }
        _ => reply(1, USAGE.into()),
    }
}
