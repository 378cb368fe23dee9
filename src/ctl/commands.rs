//! `emqx_ctl` commands, answered by the node. Output follows EMQX 4's wording. This
//! file only formats: what it shows comes from `crate::query`.

use std::fmt::Write;
use std::sync::Arc;

use super::Reply;
use crate::broker::Broker;
use crate::codec::ReasonCode;
use crate::hooks::HookPoint;
use crate::query::{self, ClientSummary, Page, PageRequest, SessionInfo, SubscriptionInfo};

/// Items fetched per query page while printing a whole list.
const LIST_PAGE: usize = 1_000;

const USAGE: &str = "\
status                                  # Show broker status
broker                                  # Show broker version, uptime and description
broker stats                            # Show broker statistics of clients, topics, subscribers
broker metrics                          # Show the $SYS metrics (the guide's names)
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
acl reload                              # Reload the file ACL (acl_file)
acl cache-clean [all]                   # Clear every client's ACL cache
acl cache-clean node <Node>             # Clear the ACL caches of a node
acl cache-clean <ClientId>              # Clear one client's ACL cache
log set-level <Level>                   # Set the overall log level
log primary-level [<Level>]             # Show or set the primary log level
log handlers list                       # Show log handlers
trace list                              # List all traces
trace start client <ClientId> <File> [<Level>]  # Trace a client to a file
trace stop client <ClientId>            # Stop tracing a client
trace start topic <Topic> <File> [<Level>]      # Trace a topic to a file
trace stop topic <Topic>                # Stop tracing a topic
listeners                               # List listeners
listeners stop    <Identifier>          # Stop a listener
listeners restart <Identifier>          # Restart a listener
plugins list                            # Show loaded plugins
plugins load|unload|reload <Plugin>     # Load, unload or reload a plugin
";

fn ok(output: String) -> Reply {
    Reply { code: 0, output }
}

fn usage(output: &str) -> Reply {
    Reply {
        code: 1,
        output: format!("{output}Usage:\n{USAGE}{}", crate::banned::ctl::USAGE),
    }
}

pub fn run_command(broker: &Arc<Broker>, args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["ping"] => ok("pong\n".into()),
        ["status"] => {
            let info = query::broker_info(broker);
            ok(format!(
                "Node '{}' is started\nquay {} is running\n",
                info.node, info.version
            ))
        }
        ["broker"] => ok(crate::sys::figures::broker_text(broker)),
        ["broker", "stats"] => ok(crate::sys::figures::stats_text(broker)),
        ["broker", "metrics"] => ok(crate::sys::figures::metrics_text(broker)),
        ["metrics"] => {
            let mut out = String::new();
            for m in query::metrics(broker) {
                let _ = writeln!(out, "{:<40}: {}", m.name, m.value);
            }
            ok(out)
        }
        ["log", rest @ ..] => crate::logging::run_command(rest),
        ["trace", rest @ ..] => crate::trace::run_command(broker, rest),
        ["clients", "list"] => ok(all_pages(|req| query::clients(broker, req), client_line)),
        ["clients", "show", id] => found(query::client(broker, id).map(|c| client_line(&c))),
        ["clients", "kick", id] => match broker.registry.get(id) {
            Some(h) if h.kick(ReasonCode::ADMINISTRATIVE_ACTION) => ok("ok\n".into()),
            _ => not_found(),
        },
        ["sessions", "list"] => ok(all_pages(|req| query::sessions(broker, req), session_line)),
        ["sessions", "show", id] => found(query::session(broker, id).map(|s| session_line(&s))),
        ["subscriptions", "list"] => ok(all_pages(
            |req| query::subscriptions(broker, req),
            subscription_line,
        )),
        ["subscriptions", "show", id] => found(
            query::subscriptions_of(broker, id)
                .map(|subs| subs.iter().map(subscription_line).collect()),
        ),
        ["acl", "reload"] => match broker.acl.reload(&broker.hooks) {
            Ok(_) => ok("Reload acl_internal successfully\n".into()),
            // The old rules stay in force.
            Err(e) => Reply {
                code: 1,
                output: format!("Reload acl_internal failed: {e}\n"),
            },
        },
        ["acl", "cache-clean"] | ["acl", "cache-clean", "all"] => {
            broker.hooks.invalidate(HookPoint::ClientCheckAcl);
            ok("ACL cache cleaned on all clients.\n".into())
        }
        ["acl", "cache-clean", "node", node] if *node == broker.config.node.name => {
            broker.hooks.invalidate(HookPoint::ClientCheckAcl);
            ok(format!("ACL cache cleaned on node {node}.\n"))
        }
        ["acl", "cache-clean", "node", node] => Reply {
            code: 1,
            output: format!("ACL cache-clean failed on node {node}: not this node.\n"),
        },
        ["acl", "cache-clean", id] => match broker.registry.get(id) {
            Some(h) if h.clean_acl_cache() => ok(format!("ACL cache cleaned for {id}.\n")),
            _ => not_found(),
        },
        ["retainer", "info"] => ok(format!(
            "retained/total: {}\n",
            query::stats(broker).retained
        )),
        ["retainer", "topics"] => ok(all_pages(
            |req| query::retained(broker, req),
            |t: &String| format!("{t}\n"),
        )),
        [] | ["help"] => usage(""),
        _ => usage(&format!("Unknown command: {}\n", args.join(" "))),
    }
}

/// Every page of a query, one line per item.
fn all_pages<T, K>(
    mut query: impl FnMut(&PageRequest<K>) -> Page<T, K>,
    line: impl Fn(&T) -> String,
) -> String {
    let mut out = String::new();
    let mut req = PageRequest::first(LIST_PAGE);
    loop {
        let page = query(&req);
        for item in &page.items {
            out.push_str(&line(item));
        }
        match page.next {
            Some(next) => req = PageRequest::after(next, LIST_PAGE),
            None => return out,
        }
    }
}

fn found(output: Option<String>) -> Reply {
    output.map(ok).unwrap_or_else(not_found)
}

fn not_found() -> Reply {
    Reply {
        code: 1,
        output: "Not Found.\n".into(),
    }
}

fn client_line(c: &ClientSummary) -> String {
    format!(
        "Client({}, peername={}, connected={}, proto_ver={}, clean_start={}, expiry_interval={}, subscriptions={}, connected_at={})\n",
        c.client_id,
        c.peer,
        c.connected,
        c.proto_ver,
        c.clean_start,
        c.expiry_interval_s,
        c.subscriptions,
        c.connected_at_ms,
    )
}

fn session_line(s: &SessionInfo) -> String {
    format!(
        "Session({}, clean_start={}, expiry_interval={}, connected={}, subscriptions_count={})\n",
        s.client_id, s.clean_start, s.expiry_interval_s, s.connected, s.subscriptions,
    )
}

fn subscription_line(s: &SubscriptionInfo) -> String {
    format!("{} -> {}:{}\n", s.client_id, s.filter, s.qos)
}
