//! One rule of `etc/acl.conf` and how it matches a client's publish or subscribe, as
//! EMQX 4's file ACL (`emqx_access_rule`) does:
//!
//! `{allow|deny, Who, subscribe|publish|pubsub, [Topic, ...]}` or `{allow|deny, all}`.
//! Who is `all`, `{user, "u"}`, `{client, "c"}`, `{ipaddr, "CIDR"}`,
//! `{ipaddrs, ["CIDR", ...]}`, `{'and', [Who, ...]}` or `{'or', [Who, ...]}`. A topic is
//! a filter (wildcards, `%u` and `%c` replaced by the client's username and client id)
//! or `{eq, "filter"}`, which matches that exact filter only.

use super::term::{Pos, Term};
use crate::config::{Cidr, CidrError};
use crate::hooks::{Access, ClientInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permission: Permission,
    who: Who,
    access: RuleAccess,
    /// None for `{allow|deny, all}`: every topic.
    topics: Option<Vec<TopicRule>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    All,
    User(String),
    Client(String),
    Ip(Vec<Cidr>),
    And(Vec<Who>),
    Or(Vec<Who>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleAccess {
    Subscribe,
    Publish,
    PubSub,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TopicRule {
    /// Split into levels; may hold wildcards and `%u`/`%c`.
    Filter(Vec<String>),
    /// `{eq, "t"}`: this exact string.
    Eq(String),
}

/// A rule that is valid Erlang but not a valid rule: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub pos: Pos,
    pub message: String,
}

fn err<T>(pos: Pos, message: impl Into<String>) -> Result<T, RuleError> {
    Err(RuleError {
        pos,
        message: message.into(),
    })
}

impl Rule {
    pub fn compile(term: &Term) -> Result<Rule, RuleError> {
        let Term::Tuple(items, pos) = term else {
            return err(
                term.pos(),
                "a rule is a tuple: {allow|deny, Who, Access, Topics} or {allow|deny, all}",
            );
        };
        let permission = match items.first() {
            Some(Term::Atom(a, _)) if a == "allow" => Permission::Allow,
            Some(Term::Atom(a, _)) if a == "deny" => Permission::Deny,
            Some(other) => return err(other.pos(), "expected allow or deny"),
            None => return err(*pos, "an empty rule"),
        };
        match items.as_slice() {
            [_, Term::Atom(all, _)] if all == "all" => Ok(Rule {
                permission,
                who: Who::All,
                access: RuleAccess::PubSub,
                topics: None,
            }),
            [_, who, access, Term::List(topics, _)] => Ok(Rule {
                permission,
                who: compile_who(who)?,
                access: compile_access(access)?,
                topics: Some(topics.iter().map(compile_topic).collect::<Result<_, _>>()?),
            }),
            [_, _, _, other] => err(other.pos(), "expected a list of topics: [\"t/#\", ...]"),
            _ => err(
                *pos,
                "a rule has 4 elements ({allow|deny, Who, Access, Topics}) or is {allow|deny, all}",
            ),
        }
    }

    /// Whether this rule speaks about `client` doing `access` on `topic` (a topic
    /// name for publish, a filter for subscribe).
    pub fn matches(&self, client: &ClientInfo, access: Access, topic: &str) -> bool {
        let access_ok = matches!(
            (self.access, access),
            (RuleAccess::PubSub, _)
                | (RuleAccess::Publish, Access::Publish)
                | (RuleAccess::Subscribe, Access::Subscribe)
        );
        if !access_ok || !self.who.matches(client) {
            return false;
        }
        match &self.topics {
            None => true,
            Some(topics) => topics.iter().any(|t| t.matches(client, topic)),
        }
    }
}

fn compile_who(term: &Term) -> Result<Who, RuleError> {
    match term {
        Term::Atom(a, _) if a == "all" => Ok(Who::All),
        Term::Tuple(items, pos) => match items.as_slice() {
            [Term::Atom(k, _), Term::Str(s, _)] if k == "user" => Ok(Who::User(s.clone())),
            [Term::Atom(k, _), Term::Str(s, _)] if k == "client" => Ok(Who::Client(s.clone())),
            [Term::Atom(k, _), Term::Str(s, p)] if k == "ipaddr" => Ok(Who::Ip(vec![cidr(s, *p)?])),
            [Term::Atom(k, _), Term::List(list, _)] if k == "ipaddrs" => list
                .iter()
                .map(|t| match t {
                    Term::Str(s, p) => cidr(s, *p),
                    other => err(other.pos(), "expected an address string: \"10.0.0.0/8\""),
                })
                .collect::<Result<_, _>>()
                .map(Who::Ip),
            [Term::Atom(k, _), Term::List(list, _)] if k == "and" || k == "or" => {
                let whos = list.iter().map(compile_who).collect::<Result<_, _>>()?;
                Ok(if k == "and" {
                    Who::And(whos)
                } else {
                    Who::Or(whos)
                })
            }
            _ => err(
                *pos,
                "expected {user, \"u\"}, {client, \"c\"}, {ipaddr, \"CIDR\"}, \
                 {ipaddrs, [\"CIDR\", ...]}, {'and', [...]} or {'or', [...]}",
            ),
        },
        other => err(
            other.pos(),
            "expected all or a {user|client|ipaddr|ipaddrs|'and'|'or', ...} tuple",
        ),
    }
}

fn compile_access(term: &Term) -> Result<RuleAccess, RuleError> {
    match term {
        Term::Atom(a, _) if a == "subscribe" => Ok(RuleAccess::Subscribe),
        Term::Atom(a, _) if a == "publish" => Ok(RuleAccess::Publish),
        Term::Atom(a, _) if a == "pubsub" => Ok(RuleAccess::PubSub),
        other => err(other.pos(), "expected subscribe, publish or pubsub"),
    }
}

fn compile_topic(term: &Term) -> Result<TopicRule, RuleError> {
    match term {
        Term::Str(s, p) => {
            if s.is_empty() {
                return err(*p, "an empty topic");
            }
            Ok(TopicRule::Filter(
                s.split('/').map(str::to_string).collect(),
            ))
        }
        Term::Tuple(items, pos) => match items.as_slice() {
            [Term::Atom(k, _), Term::Str(s, _)] if k == "eq" => Ok(TopicRule::Eq(s.clone())),
            _ => err(*pos, "expected {eq, \"topic\"}"),
        },
        other => err(other.pos(), "expected a topic string or {eq, \"topic\"}"),
    }
}

fn cidr(text: &str, pos: Pos) -> Result<Cidr, RuleError> {
    Cidr::parse(text).map_err(|e| RuleError {
        pos,
        message: match e {
            CidrError::Address => format!("{text:?} is not an IP address or CIDR"),
            CidrError::Prefix(max) => format!("{text:?}: the prefix length must be 0..={max}"),
        },
    })
}

impl Who {
    fn matches(&self, client: &ClientInfo) -> bool {
        match self {
            Who::All => true,
            Who::User(u) => client.username() == Some(u.as_str()),
            Who::Client(c) => &*client.client_id == c.as_str(),
            Who::Ip(nets) => nets.iter().any(|n| n.contains(client.peer.ip())),
            Who::And(all) => all.iter().all(|w| w.matches(client)),
            Who::Or(any) => any.iter().any(|w| w.matches(client)),
        }
    }
}

impl TopicRule {
    fn matches(&self, client: &ClientInfo, topic: &str) -> bool {
        match self {
            TopicRule::Eq(t) => t == topic,
            TopicRule::Filter(levels) => {
                // What replaces a placeholder is one plain level, even if it holds
                // `#`, `+` or `/`: a client id cannot widen a rule. A placeholder
                // the client has no value for matches nothing.
                if levels.iter().any(|l| l == "%u") && client.username().is_none() {
                    return false;
                }
                let filter = levels.iter().map(|level| match level.as_str() {
                    "%u" => Level::Exact(client.username().unwrap_or_default()),
                    "%c" => Level::Exact(&client.client_id),
                    "#" => Level::Hash,
                    "+" => Level::Plus,
                    other => Level::Exact(other),
                });
                matches_filter(topic, filter)
            }
        }
    }
}

enum Level<'a> {
    Exact(&'a str),
    Plus,
    Hash,
}

/// Whether `topic` (a topic name, or a subscription's filter) is covered by the
/// rule's `filter`: a subscription's `+` by the rule's `+` or `#`, its `#` by the
/// rule's `#` only. A rule's wildcard at the
/// first level does not cover `$`-topics (MQTT 4.7.2), so `#` never grants `$SYS/...`.
fn matches_filter<'a>(topic: &str, filter: impl Iterator<Item = Level<'a>>) -> bool {
    let mut levels = topic.split('/');
    let dollar = topic.starts_with('$');
    for (i, f) in filter.enumerate() {
        match f {
            Level::Hash | Level::Plus if i == 0 && dollar => return false,
            Level::Hash => return true,
            // A subscription's `#` asks for every level below: only the rule's `#`
            // grants that (EMQX lets `+` grant it too).
            Level::Plus => {
                if matches!(levels.next(), None | Some("#")) {
                    return false;
                }
            }
            Level::Exact(f) => {
                if levels.next() != Some(f) {
                    return false;
                }
            }
        }
    }
    levels.next().is_none()
}
