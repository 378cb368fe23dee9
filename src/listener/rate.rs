//! `max_conn_rate`: a token bucket of connections per second. As EMQX 4 (esockd's
//! acceptor pauses when its limiter runs dry), the listener does not accept while
//! the bucket is empty: clients wait in the kernel's backlog and are accepted later,
//! none is closed for the rate. The bucket holds one second's worth, so a burst up to
//! the rate goes through at once. Pure: the caller passes the time.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct ConnRate {
    per_second: f64,
    tokens: f64,
    at: Instant,
}

impl ConnRate {
    /// A full bucket of `per_second` (>= 1) tokens.
    pub fn new(per_second: u32, now: Instant) -> ConnRate {
        let per_second = f64::from(per_second.max(1));
        ConnRate {
            per_second,
            tokens: per_second,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        self.at = now;
    }

    /// How long to wait before the next connection may be accepted (zero: now).
    pub fn wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        match self.tokens >= 1.0 {
            true => Duration::ZERO,
            false => Duration::from_secs_f64((1.0 - self.tokens) / self.per_second),
        }
    }

    /// A connection was accepted.
    pub fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_up_to_the_rate_then_one_per_interval() {
        let t0 = Instant::now();
        let mut rate = ConnRate::new(10, t0);
        for _ in 0..10 {
            assert_eq!(rate.wait(t0), Duration::ZERO);
            rate.take(t0);
        }
        let wait = rate.wait(t0);
        assert!(
            wait > Duration::from_millis(99) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        let t1 = t0 + wait;
        assert_eq!(rate.wait(t1), Duration::ZERO);
        rate.take(t1);
        assert!(rate.wait(t1) > Duration::from_millis(99));
        // A long quiet time refills one second's worth, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(rate.wait(t2), Duration::ZERO);
            rate.take(t2);
        }
        assert!(rate.wait(t2) > Duration::ZERO);
    }

    #[test]
    fn n_connections_take_about_n_over_rate_seconds() {
        let t0 = Instant::now();
        let mut rate = ConnRate::new(5, t0);
        let mut now = t0;
        for _ in 0..25 {
            now += rate.wait(now);
            rate.take(now);
        }
        // 5 at once, then 20 at 5/s.
        let took = now - t0;
        assert!(
            took >= Duration::from_millis(3990) && took <= Duration::from_millis(4010),
            "{took:?}"
        );
    }
}
