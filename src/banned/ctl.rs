//! `emqx_ctl banned list | add | del`.

use std::sync::Arc;

use quay_storage::keys::BanKind;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{now_s, peer_host, Ban};
use crate::broker::Broker;
use crate::ctl::Reply;

pub const USAGE: &str = "\
banned list                             # List banned clients
banned add <Type> <Who> [--reason <Text>] [--until <Time> | --duration <Span>] [--by <Name>]
                                        # Ban a clientid, username or peerhost; Time is
                                        # RFC 3339 or Unix seconds, Span like 30m or 7d;
                                        # no --until/--duration: until lifted
banned del <Type> <Who>                 # Lift a ban (Type: clientid, username, peerhost)
";

fn usage(problem: &str) -> Reply {
    Reply {
        code: 1,
        output: format!("Error: {problem}\nUsage:\n{USAGE}"),
    }
}

fn failed(problem: String) -> Reply {
    Reply {
        code: 1,
        output: format!("Error: {problem}\n"),
    }
}

pub async fn run(broker: &Arc<Broker>, args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["list"] => {
            let out: String = broker.banned.list(now_s()).iter().map(line).collect();
            Reply {
                code: 0,
                output: out,
            }
        }
        ["add", kind, who, options @ ..] => {
            let ban = match parse_add(kind, who, options, now_s()) {
                Ok(ban) => ban,
                Err(problem) => return usage(&problem),
            };
            match broker.banned.add(&broker.store, ban.clone()).await {
                Ok(()) => {
                    tracing::info!(kind = ban.kind.name(), who = %ban.who, by = %ban.by, until = ?ban.until_s, "client banned");
                    super::disconnect_banned(broker, &ban);
                    Reply {
                        code: 0,
                        output: "ok\n".into(),
                    }
                }
                Err(e) => failed(format!("the ban was not stored: {e}")),
            }
        }
        ["del" | "delete", kind, who] => {
            let (kind, who) = match kind_and_who(kind, who) {
                Ok(kw) => kw,
                Err(problem) => return usage(&problem),
            };
            match broker.banned.delete(&broker.store, kind, &who).await {
                Ok(true) => {
                    tracing::info!(kind = kind.name(), %who, "ban lifted");
                    Reply {
                        code: 0,
                        output: "ok\n".into(),
                    }
                }
                Ok(false) => failed(format!("{} {who} is not banned", kind.name())),
                Err(e) => failed(format!("the ban was not lifted: {e}")),
            }
        }
        _ => usage(&format!("unknown command: banned {}", args.join(" "))),
    }
}

/// `Banned(clientid=c1, by=emqx_ctl, reason=..., at=..., until=...)`.
fn line(ban: &Ban) -> String {
    format!(
        "Banned({}={}, by={}, reason={}, at={}, until={})\n",
        ban.kind.name(),
        ban.who,
        ban.by,
        ban.reason,
        rfc3339(ban.at_s),
        ban.until_s.map_or("infinity".into(), rfc3339),
    )
}

fn rfc3339(s: u64) -> String {
    i64::try_from(s)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| s.to_string())
}

fn kind_and_who(kind: &str, who: &str) -> Result<(BanKind, String), String> {
    let kind = BanKind::parse(kind)
        .ok_or_else(|| format!("unknown type {kind:?}: expected clientid, username or peerhost"))?;
    if who.is_empty() {
        return Err(format!("an empty {} cannot be banned", kind.name()));
    }
    let who = match kind {
        BanKind::PeerHost => peer_host(
            who.parse()
                .map_err(|_| format!("{who:?} is not an IP address"))?,
        ),
        _ => who.to_string(),
    };
    Ok((kind, who))
}

