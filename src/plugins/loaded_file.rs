//! The list of plugins to start at boot (`data/loaded_plugins`, EMQX 4's format):
//! one `{Name, true}.` or `{Name, false}.` per line, in start order; `%` starts a
//! comment; the EMQX 3 form `Name.` means `{Name, true}.` too.
//!
//! Rewritten whole on every `emqx_ctl plugins load|unload`: a temporary file, fsync,
//! rename, fsync of the directory, so a "successfully" means the choice survives
//! power loss, and a crash mid-write leaves the old list.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LoadedFileError {
    #[error("{path}:{line}: expected `{{plugin_name, true|false}}.`, got {text:?}")]
    Syntax {
        path: String,
        line: usize,
        text: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// `(name, start at boot)` in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadedList {
    pub entries: Vec<(String, bool)>,
}

impl LoadedList {
    pub fn parse(text: &str, path: &Path) -> Result<LoadedList, LoadedFileError> {
        let mut entries: Vec<(String, bool)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('%').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || LoadedFileError::Syntax {
                path: path.display().to_string(),
                line: i + 1,
                text: raw.trim().to_string(),
            };
            let body = line.strip_suffix('.').ok_or_else(bad)?.trim();
            let (name, on) = match body.strip_prefix('{').and_then(|b| b.strip_suffix('}')) {
                Some(inner) => match inner.split(',').map(str::trim).collect::<Vec<_>>()[..] {
                    [name, "true"] => (name, true),
                    [name, "false"] => (name, false),
                    _ => return Err(bad()),
                },
                None => (body, true),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(bad());
            }
            entries.retain(|(n, _)| n != name);
            entries.push((name.to_string(), on));
        }
        Ok(LoadedList { entries })
    }

    /// Read `path`; if it does not exist, `seed` (the shipped `etc/loaded_plugins`),
    /// and if neither exists, an empty list.
    pub fn read(path: &Path, seed: &Path) -> Result<LoadedList, LoadedFileError> {
        for p in [path, seed] {
            match fs::read_to_string(p) {
                Ok(text) => return LoadedList::parse(&text, p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(LoadedFileError::Read {
                        path: p.display().to_string(),
                        source,
                    })
                }
            }
        }
        Ok(LoadedList::default())
    }

    /// Names to start at boot, in order.
    pub fn enabled(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| n.as_str())
    }

    /// Record `name` as started (moved to the end: it was loaded last, so it checks
    /// last in the auth chain after a restart too) or stopped (kept in place).
    pub fn set(&mut self, name: &str, on: bool) {
        if on {
            self.entries.retain(|(n, _)| n != name);
            self.entries.push((name.to_string(), true));
        } else if let Some(e) = self.entries.iter_mut().find(|(n, _)| n == name) {
            e.1 = false;
        } else {
            self.entries.push((name.to_string(), false));
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, on) in &self.entries {
            out.push_str(&format!("{{{name}, {on}}}.\n"));
        }
        out
    }

    /// Replace `path` durably (see the module comment).
    pub fn write(&self, path: &Path) -> Result<(), LoadedFileError> {
        let err = |source| LoadedFileError::Write {
            path: path.display().to_string(),
            source,
        };
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::create_dir_all(&dir).map_err(err)?;
        let tmp: PathBuf = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(self.render().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, path).map_err(err)?;
        File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &dir
        })
        .and_then(|d| d.sync_all())
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LoadedList, LoadedFileError> {
        LoadedList::parse(text, Path::new("data/loaded_plugins"))
    }

    #[test]
    fn both_forms_comments_and_order() {
        let l = parse(
            "%% comment\n{emqx_auth_username, true}.\nemqx_auth_jwt.\n\n{emqx_bridge_mqtt,false}. % off\n",
        )
        .unwrap();
        assert_eq!(
            l.enabled().collect::<Vec<_>>(),
            ["emqx_auth_username", "emqx_auth_jwt"]
        );
        assert_eq!(l.entries.len(), 3);
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let err = parse("{a, true}.\n{b, maybe}.\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "data/loaded_plugins:2: expected `{plugin_name, true|false}.`, got \"{b, maybe}.\""
        );
        assert!(parse("{a, true}").is_err());
        assert!(parse("{'a b', true}.").is_err());
    }

    #[test]
    fn set_moves_loaded_to_the_end_and_round_trips() {
        let mut l = parse("{a, true}.\n{b, true}.\n").unwrap();
        l.set("a", true);
        l.set("b", false);
        l.set("c", false);
        assert_eq!(l.render(), "{b, false}.\n{a, true}.\n{c, false}.\n");
        assert_eq!(parse(&l.render()).unwrap(), l);
    }

    #[test]
    fn write_then_read_and_the_seed_is_used_only_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, seed) = (dir.path().join("d/loaded_plugins"), dir.path().join("seed"));
        fs::write(&seed, "{s, true}.\n").unwrap();
        assert_eq!(
            LoadedList::read(&path, &seed)
                .unwrap()
                .enabled()
                .collect::<Vec<_>>(),
            ["s"]
        );
        let mut l = LoadedList::default();
        l.set("x", true);
        l.write(&path).unwrap();
        assert_eq!(LoadedList::read(&path, &seed).unwrap(), l);
    }
}
