use std::net::SocketAddr;
use std::sync::Arc;

use super::term::forms;
use super::{check, read, Rule};
use crate::codec::ProtocolVersion;
use crate::hooks::{Access, AclResult, ClientInfo};

fn client(id: &str, user: Option<&str>, ip: &str) -> ClientInfo {
    let peer: SocketAddr = format!("{ip}:5000").parse().unwrap();
    let mut info = ClientInfo::new(
        Arc::from(id),
        peer,
        ProtocolVersion::V5,
        Arc::from("external"),
        Arc::from("external"),
    );
    info.username = user.map(Arc::from);
    info
}

fn rules(text: &str) -> Vec<Rule> {
    forms(text)
        .unwrap()
        .iter()
        .map(|t| Rule::compile(t).unwrap())
        .collect()
}

const GUIDE_DEFAULT: &str = r##"
%% The guide's default file.
{allow, {user, "dashboard"}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, pubsub, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, all}.
"##;

#[test]
fn the_shipped_default_lets_only_localhost_and_dashboard_see_sys() {
    let r = rules(GUIDE_DEFAULT);
    let local = client("a", None, "127.0.0.1");
    let remote = client("b", None, "10.1.2.3");
    let dashboard = client("c", Some("dashboard"), "10.1.2.3");
    assert_eq!(
        check(&r, &local, Access::Subscribe, "$SYS/#"),
        AclResult::Allow
    );
    assert_eq!(check(&r, &local, Access::Subscribe, "#"), AclResult::Allow);
    assert_eq!(
        check(&r, &remote, Access::Subscribe, "$SYS/#"),
        AclResult::Deny
    );
    assert_eq!(
        check(&r, &remote, Access::Subscribe, "$SYS/brokers/x/uptime"),
        AclResult::Deny
    );
    assert_eq!(check(&r, &remote, Access::Subscribe, "#"), AclResult::Deny);
    // {eq, "#"} is that filter only: narrower filters fall through to {allow, all}.
    assert_eq!(
        check(&r, &remote, Access::Subscribe, "a/#"),
        AclResult::Allow
    );
    assert_eq!(check(&r, &remote, Access::Publish, "a/b"), AclResult::Allow);
    assert_eq!(
        check(&r, &dashboard, Access::Subscribe, "$SYS/#"),
        AclResult::Allow
    );
    assert_eq!(
        check(&r, &dashboard, Access::Publish, "$SYS/x"),
        AclResult::Allow
    );
}

#[test]
fn who_forms() {
    let r = rules(
        r##"
        {allow, {client, "c1"}, publish, ["t/c1"]}.
        {allow, {ipaddrs, ["10.0.0.0/8", "192.168.1.7"]}, publish, ["t/net"]}.
        {allow, {'and', [{user, "u"}, {ipaddr, "172.16.0.0/12"}]}, publish, ["t/and"]}.
        {allow, {'or', [{user, "x"}, {client, "y"}]}, publish, ["t/or"]}.
        {deny, all}.
        "##,
    );
    let c1 = client("c1", None, "1.1.1.1");
    assert_eq!(check(&r, &c1, Access::Publish, "t/c1"), AclResult::Allow);
    assert_eq!(check(&r, &c1, Access::Publish, "t/net"), AclResult::Deny);
    let net = client("z", None, "10.200.0.1");
    assert_eq!(check(&r, &net, Access::Publish, "t/net"), AclResult::Allow);
    let host = client("z", None, "192.168.1.7");
    assert_eq!(check(&r, &host, Access::Publish, "t/net"), AclResult::Allow);
    let other_host = client("z", None, "192.168.1.8");
    assert_eq!(
        check(&r, &other_host, Access::Publish, "t/net"),
        AclResult::Deny
    );
    // IPv4-mapped IPv6 peers match IPv4 rules.
    let mapped = client("z", None, "[::ffff:10.0.0.9]");
    assert_eq!(
        check(&r, &mapped, Access::Publish, "t/net"),
        AclResult::Allow
    );
    let both = client("z", Some("u"), "172.20.0.1");
    let user_only = client("z", Some("u"), "8.8.8.8");
    assert_eq!(check(&r, &both, Access::Publish, "t/and"), AclResult::Allow);
    assert_eq!(
        check(&r, &user_only, Access::Publish, "t/and"),
        AclResult::Deny
    );
    assert_eq!(
        check(&r, &client("y", None, "8.8.8.8"), Access::Publish, "t/or"),
        AclResult::Allow
    );
    assert_eq!(
        check(
            &r,
            &client("q", Some("x"), "8.8.8.8"),
            Access::Publish,
            "t/or"
        ),
        AclResult::Allow
    );
    assert_eq!(
        check(&r, &client("q", None, "8.8.8.8"), Access::Publish, "t/or"),
        AclResult::Deny
    );
}

