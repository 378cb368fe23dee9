//! A session's subscriptions: filter → options, ordered, behind one pointer that is
//! null while there are none. Every session handle carries this, so its 8 bytes
//! (where an empty `BTreeMap` takes 24) help keep the handle in mimalloc's 128-byte
//! class.

use std::collections::BTreeMap;
use std::ops::Deref;

use super::registry::SubOpts;

// The box is the point: an empty `BTreeMap` is 24 bytes inline, the box 8.
#[allow(clippy::box_collection)]
#[derive(Debug, Clone, Default)]
pub struct Subscriptions(Option<Box<BTreeMap<String, SubOpts>>>);

static NONE: BTreeMap<String, SubOpts> = BTreeMap::new();

impl Subscriptions {
    /// Add or replace; the options it had, if any.
    pub fn insert(&mut self, filter: String, opts: SubOpts) -> Option<SubOpts> {
        self.0.get_or_insert_default().insert(filter, opts)
    }

    /// Remove; the options it had, if any. The map goes with its last entry.
    pub fn remove(&mut self, filter: &str) -> Option<SubOpts> {
        let map = self.0.as_mut()?;
        let removed = map.remove(filter);
        if map.is_empty() {
            self.0 = None;
        }
        removed
    }

    /// The filters, taking them.
    pub fn take_filters(&mut self) -> Vec<String> {
        self.0
            .take()
            .map(|map| map.into_keys().collect())
            .unwrap_or_default()
    }
}

/// Read as the map it is.
impl Deref for Subscriptions {
    type Target = BTreeMap<String, SubOpts>;

    fn deref(&self) -> &Self::Target {
        self.0.as_deref().unwrap_or(&NONE)
    }
}

/// Equal when they hold the same entries.
impl PartialEq for Subscriptions {
    fn eq(&self, other: &Subscriptions) -> bool {
        **self == **other
    }
}

impl FromIterator<(String, SubOpts)> for Subscriptions {
    fn from_iter<I: IntoIterator<Item = (String, SubOpts)>>(entries: I) -> Subscriptions {
        let map: BTreeMap<String, SubOpts> = entries.into_iter().collect();
        Subscriptions((!map.is_empty()).then(|| Box::new(map)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pointer_null_while_empty_and_read_as_a_map() {
        assert_eq!(std::mem::size_of::<Subscriptions>(), 8);
        let mut s = Subscriptions::default();
        assert!(s.is_empty());
        assert_eq!(s.insert("a/#".into(), SubOpts::default()), None);
        assert!(s.insert("a/#".into(), SubOpts::default()).is_some());
        s.insert("b".into(), SubOpts::default());
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a/#", "b"]);
        assert!(s.remove("a/#").is_some());
        assert!(s.remove("a/#").is_none());
        assert!(s.remove("b").is_some());
        assert!(s.0.is_none(), "the map goes with its last entry");
        assert_eq!(s, Subscriptions::default());
        s.insert("c".into(), SubOpts::default());
        assert_eq!(s.take_filters(), ["c"]);
        assert!(s.is_empty());
        let collected: Subscriptions = [("x".to_string(), SubOpts::default())]
            .into_iter()
            .collect();
        assert_eq!(collected.len(), 1);
    }
}
