//! Login throttling, per user name and per client address.
//!
//! Every failed password login counts against the user name tried (known or not, so that
//! the answer does not reveal which names exist) and against the client's address. Past a
//! number of free failures each further failure imposes an exponential back-off (base delay,
//! doubled per failure, capped); at the lockout threshold the name or address is locked for
//! the lockout duration. While a name or address is backing off or locked, every login for
//! it is refused with 429 and `Retry-After`, a correct password included, before any
//! password is checked (so a throttled attempt costs no argon2 hash). A successful login
//! clears its user name's failures (not its address's: one good account must not launder a
//! guessing address). Failures are forgotten once a name or address stayed quiet for the
//! lockout duration.
//!
//! The state is in memory, per node (several nodes each throttle on their own), and bounded
//! ([`MAX_ENTRIES`]): when full, forgotten entries are dropped first, then entries that are
//! not currently blocked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most names and addresses tracked at once.
pub const MAX_ENTRIES: usize = 100_000;

/// Longest user name kept as a key (longer names cannot exist; they are cut).
const MAX_NAME: usize = 128;

/// Throttling thresholds and durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures for one user name before back-off starts.
    pub user_free_failures: u32,
    /// Failures for one user name that lock it.
    pub user_lockout_failures: u32,
    /// Failures from one address before back-off starts.
    pub address_free_failures: u32,
    /// Failures from one address that lock it.
    pub address_lockout_failures: u32,
    /// Back-off after the first failure past the free ones; doubled per further failure.
    pub base_delay: Duration,
    /// Longest back-off.
    pub max_delay: Duration,
    /// How long a lockout lasts; also how long failures are remembered.
    pub lockout: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            user_free_failures: 3,
            user_lockout_failures: 10,
            address_free_failures: 20,
            address_lockout_failures: 100,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            lockout: Duration::from_secs(900),
        }
    }
}

/// What is throttled: a user name or a client address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user name (as tried; cut to 128 characters).
    User(String),
    /// A client address.
    Address(IpAddr),
}

impl Subject {
    fn user(name: &str) -> Self {
        Subject::User(name.chars().take(MAX_NAME).collect())
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User(u) => write!(f, "user {u}"),
            Subject::Address(a) => write!(f, "address {a}"),
        }
    }
}

/// A login refused before its password was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The user name or address that is blocked.
    pub subject: Subject,
    /// Locked (past the lockout threshold), rather than backing off.
    pub locked: bool,
    /// How long until a login may be tried again.
    pub retry_after: Duration,
}

impl Refused {
    /// `Retry-After` in whole seconds (at least 1).
    pub fn retry_after_s(&self) -> u64 {
        let ms = self.retry_after.as_millis();
        u64::try_from(ms.div_ceil(1000)).unwrap_or(u64::MAX).max(1)
    }
}

/// A lockout that a failure just started (to be audited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// Who is locked.
    pub subject: Subject,
    /// Failures counted.
    pub failures: u32,
    /// For how long.
    pub duration: Duration,
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    /// Backing off or locked until then (`None`: never blocked).
    blocked_until: Option<Instant>,
    locked: bool,
}

impl Entry {
    fn blocked_at(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|u| u > now)
    }
}

/// The per-node login throttle.
#[derive(Debug)]
pub struct LoginThrottle {
    settings: ThrottleSettings,
    entries: Mutex<HashMap<Subject, Entry>>,
}

impl LoginThrottle {
    /// A throttle with `settings`.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ThrottleSettings {
        &self.settings
    }

    fn subjects(username: &str, addr: Option<IpAddr>) -> Vec<Subject> {
        let mut s = vec![Subject::user(username)];
        if let Some(a) = addr {
            s.push(Subject::Address(a));
        }
        s
    }

    /// `Err` if the user name or the address is backing off or locked at `now`.
    pub fn check(&self, username: &str, addr: Option<IpAddr>, now: Instant) -> Result<(), Refused> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut refused: Option<Refused> = None;
        for subject in Self::subjects(username, addr) {
            let Some(e) = entries.get(&subject) else {
                continue;
            };
            if let Some(until) = e.blocked_until.filter(|u| *u > now) {
                let retry_after = until - now;
                if refused.as_ref().is_none_or(|r| r.retry_after < retry_after) {
                    refused = Some(Refused {
                        subject,
                        locked: e.locked,
                        retry_after,
                    });
                }
            }
        }
        match refused {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    /// Records a failed login; returns the lockouts it started.
    pub fn failed(&self, username: &str, addr: Option<IpAddr>, now: Instant) -> Vec<Lockout> {
        let s = &self.settings;
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut started = Vec::new();
        for subject in Self::subjects(username, addr) {
            let (free, lock_at) = match subject {
                Subject::User(_) => (s.user_free_failures, s.user_lockout_failures),
                Subject::Address(_) => (s.address_free_failures, s.address_lockout_failures),
            };
            if !entries.contains_key(&subject) && !make_room(&mut entries, now, s) {
                continue;
            }
            let e = entries.entry(subject.clone()).or_insert(Entry {
                failures: 0,
                last_failure: now,
                blocked_until: None,
                locked: false,
            });
            if now.saturating_duration_since(e.last_failure) > s.lockout && !e.blocked_at(now) {
                // Quiet for a whole lockout period: start over.
                e.failures = 0;
                e.locked = false;
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            if e.failures >= lock_at {
                if !(e.locked && e.blocked_at(now)) {
                    started.push(Lockout {
                        subject: subject.clone(),
                        failures: e.failures,
                        duration: s.lockout,
                    });
                }
                e.locked = true;
                e.blocked_until = Some(now + s.lockout);
            } else if e.failures > free {
                let doublings = (e.failures - free - 1).min(30);
                let delay = s
                    .base_delay
                    .saturating_mul(1u32 << doublings)
                    .min(s.max_delay);
                e.blocked_until = e.blocked_until.max(Some(now + delay));
            }
        }
        started
    }

    /// Records a successful login: the user name's failures are cleared.
    pub fn succeeded(&self, username: &str) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&Subject::user(username));
    }

    /// Names and addresses tracked (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Makes room for one more entry: drops forgotten entries, then unblocked ones. `false` if
