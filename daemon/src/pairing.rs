//! Pairing windows: a short time in which one device may enroll with a
//! one-time token. Tokens have 160 random bits, are shown once, and only
//! their SHA-256 is kept. Windows live in memory: a restart closes them,
//! which is the safe direction.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hearth_protocol::admin::PairingWindowInfo;
use hearth_protocol::{Label, MemberName};
use sha2::{Digest, Sha256};

/// Wrong tokens tolerated per source address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window for [`MAX_FAILURES`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(600);
/// How long an address is locked out after too many wrong tokens.
pub const LOCKOUT: Duration = Duration::from_secs(600);
/// What a locked-out device is told: how long, and how an administrator
/// lifts it. A fixed text (the audit keeps reasons from a fixed list), so
/// it states the lockout's length; a test keeps it equal to [`LOCKOUT`].
pub const LOCKED_OUT: &str = "too many wrong tokens: this address is locked out for 10 minutes \
     (the hub's administrator can lift it with `hearth pair --unlock ADDRESS`)";
/// The longest a window may stay open.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct Window {
    id: u32,
    token_sha256: [u8; 32],
    member: MemberName,
    label: Label,
    closes: Instant,
    closes_at: i64,
}

/// The window a valid token belongs to.
#[derive(Debug, Clone)]
pub struct OpenWindow {
    /// Its number.
    pub id: u32,
    /// The member the device will belong to.
    pub member: MemberName,
    /// The device's label.
    pub label: Label,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    since: Option<Instant>,
    locked_until: Option<Instant>,
}

/// The open pairing windows and the wrong-token counters.
#[derive(Debug, Default)]
pub struct PairingWindows {
    windows: Mutex<Vec<Window>>,
    next_id: Mutex<u32>,
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

impl PairingWindows {
    /// Opens a window; returns its number, the token (shown once) and when
    /// it closes (Unix seconds).
    pub fn open(&self, member: MemberName, label: Label, ttl: Duration) -> (u32, String, i64) {
        let ttl = ttl.min(MAX_TTL);
        let token = hex::encode(crate::random_bytes::<20>());
        let id = {
            let mut next = crate::sync::lock(&self.next_id);
            *next += 1;
            *next
        };
        let closes_at = crate::unix_now() + ttl.as_secs() as i64;
        self.lock().push(Window {
            id,
            token_sha256: Sha256::digest(token.as_bytes()).into(),
            member,
            label,
            closes: Instant::now() + ttl,
            closes_at,
        });
        (id, token, closes_at)
    }

    /// The open windows.
    pub fn list(&self) -> Vec<PairingWindowInfo> {
        self.lock()
            .iter()
            .map(|w| PairingWindowInfo {
                id: w.id,
                member: w.member.clone(),
                label: w.label.clone(),
                expires_at: w.closes_at,
            })
            .collect()
    }

    /// Closes one window, or all; returns how many closed.
    pub fn cancel(&self, id: Option<u32>) -> usize {
        let mut windows = self.lock();
        let before = windows.len();
        windows.retain(|w| id.is_some_and(|id| id != w.id));
        before - windows.len()
    }

    /// Whether any window is open.
    pub fn any_open(&self) -> bool {
        !self.lock().is_empty()
    }

    /// The window a token opens, if it is open.
    pub fn check(&self, token: &str) -> Option<OpenWindow> {
        let sha: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.lock()
            .iter()
            .find(|w| constant_time_eq(&w.token_sha256, &sha))
            .map(|w| OpenWindow {
                id: w.id,
                member: w.member.clone(),
                label: w.label.clone(),
            })
    }

    /// Closes a window because it was used; false if it had closed already.
    pub fn consume(&self, id: u32) -> bool {
        self.cancel(Some(id)) == 1
    }

