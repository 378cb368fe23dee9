//! The subset of Erlang terms `etc/acl.conf` is written in: atoms (`allow`,
//! `'and'`), strings (`"a/#"`), tuples and lists, each form ending with a full stop;
//! `%` starts a comment. Every term keeps the line and column it starts at, so a rule
//! that does not make sense can be reported where it is.

use std::fmt;

/// Where a term starts: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    Atom(String, Pos),
    Str(String, Pos),
    Tuple(Vec<Term>, Pos),
    List(Vec<Term>, Pos),
}

impl Term {
    pub fn pos(&self) -> Pos {
        match self {
            Term::Atom(_, p) | Term::Str(_, p) | Term::Tuple(_, p) | Term::List(_, p) => *p,
        }
    }
}

/// A syntax error: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Every form of `text`, in order.
pub fn forms(text: &str) -> Result<Vec<Term>, SyntaxError> {
    let mut reader = Reader {
        chars: text.chars().collect(),
        at: 0,
        pos: Pos { line: 1, col: 1 },
    };
    let mut forms = Vec::new();
    loop {
        reader.skip_blank();
        if reader.peek().is_none() {
            return Ok(forms);
        }
        let term = reader.term()?;
        reader.skip_blank();
        match reader.peek() {
            Some('.') => {
                reader.bump();
            }
            _ => return Err(reader.error("a full stop `.` after the rule")),
        }
        forms.push(term);
    }
}

struct Reader {
    chars: Vec<char>,
    at: usize,
    pos: Pos,
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.pos.line += 1;
            self.pos.col = 1;
        } else {
            self.pos.col += 1;
        }
        Some(c)
    }

    fn error(&self, expected: &str) -> SyntaxError {
        let found = match self.peek() {
            None => "end of file".to_string(),
            Some(c) => format!("{c:?}"),
        };
        SyntaxError {
            pos: self.pos,
            message: format!("expected {expected}, found {found}"),
        }
    }

    /// Whitespace and `%` comments.
    fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c == '%' {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.bump();
                }
            } else if c.is_whitespace() {
                self.bump();
            } else {
                return;
            }
        }
    }

    fn term(&mut self) -> Result<Term, SyntaxError> {
        self.skip_blank();
        let pos = self.pos;
        match self.peek() {
            Some('{') => {
                self.bump();
                Ok(Term::Tuple(self.elements('}')?, pos))
            }
            Some('[') => {
                self.bump();
                Ok(Term::List(self.elements(']')?, pos))
            }
            Some('"') => Ok(Term::Str(self.quoted('"')?, pos)),
            Some('\'') => Ok(Term::Atom(self.quoted('\'')?, pos)),
            Some(c) if c.is_ascii_lowercase() => {
                let mut atom = String::new();
                while let Some(c) = self
                    .peek()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '@')
                {
                    atom.push(c);
                    self.bump();
                }
                Ok(Term::Atom(atom, pos))
            }
            _ => Err(self.error("a term (an atom, a \"string\", a {tuple} or a [list])")),
        }
    }

    /// The elements of a tuple or list up to `close`, separated by commas.
    fn elements(&mut self, close: char) -> Result<Vec<Term>, SyntaxError> {
        let mut items = Vec::new();
        self.skip_blank();
        if self.peek() == Some(close) {
            self.bump();
            return Ok(items);
        }
        loop {
            items.push(self.term()?);
            self.skip_blank();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(c) if c == close => {
                    self.bump();
                    return Ok(items);
                }
                _ => return Err(self.error(&format!("`,` or `{close}`"))),
            }
        }
    }

    /// A string or quoted atom; `\` escapes the next character (`\n` and `\t` as in
    /// Erlang).
    fn quoted(&mut self, quote: char) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.bump();
        let mut text = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(SyntaxError {
                        pos: start,
                        message: format!("unterminated {quote}...{quote}"),
                    })
                }
                Some(c) if c == quote => return Ok(text),
                Some('\\') => match self.bump() {
                    Some('n') => text.push('\n'),
                    Some('t') => text.push('\t'),
                    Some(c) => text.push(c),
                    None => continue,
                },
                Some(c) => text.push(c),
            }
        }
    }
}