#[test]
fn access_kinds_placeholders_and_wildcards() {
    let r = rules(
        r##"
        {allow, all, publish, ["up/%c/#"]}.
        {allow, all, subscribe, ["down/%u/+"]}.
        "##,
    );
    let c = client("dev1", Some("alice"), "8.8.8.8");
    assert_eq!(
        check(&r, &c, Access::Publish, "up/dev1/temp"),
        AclResult::Allow
    );
    assert_eq!(check(&r, &c, Access::Publish, "up/dev1"), AclResult::Allow);
    assert_eq!(
        check(&r, &c, Access::Publish, "up/dev2/temp"),
        AclResult::Ignore
    );
    // A publish rule says nothing about subscribing.
    assert_eq!(
        check(&r, &c, Access::Subscribe, "up/dev1/temp"),
        AclResult::Ignore
    );
    assert_eq!(
        check(&r, &c, Access::Subscribe, "down/alice/cmd"),
        AclResult::Allow
    );
    // The client's own wildcards are plain levels to the rule's: `+` covers `+`,
    // not `#`.
    assert_eq!(
        check(&r, &c, Access::Subscribe, "down/alice/+"),
        AclResult::Allow
    );
    assert_eq!(
        check(&r, &c, Access::Subscribe, "down/alice/#"),
        AclResult::Ignore
    );
    assert_eq!(
        check(&r, &c, Access::Subscribe, "down/alice/a/b"),
        AclResult::Ignore
    );
    // No username: a %u rule matches nothing.
    let anon = client("dev1", None, "8.8.8.8");
    assert_eq!(
        check(&r, &anon, Access::Subscribe, "down/%u/cmd"),
        AclResult::Ignore
    );
    // Injected wildcards in the client id do not widen the rule.
    let sneaky = client("#", None, "8.8.8.8");
    assert_eq!(
        check(&r, &sneaky, Access::Publish, "up/other/x"),
        AclResult::Ignore
    );
}

#[test]
fn rule_wildcards_do_not_cover_dollar_topics() {
    let r = rules(r##"{allow, all, pubsub, ["#"]}. {allow, all, pubsub, ["+/x"]}."##);
    let c = client("a", None, "8.8.8.8");
    assert_eq!(
        check(&r, &c, Access::Subscribe, "$SYS/x"),
        AclResult::Ignore
    );
    assert_eq!(check(&r, &c, Access::Publish, "$SYS/x"), AclResult::Ignore);
    assert_eq!(check(&r, &c, Access::Publish, "a/x"), AclResult::Allow);
}

fn error_of(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.conf");
    std::fs::write(&path, text).unwrap();
    let e = read(&path).unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    shown[path.display().to_string().len()..].to_string()
}

#[test]
fn errors_name_line_and_column() {
    assert_eq!(
        error_of("{allow, all}.\n{allow, all, pubsub, [\"a\"]\n"),
        ":3:1: expected `,` or `}`, found end of file"
    );
    assert_eq!(
        error_of("{allow, all}\n{deny, all}."),
        ":2:1: expected a full stop `.` after the rule, found '{'"
    );
    assert_eq!(
        error_of("%% c\n  {permit, all}."),
        ":2:4: expected allow or deny"
    );
    assert_eq!(
        error_of("{allow, {ipaddr, \"10.0.0.0/33\"}, pubsub, [\"#\"]}."),
        ":1:18: \"10.0.0.0/33\": the prefix length must be 0..=32"
    );
    assert_eq!(
        error_of("{allow, all, pubish, [\"#\"]}."),
        ":1:14: expected subscribe, publish or pubsub"
    );
    assert_eq!(
        error_of("{allow, {user, dashboard}, pubsub, [\"#\"]}."),
        ":1:9: expected {user, \"u\"}, {client, \"c\"}, {ipaddr, \"CIDR\"}, {ipaddrs, [\"CIDR\", ...]}, {'and', [...]} or {'or', [...]}"
    );
    assert_eq!(
        error_of("{allow, all, pubsub, \"#\"}."),
        ":1:22: expected a list of topics: [\"t/#\", ...]"
    );
    assert_eq!(error_of("{allow, \"x"), ":1:9: unterminated \"...\"");
}

#[test]
fn a_missing_file_is_flagged_as_such() {
    let e = read(std::path::Path::new("/nonexistent/acl.conf")).unwrap_err();
    assert!(e.not_found);
}

proptest::proptest! {
    /// Whatever the bytes, reading gives rules or an error, never a panic.
    #[test]
    fn any_text_parses_or_errs(text in "[{}\\[\\]\"',. a-z%\\n/#+0-9]{0,80}") {
        if let Ok(terms) = forms(&text) {
            for t in &terms {
                let _ = Rule::compile(t);
            }
        }
    }
}

#[test]
fn reloading_keeps_one_hook_reading_the_new_rules_and_no_rules_removes_it() {
    use crate::hooks::{HookPoint, Hooks};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.conf");
    std::fs::write(&path, r##"{deny, all, publish, ["a"]}."##).unwrap();
    let (acl, hooks) = (super::FileAcl::new(path.clone()), Hooks::new());
    let c = Arc::new(client("c", None, "8.8.8.8"));
    let verdict = |hooks: &Hooks, topic| match hooks.check_acl(
        &c,
        Access::Publish,
        topic,
        crate::hooks::AclVerdict::Allow,
    ) {
        crate::hooks::Decision::Ready(v) => v,
        _ => unreachable!("the file ACL decides at once"),
    };
    assert_eq!(acl.reload(&hooks).unwrap(), 1);
    assert_eq!(verdict(&hooks, "a"), crate::hooks::AclVerdict::Deny);
    std::fs::write(&path, r##"{deny, all, publish, ["b"]}."##).unwrap();
    assert_eq!(acl.reload(&hooks).unwrap(), 1);
    assert_eq!(hooks.list(HookPoint::ClientCheckAcl).len(), 1);
    assert_eq!(verdict(&hooks, "a"), crate::hooks::AclVerdict::Allow);
    assert_eq!(verdict(&hooks, "b"), crate::hooks::AclVerdict::Deny);
    std::fs::write(&path, "%% none\n").unwrap();
    assert_eq!(acl.reload(&hooks).unwrap(), 0);
    assert!(hooks.list(HookPoint::ClientCheckAcl).is_empty());
}