    /// Whether an address is locked out now.
    pub fn locked_out(&self, ip: IpAddr) -> bool {
        let failures = crate::sync::lock(&self.failures);
        failures
            .get(&source_key(ip))
            .and_then(|f| f.locked_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Lifts a lockout (and forgets the wrong tokens counted) for an
    /// address, or its IPv6 /64; false if it was not locked out.
    pub fn unlock(&self, ip: IpAddr) -> bool {
        let mut failures = crate::sync::lock(&self.failures);
        failures
            .remove(&source_key(ip))
            .and_then(|f| f.locked_until)
            .is_some_and(|until| Instant::now() < until)
    }

    /// Counts a wrong token; returns true if the address is now locked out.
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut failures = crate::sync::lock(&self.failures);
        if failures.len() >= MAX_SOURCES {
            failures.retain(|_, f| f.locked_until.is_some_and(|u| now < u));
            if failures.len() >= MAX_SOURCES {
                // Still full of lockouts: a flood from many addresses.
                // Forget the oldest half rather than grow without bound.
                let mut ends: Vec<Instant> =
                    failures.values().filter_map(|f| f.locked_until).collect();
                ends.sort();
                let cut = ends[ends.len() / 2];
                failures.retain(|_, f| f.locked_until.is_some_and(|u| u > cut));
            }
        }
        let f = failures.entry(source_key(ip)).or_default();
        if f.since
            .is_none_or(|since| now.duration_since(since) > FAILURE_WINDOW)
        {
            f.since = Some(now);
            f.count = 0;
        }
        f.count += 1;
        if f.count >= MAX_FAILURES {
            f.locked_until = Some(now + LOCKOUT);
            f.count = 0;
            f.since = None;
            return true;
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Window>> {
        let mut windows = crate::sync::lock(&self.windows);
        let now = Instant::now();
        windows.retain(|w| w.closes > now);
        windows
    }
}

/// Compares two digests without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Sources of wrong tokens remembered at once.
const MAX_SOURCES: usize = 10_000;

/// What a lockout applies to: an IPv4 address, or an IPv6 /64 (one
/// network hands a host a whole /64, so counting /128s counts nothing).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_window_once() {
        let windows = PairingWindows::default();
        let (id, token, _) = windows.open(
            "Ada".parse().unwrap(),
            "toy".parse().unwrap(),
            Duration::from_secs(60),
        );
        assert!(token.len() >= 32);
        assert!(windows.any_open());
        assert!(windows.check("not-the-token").is_none());
        assert_eq!(windows.check(&token).unwrap().id, id);
        assert!(windows.consume(id));
        assert!(windows.check(&token).is_none());
        assert!(!windows.consume(id));
        assert!(!windows.any_open());
    }

    #[test]
    fn windows_close_when_their_time_is_up() {
        let windows = PairingWindows::default();
        let (_, token, _) = windows.open(
            "Ada".parse().unwrap(),
            "toy".parse().unwrap(),
            Duration::from_millis(30),
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(windows.check(&token).is_none());
        assert!(windows.list().is_empty());
    }

    #[test]
    fn the_lockout_message_says_how_long() {
        assert_eq!(LOCKOUT.as_secs(), 10 * 60);
        assert!(LOCKED_OUT.contains("10 minutes"));
    }

    #[test]
    fn an_unlocked_address_may_try_again() {
        let windows = PairingWindows::default();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(!windows.unlock(ip));
        for _ in 0..MAX_FAILURES {
            windows.record_failure(ip);
        }
        assert!(windows.locked_out(ip));
        // Any address of the /64 names the lockout.
        assert!(windows.unlock("2001:db8::99".parse().unwrap()));
        assert!(!windows.locked_out(ip));
    }

    #[test]
    fn repeated_failures_lock_an_address_out() {
        let windows = PairingWindows::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 1..MAX_FAILURES {
            assert!(!windows.record_failure(ip));
        }
        assert!(windows.record_failure(ip));
        assert!(windows.locked_out(ip));
        assert!(!windows.locked_out("192.0.2.2".parse().unwrap()));
    }
}
