//! A topic trie: topic filters to subscribers, matched against topic names.
//!
//! One level per node; `+` and `#` are ordinary child keys, handled when matching.
//! Empty branches are pruned on removal so the trie's size follows live subscriptions.

use std::collections::HashMap;
use std::hash::Hash;

pub struct TopicTrie<K, V> {
    root: Node<K, V>,
    len: usize,
    /// Nodes with at least one subscriber: the distinct filters.
    filters: usize,
}

struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    subscribers: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            subscribers: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V> Default for TopicTrie<K, V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
            filters: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> TopicTrie<K, V> {
    /// Number of (filter, subscriber) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Every filter with at least one subscriber, and how many it has, in no order.
    pub fn filters(&self) -> Vec<(String, usize)> {
        let mut out = Vec::with_capacity(self.filters);
        let mut path = Vec::new();
        collect_filters(&self.root, &mut path, &mut out);
        out
    }

    /// Add or replace `key`'s subscription to `filter`; returns the previous value.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let new_filter = node.subscribers.is_empty();
        let old = node.subscribers.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        if new_filter {
            self.filters += 1;
        }
        old
    }

    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut emptied = false;
        let removed = remove_at(&mut self.root, &levels, key, &mut emptied);
        if removed.is_some() {
            self.len -= 1;
            if emptied {
                self.filters -= 1;
            }
        }
        removed
    }

    pub fn get(&self, filter: &str, key: &K) -> Option<&V> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        node.subscribers.get(key)
    }

    /// Call `f` for every subscription whose filter matches `topic`. A subscriber with
    /// several matching filters is reported once per filter.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        // Root wildcards never match `$` topics (MQTT 5 §4.7.2).
        let dollar = topic.starts_with('$');
        match_at(&self.root, &levels, dollar, &mut f);
    }
}

/// `emptied`: the filter's last subscriber went.
fn remove_at<K: Eq + Hash, V>(
    node: &mut Node<K, V>,
    levels: &[&str],
    key: &K,
    emptied: &mut bool,
) -> Option<V> {
    match levels.split_first() {
        None => {
            let removed = node.subscribers.remove(key);
            *emptied = node.subscribers.is_empty();
            removed
        }
        Some((level, rest)) => {
            let child = node.children.get_mut(*level)?;
            let removed = remove_at(child, rest, key, emptied);
            if child.subscribers.is_empty() && child.children.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn collect_filters<'a, K, V>(
    node: &'a Node<K, V>,
    path: &mut Vec<&'a str>,
    out: &mut Vec<(String, usize)>,
) {
    for (level, child) in &node.children {
        path.push(level);
        if !child.subscribers.is_empty() {
            out.push((path.join("/"), child.subscribers.len()));
        }
        collect_filters(child, path, out);
        path.pop();
    }
}

fn match_at<K, V>(node: &Node<K, V>, levels: &[&str], skip_wild: bool, f: &mut impl FnMut(&K, &V)) {
    if !skip_wild {
        if let Some(hash) = node.children.get("#") {
            hash.subscribers.iter().for_each(|(k, v)| f(k, v));
        }
    }
    match levels.split_first() {
        None => node.subscribers.iter().for_each(|(k, v)| f(k, v)),
        Some((level, rest)) => {
            if !skip_wild {
                if let Some(plus) = node.children.get("+") {
                    match_at(plus, rest, false, f);
                }
            }
            if let Some(child) = node.children.get(*level) {
                match_at(child, rest, false, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;

    fn matched(trie: &TopicTrie<String, ()>, topic: &str) -> Vec<String> {
        let mut out = Vec::new();
        trie.for_each_match(topic, |k, _| out.push(k.clone()));
        out.sort();
        out
    }

    #[test]
    fn wildcards_and_dollar_topics() {
        let mut trie = TopicTrie::default();
        for f in ["a/b", "a/+", "a/#", "#", "+/b", "$SYS/#", "+/+/c"] {
            trie.insert(f, f.to_string(), ());
        }
        assert_eq!(matched(&trie, "a/b"), vec!["#", "+/b", "a/#", "a/+", "a/b"]);
        assert_eq!(matched(&trie, "a"), vec!["#", "a/#"]);
        assert_eq!(matched(&trie, "$SYS/x"), vec!["$SYS/#"]);
        assert_eq!(matched(&trie, "x/y/c"), vec!["#", "+/+/c"]);
        assert_eq!(trie.len(), 7);
        assert_eq!(trie.filter_count(), 7);
    }

    #[test]
    fn filters_are_counted_once_however_many_subscribe() {
        let mut trie = TopicTrie::default();
        trie.insert("a/+", "x".to_string(), ());
        trie.insert("a/+", "y".to_string(), ());
        trie.insert("a/+", "y".to_string(), ()); // again: replaced
        trie.insert("a", "x".to_string(), ()); // a prefix of another filter
        trie.insert("", "x".to_string(), ()); // the empty level is a filter too
        assert_eq!((trie.len(), trie.filter_count()), (4, 3));
        let mut filters = trie.filters();
        filters.sort();
        assert_eq!(
            filters,
            vec![("".into(), 1), ("a".into(), 1), ("a/+".into(), 2)]
        );
        assert!(trie.remove("a/+", &"x".to_string()).is_some());
        assert_eq!((trie.len(), trie.filter_count()), (3, 3));
        assert!(trie.remove("a/+", &"z".to_string()).is_none());
        assert_eq!((trie.len(), trie.filter_count()), (3, 3));
        assert!(trie.remove("a/+", &"y".to_string()).is_some());
        assert!(trie.remove("a", &"x".to_string()).is_some());
        assert_eq!((trie.len(), trie.filter_count()), (1, 1));
        assert_eq!(trie.filters(), vec![("".into(), 1)]);
    }

    #[test]
    fn removal_prunes_and_counts() {
        let mut trie = TopicTrie::default();
        trie.insert("a/b/c", "k".to_string(), 1);
        assert_eq!(trie.insert("a/b/c", "k".to_string(), 2), Some(1));
        assert_eq!(trie.remove("a/b/c", &"k".to_string()), Some(2));
        assert_eq!(trie.remove("a/b/c", &"k".to_string()), None);
        assert!(trie.is_empty());
        assert!(trie.root.children.is_empty(), "empty branches are pruned");
    }

    proptest! {
        /// The trie agrees with the reference matcher on every (filter, topic) pair.
        #[test]
        fn agrees_with_reference_matcher(
            filters in proptest::collection::vec("(\\$?[ab+]|#)(/([ab+]|#))?(/[ab+#])?", 1..8),
            topic in "\\$?[ab]{0,1}(/[ab]{0,1}){0,3}",
        ) {
            let mut trie = TopicTrie::default();
            let valid: Vec<String> = filters.into_iter().filter(|f| topic::validate_filter(f, 0).is_ok()).collect();
            for f in &valid {
                trie.insert(f, f.clone(), ());
            }
            let mut expected: Vec<String> = valid.iter().filter(|f| topic::matches(f, &topic)).cloned().collect();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(matched(&trie, &topic), expected);
            let mut distinct = valid.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(trie.filter_count(), distinct.len());
            prop_assert_eq!(trie.filters().len(), distinct.len());
        }
    }
}
