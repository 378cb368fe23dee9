//! Paging by cursor: a page is the `limit` lowest keys above the last key the caller
//! saw. Keys, not offsets, so a session that comes or goes between two requests
//! neither repeats nor hides another one.

use serde::{Deserialize, Serialize};

/// The most items one page holds; larger requests get this many.
pub const MAX_PAGE_LIMIT: usize = 10_000;

/// Which page: the items after `after` (from the start if None), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest<K> {
    pub after: Option<K>,
    pub limit: usize,
}

impl<K> PageRequest<K> {
    pub fn first(limit: usize) -> PageRequest<K> {
        PageRequest { after: None, limit }
    }

    pub fn after(key: K, limit: usize) -> PageRequest<K> {
        PageRequest {
            after: Some(key),
            limit,
        }
    }

    /// `limit` within 1..=MAX_PAGE_LIMIT: a page of 0 would never advance.
    pub fn limit(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE_LIMIT)
    }
}

/// One page, in key order. `next` is the cursor of the following page (the last
/// item's key), None when this page is the last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

/// The page of `items` that `req` asks for, by `key`.
pub(super) fn select<T, K: Ord>(
    items: impl IntoIterator<Item = T>,
    req: &PageRequest<K>,
    key: impl Fn(&T) -> K,
) -> Page<T, K> {
    lowest(items, req.after.as_ref(), req.limit(), key)
}

/// The `limit` items with the lowest keys above `after`, in key order. One pass with
/// a bounded heap, O(n log limit): the registry is a hash map, and sorting all of it
/// for every page would cost O(n log n).
pub(super) fn lowest<T, K: Ord>(
    items: impl IntoIterator<Item = T>,
    after: Option<&K>,
    limit: usize,
    key: impl Fn(&T) -> K,
) -> Page<T, K> {
    // One more than asked: whether a next page exists is then known exactly.
    let keep = limit.saturating_add(1);
    // A max-heap of the lowest keys so far: its top is the first to go.
    let mut heap: std::collections::BinaryHeap<Keyed<K, T>> =
        std::collections::BinaryHeap::with_capacity(keep.min(1024));
    for item in items {
        let k = key(&item);
        if after.is_some_and(|a| k <= *a) {
            continue;
        }
        if heap.len() == keep {
            if heap.peek().is_some_and(|top| k >= top.0) {
                continue;
            }
            heap.pop();
        }
        heap.push(Keyed(k, item));
    }
    let mut sorted = heap.into_sorted_vec();
    let next = if sorted.len() > limit {
        sorted.truncate(limit);
        sorted.last().map(|last| key(&last.1))
    } else {
        None
    };
    Page {
        items: sorted.into_iter().map(|k| k.1).collect(),
        next,
    }
}

/// An item ordered by its key alone.
struct Keyed<K, T>(K, T);

impl<K: Ord, T> PartialEq for Keyed<K, T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<K: Ord, T> Eq for Keyed<K, T> {}

impl<K: Ord, T> PartialOrd for Keyed<K, T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Ord, T> Ord for Keyed<K, T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(page: &Page<u32, u32>) -> Vec<u32> {
        page.items.clone()
    }

    #[test]
    fn pages_split_the_sorted_items_and_say_when_they_end() {
        let items = vec![5, 1, 9, 3, 7];
        let p1 = lowest(items.clone(), None, 2, |x| *x);
        assert_eq!((keys(&p1), p1.next), (vec![1, 3], Some(3)));
        let p2 = lowest(items.clone(), p1.next.as_ref(), 2, |x| *x);
        assert_eq!((keys(&p2), p2.next), (vec![5, 7], Some(7)));
        let p3 = lowest(items.clone(), p2.next.as_ref(), 2, |x| *x);
        assert_eq!((keys(&p3), p3.next), (vec![9], None));
        // Exactly `limit` left: no empty page after it.
        let last = lowest(items, Some(&5), 2, |x| *x);
        assert_eq!((keys(&last), last.next), (vec![7, 9], None));
    }

    #[test]
    fn limit_is_clamped() {
        assert_eq!(PageRequest::<u32>::first(0).limit(), 1);
        assert_eq!(
            PageRequest::<u32>::first(usize::MAX).limit(),
            MAX_PAGE_LIMIT
        );
    }

    proptest! {
        /// Following `next` from the first page visits every item once, in order.
        #[test]
        fn walking_the_pages_visits_everything_in_order(
            items in proptest::collection::hash_set(0u32..1000, 0..60),
            limit in 1usize..8,
        ) {
            let items: Vec<u32> = items.into_iter().collect();
            let mut seen = Vec::new();
            let mut after = None;
            for _ in 0..100 {
                let page = lowest(items.clone(), after.as_ref(), limit, |x| *x);
                prop_assert!(page.items.len() <= limit);
                seen.extend(page.items);
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            let mut expected = items;
            expected.sort();
            prop_assert_eq!(seen, expected);
        }
    }
}
