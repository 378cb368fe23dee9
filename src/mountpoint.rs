//! Mountpoints (`listener.<proto>.<name>.mountpoint`, `zone.<name>.mountpoint`): a
//! topic prefix for a listener's clients, as EMQX's `emqx_mountpoint`. Topics the
//! client publishes (its will too) and filters it subscribes to get the prefix; topics
//! delivered to it lose it. `%c` and `%u` in the prefix are the client id and the
//! username (left as they are for a client without a username, as EMQX). ACL checks
//! see the topic as the client sent it (before mounting, as EMQX 4); routing,
//! retained messages, hooks after the check and `emqx_ctl subscriptions` see the
//! mounted one. Pure functions.

use std::borrow::Cow;

/// The prefix for one client: `%c` and `%u` replaced.
pub fn expand<'a>(template: &'a str, client_id: &str, username: Option<&str>) -> Cow<'a, str> {
    if !template.contains('%') {
        return Cow::Borrowed(template);
    }
    let mut out = template.replace("%c", client_id);
    if let Some(username) = username {
        out = out.replace("%u", username);
    }
    Cow::Owned(out)
}

/// `topic` (a topic name or filter) under `prefix`. A shared subscription keeps its
/// `$share/<group>/` (or `$queue/`) in front: the group shares the mounted filter.
pub fn mount(prefix: &str, topic: &str) -> String {
    let (share, rest) = split_share(topic);
    let mut out = String::with_capacity(prefix.len() + topic.len());
    out.push_str(share);
    out.push_str(prefix);
    out.push_str(rest);
    out
}

/// `topic` without `prefix`; unchanged when it does not start with it (a message
/// from outside the mountpoint, reached by a filter the client could not have
/// subscribed to through it: delivered as it is, as EMQX).
pub fn unmount<'a>(prefix: &str, topic: &'a [u8]) -> &'a [u8] {
    topic.strip_prefix(prefix.as_bytes()).unwrap_or(topic)
}

fn split_share(topic: &str) -> (&str, &str) {
    if let Some(rest) = topic.strip_prefix("$queue/") {
        return (&topic[..topic.len() - rest.len()], rest);
    }
    if let Some(after) = topic.strip_prefix("$share/") {
        if let Some(slash) = after.find('/') {
            let cut = "$share/".len() + slash + 1;
            return (&topic[..cut], &topic[cut..]);
        }
    }
    ("", topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_the_client_id_and_username() {
        assert_eq!(expand("dev/%c/%u/", "c1", Some("alice")), "dev/c1/alice/");
        assert_eq!(expand("dev/%c/%u/", "c1", None), "dev/c1/%u/");
        assert!(matches!(
            expand("plain/", "c1", None),
            Cow::Borrowed("plain/")
        ));
    }

    #[test]
    fn mount_and_unmount_round_trip() {
        assert_eq!(mount("mp/", "a/b"), "mp/a/b");
        assert_eq!(mount("mp/", "#"), "mp/#");
        assert_eq!(mount("mp/", "$share/g/a/+"), "$share/g/mp/a/+");
        assert_eq!(mount("mp/", "$queue/a"), "$queue/mp/a");
        assert_eq!(unmount("mp/", b"mp/a/b"), b"a/b");
        assert_eq!(unmount("mp/", b"other/a"), b"other/a");
        assert_eq!(unmount("mp/", mount("mp/", "x/y").as_bytes()), b"x/y");
    }
}