fn parse_add(kind: &str, who: &str, options: &[&str], now_s: u64) -> Result<Ban, String> {
    let (kind, who) = kind_and_who(kind, who)?;
    let mut ban = Ban {
        kind,
        who,
        by: "emqx_ctl".into(),
        reason: String::new(),
        at_s: now_s,
        until_s: None,
    };
    let mut until_set = false;
    let mut rest = options;
    while let [flag, value, tail @ ..] = rest {
        match *flag {
            "--reason" => ban.reason = value.to_string(),
            "--by" => ban.by = value.to_string(),
            "--until" | "--duration" if until_set => {
                return Err("give one of --until and --duration".into())
            }
            "--until" => {
                ban.until_s = parse_until(value)?;
                until_set = true;
            }
            "--duration" => {
                let span = quay_config::plugin_read::duration(value)
                    .map_err(|e| format!("--duration {value}: expected {e}"))?;
                ban.until_s = Some(now_s.saturating_add(span.as_secs().max(1)));
                until_set = true;
            }
            other => return Err(format!("unknown option {other}")),
        }
        rest = tail;
    }
    if let [flag] = rest {
        return Err(format!("{flag} needs a value"));
    }
    if ban.until_s.is_some_and(|u| u <= now_s) {
        return Err("--until is in the past".into());
    }
    Ok(ban)
}

/// `--until`: `infinity`, Unix seconds, or an RFC 3339 time.
fn parse_until(value: &str) -> Result<Option<u64>, String> {
    if value == "infinity" {
        return Ok(None);
    }
    if let Ok(s) = value.parse::<u64>() {
        return Ok(Some(s));
    }
    let t = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| {
        format!(
            "--until {value}: expected RFC 3339 (2026-12-31T23:59:59Z), Unix seconds or infinity"
        )
    })?;
    u64::try_from(t.unix_timestamp())
        .map(Some)
        .map_err(|_| format!("--until {value}: before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_reads_type_who_and_options() {
        let ban = parse_add(
            "clientid",
            "c1",
            &["--reason", "flooding", "--duration", "1h", "--by", "ops"],
            1_000,
        )
        .unwrap();
        assert_eq!(ban.kind, BanKind::ClientId);
        assert_eq!((ban.who.as_str(), ban.by.as_str()), ("c1", "ops"));
        assert_eq!(ban.reason, "flooding");
        assert_eq!((ban.at_s, ban.until_s), (1_000, Some(4_600)));

        let ban = parse_add("username", "u", &[], 1_000).unwrap();
        assert_eq!((ban.until_s, ban.by.as_str()), (None, "emqx_ctl"));

        let ban = parse_add(
            "peerhost",
            "::ffff:10.0.0.1",
            &["--until", "2026-12-31T00:00:00Z"],
            1_000,
        )
        .unwrap();
        assert_eq!(ban.who, "10.0.0.1");
        assert_eq!(ban.until_s, Some(1_798_675_200));
        assert_eq!(
            parse_add("peerhost", "::1", &["--until", "5000"], 1_000)
                .unwrap()
                .until_s,
            Some(5_000)
        );
    }

    #[test]
    fn bad_add_says_what_is_wrong() {
        let err = |kind, who, opts: &[&str]| parse_add(kind, who, opts, 1_000).unwrap_err();
        assert!(err("ip", "x", &[]).contains("expected clientid, username or peerhost"));
        assert!(err("peerhost", "10.0.0.300", &[]).contains("not an IP address"));
        assert!(err("clientid", "", &[]).contains("empty"));
        assert!(err("clientid", "c", &["--until"]).contains("needs a value"));
        assert!(err("clientid", "c", &["--until", "tomorrow"]).contains("RFC 3339"));
        assert!(err("clientid", "c", &["--until", "10"]).contains("in the past"));
        assert!(err("clientid", "c", &["--duration", "5"]).contains("--duration 5"));
        assert!(err("clientid", "c", &["--until", "9999", "--duration", "1h"]).contains("one of"));
        assert!(err("clientid", "c", &["--colour", "red"]).contains("unknown option --colour"));
    }

    #[test]
    fn list_lines_read_like_emqx() {
        let ban = Ban {
            kind: BanKind::Username,
            who: "mallory".into(),
            by: "emqx_ctl".into(),
            reason: "abuse".into(),
            at_s: 1_798_675_110,
            until_s: None,
        };
        assert_eq!(
            line(&ban),
            "Banned(username=mallory, by=emqx_ctl, reason=abuse, at=2026-12-30T23:58:30Z, until=infinity)\n"
        );
    }
}
