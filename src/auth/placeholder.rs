//! Placeholders in backend queries, as EMQX 4 writes them: `%u` username, `%c` client
//! id, `%a` peer address, `%P` password, `%C` / `%d` certificate CN / DN, `%t` topic,
//! `%A` access (1 = subscribe, 2 = publish), `%m` mountpoint, `%r` protocol version.
//!
//! A [`Template`] is parsed once at plugin load into text and variables, so each
//! backend decides how a value enters its query: bound as a SQL parameter, passed as a
//! separate Redis argument, escaped for an LDAP filter, URL-encoded for HTTP. Nothing
//! here splices client input into query text; the backends must not either. An
//! unknown `%x` stays as written.

use crate::hooks::{Access, ClientInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Var {
    Username,
    ClientId,
    PeerHost,
    Password,
    CertCn,
    CertDn,
    Topic,
    Access,
    Mountpoint,
    Protocol,
}

impl Var {
    fn from_char(c: char) -> Option<Var> {
        Some(match c {
            'u' => Var::Username,
            'c' => Var::ClientId,
            'a' => Var::PeerHost,
            'P' => Var::Password,
            'C' => Var::CertCn,
            'd' => Var::CertDn,
            't' => Var::Topic,
            'A' => Var::Access,
            'm' => Var::Mountpoint,
            'r' => Var::Protocol,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed query, filter, command or parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> Template {
        let mut pieces = Vec::new();
        let mut text_run = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '%' {
                if let Some(var) = chars.peek().copied().and_then(Var::from_char) {
                    chars.next();
                    if !text_run.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text_run)));
                    }
                    pieces.push(Piece::Var(var));
                    continue;
                }
            }
            text_run.push(c);
        }
        if !text_run.is_empty() {
            pieces.push(Piece::Text(text_run));
        }
        Template { pieces }
    }

    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The variables, in order of appearance (a SQL backend binds them in this order).
    pub fn vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(*v),
            Piece::Text(_) => None,
        })
    }

    /// The text with each variable's value passed through `encode` first (identity
    /// for a plain rendering, URL-encoding for HTTP, RFC 4515 escaping for LDAP).
    pub fn render_with(&self, vars: &Vars<'_>, encode: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(&encode(&vars.value(*v))),
            }
        }
        out
    }
}

/// What the variables stand for in one check.
pub struct Vars<'a> {
    pub info: &'a ClientInfo,
    pub password: Option<&'a [u8]>,
    pub topic: Option<&'a str>,
    pub access: Option<Access>,
}

impl<'a> Vars<'a> {
    pub fn client(info: &'a ClientInfo) -> Vars<'a> {
        Vars {
            info,
            password: None,
            topic: None,
            access: None,
        }
    }

    /// A variable's value; empty when the client has none (no username, no
    /// certificate), as EMQX substitutes `undefined` with an empty string.
    pub fn value(&self, var: Var) -> String {
        let info = self.info;
        let cert = |dn: bool| {
            info.cert
                .as_ref()
                .and_then(|c| if dn { c.dn.clone() } else { c.cn.clone() })
                .map(|s| s.to_string())
                .unwrap_or_default()
        };
        match var {
            Var::Username => info.username().unwrap_or("").to_string(),
            Var::ClientId => info.client_id.to_string(),
            Var::PeerHost => info.peer.ip().to_string(),
            Var::Password => self
                .password
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            Var::CertCn => cert(false),
            Var::CertDn => cert(true),
            Var::Topic => self.topic.unwrap_or("").to_string(),
            Var::Access => match self.access {
                Some(Access::Subscribe) => "1".to_string(),
                Some(Access::Publish) => "2".to_string(),
                None => String::new(),
            },
            Var::Mountpoint => info.mountpoint.as_deref().unwrap_or("").to_string(),
            Var::Protocol => info.protocol.level().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;
    use std::sync::Arc;

    fn info() -> ClientInfo {
        let mut i = ClientInfo::new(
            Arc::from("dev-1"),
            "127.0.0.9:4000".parse().unwrap(),
            ProtocolVersion::V3_1_1,
            Arc::from("tcp:external"),
            Arc::from("external"),
        );
        i.username = Some(Arc::from("alice"));
        i
    }

    #[test]
    fn parses_text_and_variables_and_keeps_unknown_percent_signs() {
        let t = Template::parse("select * from u where name = '%u' and x like '10%%' and %z");
        assert_eq!(t.vars().collect::<Vec<_>>(), [Var::Username]);
        let i = info();
        assert_eq!(
            t.render_with(&Vars::client(&i), str::to_string),
            "select * from u where name = 'alice' and x like '10%%' and %z"
        );
    }

    #[test]
    fn every_variable_has_its_value() {
        let i = info();
        let v = Vars {
            info: &i,
            password: Some(b"pw"),
            topic: Some("a/b"),
            access: Some(Access::Publish),
        };
        let t = Template::parse("%u|%c|%a|%P|%C|%d|%t|%A|%m|%r");
        assert_eq!(
            t.render_with(&v, str::to_string),
            "alice|dev-1|127.0.0.9|pw|||a/b|2||4"
        );
    }

    #[test]
    fn values_go_through_the_encoder_and_text_does_not() {
        let mut i = info();
        i.username = Some(Arc::from("' OR '1'='1"));
        let t = Template::parse("u='%u'");
        let got = t.render_with(&Vars::client(&i), |v| v.replace('\'', "''"));
        assert_eq!(got, "u=''' OR ''1''=''1'");
    }
}
