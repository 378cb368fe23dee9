//! Routing: the topic trie of subscriptions and the retained-message index.

pub mod retained;
pub mod trie;

pub use retained::RetainedIndex;
pub use trie::TopicTrie;