/// every entry is blocked (the failure is then not recorded for this subject; the address
/// entry of a flood is already blocked, so the flood is refused anyway).
fn make_room(entries: &mut HashMap<Subject, Entry>, now: Instant, s: &ThrottleSettings) -> bool {
    if entries.len() < MAX_ENTRIES {
        return true;
    }
    entries.retain(|_, e| {
        e.blocked_at(now) || now.saturating_duration_since(e.last_failure) <= s.lockout
    });
    if entries.len() < MAX_ENTRIES {
        return true;
    }
    entries.retain(|_, e| e.blocked_at(now));
    metrics::counter!("callhome_login_throttle_evictions_total").increment(1);
    entries.len() < MAX_ENTRIES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            user_free_failures: 2,
            user_lockout_failures: 5,
            address_free_failures: 4,
            address_lockout_failures: 8,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(3),
            lockout: Duration::from_secs(60),
        }
    }

    #[test]
    fn back_off_doubles_then_locks_and_a_success_clears_the_user() {
        let t = LoginThrottle::new(settings());
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        // Two free failures.
        for i in 0..2 {
            assert!(t.check("alice", Some(addr), t0).is_ok(), "attempt {i}");
            assert!(t.failed("alice", Some(addr), t0).is_empty());
        }
        assert!(t.check("alice", Some(addr), t0).is_ok());
        // Third: 1 s back-off; fourth (after it): 2 s; fifth: locked for 60 s.
        t.failed("alice", Some(addr), t0);
        let r = t.check("alice", Some(addr), t0).unwrap_err();
        assert_eq!((r.locked, r.retry_after_s()), (false, 1));
        let t1 = t0 + Duration::from_secs(1);
        assert!(t.check("alice", Some(addr), t1).is_ok());
        t.failed("alice", Some(addr), t1);
        assert_eq!(t.check("alice", None, t1).unwrap_err().retry_after_s(), 2);
        let t2 = t1 + Duration::from_secs(2);
        let lockouts = t.failed("alice", Some(addr), t2);
        assert_eq!(
            lockouts,
            vec![Lockout {
                subject: Subject::User("alice".into()),
                failures: 5,
                duration: Duration::from_secs(60),
            }]
        );
        let r = t
            .check("alice", None, t2 + Duration::from_secs(59))
            .unwrap_err();
        assert!(r.locked);
        assert_eq!(r.subject, Subject::User("alice".into()));
        // Another user from another address is not affected.
        assert!(
            t.check("bob", Some("192.0.2.2".parse().unwrap()), t2)
                .is_ok()
        );
        // The lockout passes; a success clears the user's failures.
        let t3 = t2 + Duration::from_secs(61);
        assert!(t.check("alice", None, t3).is_ok());
        t.succeeded("alice");
        t.failed("alice", None, t3);
        assert!(t.check("alice", None, t3).is_ok(), "failures start over");
    }

    #[test]
    fn an_address_guessing_many_names_is_throttled_and_then_locked() {
        let t = LoginThrottle::new(settings());
        let addr: IpAddr = "192.0.2.9".parse().unwrap();
        let now = Instant::now();
        for i in 0..4 {
            t.failed(&format!("user{i}"), Some(addr), now);
        }
        assert!(t.check("user99", Some(addr), now).is_ok());
        t.failed("user4", Some(addr), now);
        let r = t.check("user99", Some(addr), now).unwrap_err();
        assert_eq!(r.subject, Subject::Address(addr));
        let mut lockouts = Vec::new();
        for i in 5..8 {
            lockouts.extend(t.failed(&format!("user{i}"), Some(addr), now));
        }
        assert_eq!(lockouts.len(), 1);
        assert_eq!(lockouts[0].subject, Subject::Address(addr));
        assert!(t.check("user99", Some(addr), now).unwrap_err().locked);
        // Another address is free.
        assert!(
            t.check("user99", Some("192.0.2.10".parse().unwrap()), now)
                .is_ok()
        );
    }

    /// A check that took its time before a concurrent first failure was recorded is not
    /// refused by it (the failure's entry is not "blocked until now").
    #[test]
    fn a_first_failure_does_not_block_a_check_taken_just_before_it() {
        let t = LoginThrottle::new(settings());
        let earlier = Instant::now();
        let later = earlier + Duration::from_millis(5);
        t.failed("dave", Some("192.0.2.3".parse().unwrap()), later);
        assert!(
            t.check("dave", Some("192.0.2.3".parse().unwrap()), earlier)
                .is_ok()
        );
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_lockout_period() {
        let t = LoginThrottle::new(settings());
        let now = Instant::now();
        for _ in 0..4 {
            t.failed("carol", None, now);
        }
        let later = now + Duration::from_secs(120);
        assert!(t.check("carol", None, later).is_ok());
        t.failed("carol", None, later);
        assert!(
            t.check("carol", None, later).is_ok(),
            "counting from 1 again"
        );
    }
}
