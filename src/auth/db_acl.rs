//! ACL rules that a backend returns for one client (EMQX 4's `mqtt_acl` rows in MySQL
//! and PostgreSQL, `HGETALL mqtt_acl:%u` in Redis), compiled into the same rules as
//! `etc/acl.conf` (`crate::acl::Rule`), so topics, wildcards and `%u`/`%c` match
//! exactly as they do there.
//!
//! A row: `allow` (1 allow, 0 deny), `ipaddr` (address or CIDR), `username`
//! (`$all` = everyone), `clientid`, `access` (1 subscribe, 2 publish, 3 both), `topic`.
//! Who the row is about is every non-empty one of ipaddr, username and clientid
//! together (EMQX's `{'and', [...]}`), or everyone for `$all`.
//!
//! Deciding: a query without `ORDER BY` returns rows in no defined order, so the
//! answer must not depend on it: if any matching row denies, deny; else if any allows,
//! allow; no row or no matching row: ignore (the next ACL, then `acl_nomatch`).

use crate::acl::term::{Pos, Term};
use crate::acl::{Permission, Rule};
use crate::hooks::{Access, AclResult, ClientInfo};

use super::sql::{column, Row};
use super::stored::truthy;

const AT: Pos = Pos { line: 0, col: 0 };

fn atom(s: &str) -> Term {
    Term::Atom(s.to_string(), AT)
}

fn string(s: &str) -> Term {
    Term::Str(s.to_string(), AT)
}

fn access_atom(access: &str) -> Result<&'static str, String> {
    match access.trim() {
        "1" => Ok("subscribe"),
        "2" => Ok("publish"),
        "3" => Ok("pubsub"),
        other => Err(format!(
            "access {other:?} is not 1 (subscribe), 2 (publish) or 3 (pubsub)"
        )),
    }
}

fn compile(allow: bool, who: Term, access: &str, topic: &str) -> Result<Rule, String> {
    if topic.is_empty() {
        return Err("an empty topic".to_string());
    }
    let term = Term::Tuple(
        vec![
            atom(if allow { "allow" } else { "deny" }),
            who,
            atom(access_atom(access)?),
            Term::List(vec![string(topic)], AT),
        ],
        AT,
    );
    Rule::compile(&term).map_err(|e| e.message)
}

/// One `mqtt_acl` row.
pub fn from_row(row: &Row) -> Result<Rule, String> {
    let get = |name| column(row, name).filter(|v| !v.trim().is_empty());
    let allow = truthy(get("allow").ok_or("no allow column")?);
    let who = if get("username") == Some("$all") {
        atom("all")
    } else {
        let mut all = Vec::new();
        if let Some(ip) = get("ipaddr") {
            all.push(Term::Tuple(vec![atom("ipaddr"), string(ip.trim())], AT));
        }
        if let Some(u) = get("username") {
            all.push(Term::Tuple(vec![atom("user"), string(u)], AT));
        }
        if let Some(c) = get("clientid") {
            all.push(Term::Tuple(vec![atom("client"), string(c)], AT));
        }
        match all.len() {
            0 => return Err("a row with no ipaddr, username or clientid".to_string()),
            1 => all.remove(0),
            _ => Term::Tuple(vec![atom("and"), Term::List(all, AT)], AT),
        }
    };
    compile(
        allow,
        who,
        get("access").ok_or("no access column")?,
        get("topic").ok_or("no topic column")?,
    )
}

/// One field of a Redis ACL hash: `topic => access`, always an allow rule.
pub fn from_redis(topic: &str, access: &str) -> Result<Rule, String> {
    compile(true, atom("all"), access, topic)
}

/// Deny wins over allow; nothing matching is ignore.
pub fn decide(rules: &[Rule], client: &ClientInfo, access: Access, topic: &str) -> AclResult {
    let mut allowed = false;
    for r in rules.iter().filter(|r| r.matches(client, access, topic)) {
        match r.permission {
            Permission::Deny => return AclResult::Deny,
            Permission::Allow => allowed = true,
        }
    }
    if allowed {
        AclResult::Allow
    } else {
        AclResult::Ignore
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;
    use std::sync::Arc;

    fn client(user: &str, id: &str, ip: &str) -> ClientInfo {
        let mut c = ClientInfo::new(
            Arc::from(id),
            format!("{ip}:5000").parse().unwrap(),
            ProtocolVersion::V5,
            Arc::from("tcp:external"),
            Arc::from("external"),
        );
        c.username = Some(Arc::from(user));
        c
    }

    fn row(cols: &[(&str, Option<&str>)]) -> Row {
        cols.iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    fn acl(
        allow: &str,
        ip: Option<&str>,
        user: Option<&str>,
        id: Option<&str>,
        access: &str,
        topic: &str,
    ) -> Rule {
        from_row(&row(&[
            ("allow", Some(allow)),
            ("ipaddr", ip),
            ("username", user),
            ("clientid", id),
            ("access", Some(access)),
            ("topic", Some(topic)),
        ]))
        .unwrap()
    }

    #[test]
    fn rows_match_as_emqx_and_deny_wins() {
        let alice = client("alice", "c1", "127.0.0.1");
        let rules = vec![
            acl("1", None, Some("$all"), None, "3", "public/#"),
            acl("0", None, Some("alice"), None, "2", "public/secret"),
            acl("1", None, Some("alice"), Some("c1"), "1", "own/%u/%c"),
            acl("1", Some("10.0.0.0/8"), None, None, "3", "lan/#"),
        ];
        let d = |c: &ClientInfo, a, t| decide(&rules, c, a, t);
        assert_eq!(d(&alice, Access::Publish, "public/x"), AclResult::Allow);
        assert_eq!(d(&alice, Access::Publish, "public/secret"), AclResult::Deny);
        assert_eq!(
            d(&alice, Access::Subscribe, "public/secret"),
            AclResult::Allow
        );
        assert_eq!(
            d(&alice, Access::Subscribe, "own/alice/c1"),
            AclResult::Allow
        );
        assert_eq!(
            d(&alice, Access::Publish, "own/alice/c1"),
            AclResult::Ignore
        );
        let other_id = client("alice", "c2", "127.0.0.1");
        assert_eq!(
            d(&other_id, Access::Subscribe, "own/alice/c1"),
            AclResult::Ignore
        );
        assert_eq!(d(&alice, Access::Publish, "lan/x"), AclResult::Ignore);
        assert_eq!(
            d(&client("bob", "b", "10.1.2.3"), Access::Publish, "lan/x"),
            AclResult::Allow
        );
        assert_eq!(decide(&[], &alice, Access::Publish, "x"), AclResult::Ignore);
    }

    #[test]
    fn bad_rows_are_refused_with_a_reason() {
        let r = |access, ip: Option<&str>, user: Option<&str>| {
            from_row(&row(&[
                ("allow", Some("1")),
                ("ipaddr", ip),
                ("username", user),
                ("clientid", None),
                ("access", Some(access)),
                ("topic", Some("t")),
            ]))
        };
        assert!(r("4", None, Some("u")).unwrap_err().contains("access"));
        assert!(r("1", None, None).unwrap_err().contains("no ipaddr"));
        assert!(r("1", Some("not-an-ip"), None).is_err());
        assert!(from_redis("a/#", "2").is_ok() && from_redis("", "2").is_err());
    }
}
