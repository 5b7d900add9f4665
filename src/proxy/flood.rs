//! `limits.new_sessions_per_ip`: how many new sessions one client address may make, so that a
//! bot that never returns a cookie cannot fill the store (the app's answer still goes out, with
//! no session and no cookie).
//!
//! The check runs only where a session would be created, never on a request that keeps one.
//! Its memory is one small entry per address that created lately (swept every
//! [`SWEEP_EVERY`] checks), far less than the sessions it keeps out of the store.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Rate;

/// Checks between two sweeps of the addresses whose allowance is whole again.
const SWEEP_EVERY: u32 = 1024;

/// The per-address allowance of new sessions, and a once-a-minute allowance of log lines per
/// address that went over it.
pub struct NewSessions {
    allowed: DefaultKeyedRateLimiter<IpAddr>,
    told: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU32,
}

impl std::fmt::Debug for NewSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSessions").finish_non_exhaustive()
    }
}

/// What one creation may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Create,
    /// Over the cap; `tell` when this address's once-a-minute log line is due.
    Refuse {
        tell: bool,
    },
}

impl NewSessions {
    /// `None` for no cap; shared, since a reload that keeps the rate keeps the counts.
    pub fn new(rate: Option<Rate>) -> Option<Arc<Self>> {
        let rate = rate?;
        // A burst of `count`, one more every `per / count`; `Rate` keeps both positive, so the
        // period is at least a microsecond for any count up to 1,000,000 per second.
        let quota = Quota::with_period(rate.per / rate.count.get())?.allow_burst(rate.count);
        Some(Arc::new(NewSessions {
            allowed: RateLimiter::keyed(quota),
            told: RateLimiter::keyed(Quota::per_minute(NonZeroU32::MIN)),
            checks: AtomicU32::new(0),
        }))
    }

    /// Counts one new session for `ip` (an IPv6 address counts for its /64, which one client
    /// usually holds whole).
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let key = prefix(ip);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.allowed.retain_recent();
            self.told.retain_recent();
        }
        match self.allowed.check_key(&key) {
            Ok(()) => Verdict::Create,
            Err(_) => Verdict::Refuse {
                tell: self.told.check_key(&key).is_ok(),
            },
        }
    }
}

/// The address a client is counted by: itself for IPv4, its /64 for IPv6.
pub fn prefix(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cap(count: u32) -> Arc<NewSessions> {
        NewSessions::new(Some(Rate {
            count: NonZeroU32::new(count).unwrap(),
            per: Duration::from_secs(60),
        }))
        .unwrap()
    }

    #[test]
    fn an_address_gets_its_burst_then_is_refused_and_told_once() {
        let cap = cap(3);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(cap.check(ip), Verdict::Create);
        }
        assert_eq!(cap.check(ip), Verdict::Refuse { tell: true });
        assert_eq!(cap.check(ip), Verdict::Refuse { tell: false });
        // Another address has its own allowance.
        assert_eq!(cap.check("192.0.2.8".parse().unwrap()), Verdict::Create);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        let cap = cap(1);
        assert_eq!(
            cap.check("2001:db8:1:2::1".parse().unwrap()),
            Verdict::Create
        );
        assert!(matches!(
            cap.check("2001:db8:1:2:ffff::9".parse().unwrap()),
            Verdict::Refuse { .. }
        ));
        assert_eq!(
            cap.check("2001:db8:1:3::1".parse().unwrap()),
            Verdict::Create
        );
        assert_eq!(
            prefix("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn no_rate_no_cap() {
        assert!(NewSessions::new(None).is_none());
    }
}
