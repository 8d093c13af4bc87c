//! Per-source connection rate limits: a token bucket for each source IP
//! address, in bounded memory. Over its rate a source's new connections
//! are refused; other sources are served as before (unlike xinetd's `cps`,
//! where one client going over disables the whole service).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `count` connections per `per`, with bursts of up to `count`.
/// Parsed from `N/s` or `N/m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
}

impl Rate {
    /// `count` a second.
    pub fn per_second(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// `count` a minute.
    pub fn per_minute(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// How many in each period (and the largest burst).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn per(&self) -> Duration {
        self.per
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per == Duration::from_secs(60) {
            write!(f, "{}/m", self.count)
        } else if self.per == Duration::from_secs(1) {
            write!(f, "{}/s", self.count)
        } else {
            write!(f, "{} per {:?}", self.count, self.per)
        }
    }
}

/// A rate that is not `N/s` or `N/m` with N at least 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRateError(String);

impl fmt::Display for ParseRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a rate: N/s or N/m, with N at least 1 (like 5/s or 100/m)",
            self.0
        )
    }
}

impl std::error::Error for ParseRateError {}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Rate, ParseRateError> {
        let err = || ParseRateError(s.to_string());
        let (n, unit) = s.split_once('/').ok_or_else(err)?;
        let count: u32 = n.trim().parse().map_err(|_| err())?;
        if count == 0 {
            return Err(err());
        }
        match unit.trim() {
            "s" | "sec" | "second" => Ok(Rate::per_second(count)),
            "m" | "min" | "minute" => Ok(Rate::per_minute(count)),
            _ => Err(err()),
        }
    }
}

/// Sources remembered at most; past it, the idle ones are forgotten.
pub(crate) const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One token bucket per source address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub(crate) fn new(rate: Rate) -> RateLimiter {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes a token from `ip`'s bucket; false when it has none.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let burst = f64::from(self.rate.count);
        let per_sec = burst / self.rate.per.as_secs_f64();
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SOURCES && !map.contains_key(&ip) {
            // A bucket untouched for a whole period is full again:
            // forgetting it loses nothing.
            let per = self.rate.per;
            map.retain(|_, b| now.saturating_duration_since(b.at) < per);
            if map.len() >= MAX_SOURCES {
                map.clear();
            }
        }
        let b = map.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[cfg(test)]
    fn sources(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("5/s".parse::<Rate>().unwrap(), Rate::per_second(5));
        assert_eq!("100/m".parse::<Rate>().unwrap(), Rate::per_minute(100));
        for bad in ["", "5", "0/s", "-1/s", "5/h", "x/s", "5/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!(Rate::per_second(5).to_string(), "5/s");
        assert_eq!(Rate::per_minute(7).to_string(), "7/m");
    }

    #[test]
    fn a_burst_then_the_rate() {
        let l = RateLimiter::new(Rate::per_second(5));
        let t = Instant::now();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let served = (0..20).filter(|_| l.admit(a, t)).count();
        assert_eq!(served, 5);
        // Another source is not affected.
        assert!(l.admit(b, t));
        // A token comes back every 200 ms.
        assert!(!l.admit(a, t + Duration::from_millis(100)));
        assert!(l.admit(a, t + Duration::from_millis(310)));
        assert!(!l.admit(a, t + Duration::from_millis(320)));
        // After a whole period the burst is back, no more.
        let later = t + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| l.admit(a, later)).count(), 5);
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(Rate::per_second(1));
        let t = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            l.admit(IpAddr::from(i.to_be_bytes()), t);
        }
        assert!(l.sources() <= MAX_SOURCES);
        let later = t + Duration::from_secs(2);
        l.admit("10.0.0.1".parse().unwrap(), t + Duration::from_millis(1));
        l.admit("203.0.113.1".parse().unwrap(), later);
        assert!(l.sources() < 100, "{}", l.sources());
    }
}
