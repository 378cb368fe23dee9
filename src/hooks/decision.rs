//! `Decision`: the answer of a hook that may need I/O. A hook that knows at once
//! (an in-memory user table, acl.conf, a cache hit) answers `Ready` and costs no
//! allocation; one that must ask a server (HTTP, Redis, SQL, LDAP) answers `Pending`
//! with a future, which the caller awaits without blocking its other work.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

/// A future a hook hands back; `'static` so a channel can keep it while it goes on
/// with other inputs (a hook clones the `Arc`s it needs into it).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pub enum Decision<T> {
    Ready(T),
    Pending(BoxFuture<T>),
}

impl<T> Decision<T> {
    pub fn pending(fut: impl Future<Output = T> + Send + 'static) -> Decision<T> {
        Decision::Pending(Box::pin(fut))
    }

    /// The answer, if it needs no waiting.
    pub fn ready(self) -> Result<T, BoxFuture<T>> {
        match self {
            Decision::Ready(v) => Ok(v),
            Decision::Pending(fut) => Err(fut),
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Decision::Ready(_))
    }

    /// Wait for the answer (for callers that may simply await, e.g. tests, bridges).
    pub async fn resolve(self) -> T {
        match self {
            Decision::Ready(v) => v,
            Decision::Pending(fut) => fut.await,
        }
    }
}

impl<T: Send + 'static> Decision<T> {
    /// Apply `f` to the answer, now if it is ready, else when the future completes.
    pub fn map<U>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Decision<U> {
        match self {
            Decision::Ready(v) => Decision::Ready(f(v)),
            Decision::Pending(fut) => Decision::pending(async move { f(fut.await) }),
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Decision<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Ready(v) => f.debug_tuple("Ready").field(v).finish(),
            Decision::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}
