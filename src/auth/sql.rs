//! EMQX's SQL queries (`select password from mqtt_user where username = '%u' limit 1`)
//! turned into parameterized statements: every placeholder becomes a bound parameter
//! (`$1` for PostgreSQL, `?` for MySQL), so a username such as `' OR '1'='1` is a
//! value, never SQL.
//!
//! EMQX writes placeholders inside quotes; a literal that is exactly one placeholder
//! (`'%u'`) becomes one parameter, and a literal with text around placeholders
//! (`'user:%u'`) becomes a concatenation of quoted text and parameters (`('user:' ||
//! $1)`, `CONCAT('user:', ?)`). A placeholder between double quotes (an identifier) is
//! refused at load.

use super::placeholder::{Piece, Template, Var, Vars};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// A query with its parameters in bind order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Var>,
}

enum Item {
    Char(char),
    Var(Var),
}

impl Statement {
    pub fn build(template: &Template, dialect: Dialect) -> Result<Statement, String> {
        let mut items = Vec::new();
        for p in template.pieces() {
            match p {
                Piece::Text(t) => items.extend(t.chars().map(Item::Char)),
                Piece::Var(v) => items.push(Item::Var(*v)),
            }
        }
        let mut out = Statement {
            sql: String::new(),
            binds: Vec::new(),
        };
        let mut i = 0;
        while i < items.len() {
            match &items[i] {
                Item::Var(v) => {
                    out.param(*v, dialect);
                    i += 1;
                }
                Item::Char('\'') => {
                    // A string literal: text and placeholders up to the closing quote.
                    let mut parts: Vec<Result<String, Var>> = Vec::new();
                    let mut text = String::new();
                    i += 1;
                    loop {
                        match items.get(i) {
                            None => {
                                return Err("a query whose quotes are balanced (a ' is not closed)"
                                    .to_string())
                            }
                            Some(Item::Char('\'')) => {
                                if matches!(items.get(i + 1), Some(Item::Char('\''))) {
                                    text.push('\'');
                                    i += 2;
                                    continue;
                                }
                                i += 1;
                                break;
                            }
                            Some(Item::Char(c)) => {
                                text.push(*c);
                                i += 1;
                            }
                            Some(Item::Var(v)) => {
                                if !text.is_empty() {
                                    parts.push(Ok(std::mem::take(&mut text)));
                                }
                                parts.push(Err(*v));
                                i += 1;
                            }
                        }
                    }
                    if !text.is_empty() || parts.is_empty() {
                        parts.push(Ok(text));
                    }
                    out.literal(parts, dialect);
                }
                Item::Char('"') => {
                    out.sql.push('"');
                    i += 1;
                    loop {
                        match items.get(i) {
                            None => {
                                return Err(
                                    "a query whose quotes are balanced (a \" is not closed)"
                                        .to_string(),
                                )
                            }
                            Some(Item::Var(_)) => {
                                return Err("placeholders outside double quotes (\"...\" is an \
                                            identifier; write '%u' for a value)"
                                    .to_string())
                            }
                            Some(Item::Char(c)) => {
                                out.sql.push(*c);
                                i += 1;
                                if *c == '"' {
                                    break;
                                }
                            }
                        }
                    }
                }
                Item::Char(c) => {
                    out.sql.push(*c);
                    i += 1;
                }
            }
        }
        Ok(out)
    }

    fn param(&mut self, var: Var, dialect: Dialect) {
        self.binds.push(var);
        match dialect {
            Dialect::Postgres => {
                self.sql.push('$');
                self.sql.push_str(&self.binds.len().to_string());
            }
            Dialect::MySql => self.sql.push('?'),
        }
    }

    fn literal(&mut self, parts: Vec<Result<String, Var>>, dialect: Dialect) {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
        match parts.as_slice() {
            [Ok(text)] => self.sql.push_str(&quote(text)),
            [Err(var)] => self.param(*var, dialect),
            _ => {
                self.sql.push_str(match dialect {
                    Dialect::Postgres => "(",
                    Dialect::MySql => "CONCAT(",
                });
                for (n, part) in parts.iter().enumerate() {
                    if n > 0 {
                        self.sql.push_str(match dialect {
                            Dialect::Postgres => " || ",
                            Dialect::MySql => ", ",
                        });
                    }
                    match part {
                        Ok(text) => self.sql.push_str(&quote(text)),
                        Err(var) => self.param(*var, dialect),
                    }
                }
                self.sql.push(')');
            }
        }
    }

    /// The parameters' values for one check, in bind order.
    pub fn values(&self, vars: &Vars<'_>) -> Vec<String> {
        self.binds.iter().map(|v| vars.value(*v)).collect()
    }
}

/// One result row as text: `(column name, value)`, NULL as `None`. Backends convert
/// their typed rows to this so the checks below are written once.
pub type Row = Vec<(String, Option<String>)>;

/// A column's value by name (case-insensitive, as SQL names are).
pub fn column<'r>(row: &'r Row, name: &str) -> Option<&'r str> {
    row.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(q: &str) -> Statement {
        Statement::build(&Template::parse(q), Dialect::Postgres).unwrap()
    }

    #[test]
    fn emqx_default_queries_bind_every_placeholder() {
        let s = pg("select password from mqtt_user where username = '%u' limit 1");
        assert_eq!(
            s.sql,
            "select password from mqtt_user where username = $1 limit 1"
        );
        assert_eq!(s.binds, [Var::Username]);
        let s = Statement::build(
            &Template::parse(
                "select allow, ipaddr, username, clientid, access, topic from mqtt_acl \
                 where ipaddr = '%a' or username = '%u' or username = '$all' or clientid = '%c'",
            ),
            Dialect::MySql,
        )
        .unwrap();
        assert_eq!(
            s.sql,
            "select allow, ipaddr, username, clientid, access, topic from mqtt_acl \
             where ipaddr = ? or username = ? or username = '$all' or clientid = ?"
        );
        assert_eq!(s.binds, [Var::PeerHost, Var::Username, Var::ClientId]);
    }

    #[test]
    fn text_around_a_placeholder_is_concatenated_and_quotes_survive() {
        let s = pg("select 1 where k = 'user:%u' and x = 'it''s' and y = %c");
        assert_eq!(
            s.sql,
            "select 1 where k = ('user:' || $1) and x = 'it''s' and y = $2"
        );
        let s = Statement::build(
            &Template::parse("select 1 where k = '%u@%c'"),
            Dialect::MySql,
        )
        .unwrap();
        assert_eq!(s.sql, "select 1 where k = CONCAT(?, '@', ?)");
        assert_eq!(s.binds, [Var::Username, Var::ClientId]);
    }

    #[test]
    fn unbalanced_quotes_and_identifier_placeholders_are_refused() {
        for q in [
            "select 1 where a = '%u",
            "select \"%u\" from t",
            "select \"x from t",
        ] {
            assert!(
                Statement::build(&Template::parse(q), Dialect::Postgres).is_err(),
                "{q}"
            );
        }
    }

    #[test]
    fn columns_by_name() {
        let row: Row = vec![("PASSWORD".into(), Some("x".into())), ("salt".into(), None)];
        assert_eq!(column(&row, "password"), Some("x"));
        assert_eq!(column(&row, "salt"), None);
        assert_eq!(column(&row, "nope"), None);
    }
}
