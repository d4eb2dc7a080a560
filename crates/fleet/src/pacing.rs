//! The job driver's decisions, with no I/O and no clock of their own (the caller passes
//! `now` or the time elapsed): which wave is open, how many executions may start now
//! (in-flight limit, the per-minute rate and its ramp), whether the abort rule ends the job,
//! when the lease is renewed and the counts re-read, whether the job expired, is complete, or
//! leaves nothing for its driver to do. The driver in [`crate::engine`] does the I/O around
//! them; the unit tests below need no server.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use callhome_core::jobs::{AbortRule, ExecState, JobState, Rollout};
use callhome_store::JobProgress;
use time::OffsetDateTime;

/// How often the driver re-reads its counts from the store (the executions in flight are in
/// progress in the store too).
pub const COUNTS_REFRESH: Duration = Duration::from_secs(10);

/// What the driver knows of a job's executions (rebuilt from the store at start and every
/// few seconds, kept current as executions end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Not started.
    pub pending: i64,
    /// Ended well.
    pub succeeded: i64,
    /// Ended with an error.
    pub failed: i64,
    /// Per wave (1-based, in order): (devices, finished).
    pub waves: Vec<(i64, i64)>,
}

impl Counts {
    /// The counts in a progress report from the store.
    pub fn from(p: &JobProgress) -> Self {
        Self {
            pending: p.pending,
            succeeded: p.succeeded,
            failed: p.failed,
            waves: p.waves.clone(),
        }
    }

    /// Whether every device of `wave` has finished (a wave without devices has).
    pub fn wave_done(&self, wave: i64) -> bool {
        usize::try_from(wave - 1)
            .ok()
            .and_then(|w| self.waves.get(w))
            .is_none_or(|(n, done)| done >= n)
    }

    /// The wave open now, given the one recorded (`current`) and the rollout's `waves`: the
    /// next one opens when every device of the current one has finished; never past the last.
    pub fn open_wave(&self, current: i64, waves: i64) -> i64 {
        let mut wave = current.max(1);
        while wave < waves && self.wave_done(wave) {
            wave += 1;
        }
        wave
    }

    /// Counts an execution of `wave` that ended in `state`.
    pub fn finish(&mut self, wave: i64, state: ExecState) {
        match state {
            ExecState::Succeeded => self.succeeded += 1,
            ExecState::Failed => self.failed += 1,
            _ => {}
        }
        if let Some(w) = usize::try_from(wave - 1)
            .ok()
            .and_then(|w| self.waves.get_mut(w))
        {
            w.1 += 1;
        }
    }

    /// Why `rule` ends the job now, or `None` while it does not fire.
    pub fn abort_reason(&self, rule: &AbortRule) -> Option<String> {
        let succeeded = u64::try_from(self.succeeded).unwrap_or(0);
        let failed = u64::try_from(self.failed).unwrap_or(0);
        if !rule.fires(succeeded, failed) {
            return None;
        }
        let ended = succeeded + failed;
        #[allow(clippy::cast_precision_loss)]
        let pct = failed as f64 * 100.0 / ended as f64;
        Some(format!(
            "abort rule: {failed} of {ended} executions failed ({pct:.1}% >= {}% after at least {})",
            rule.failure_percent, rule.min_executed
        ))
    }
}

/// When executions were started in the trailing minute (for the per-minute rate).
#[derive(Debug, Default)]
pub struct StartWindow {
    starts: VecDeque<Instant>,
}

impl StartWindow {
    /// Records a start at `at`.
    pub fn started(&mut self, at: Instant) {
        self.starts.push_back(at);
    }

    /// Forgets starts a minute or more before `now`; returns how many remain.
    pub fn in_last_minute(&mut self, now: Instant) -> usize {
        let minute_ago = now.checked_sub(Duration::from_secs(60));
        while self
            .starts
            .front()
            .is_some_and(|t| minute_ago.is_none_or(|m| *t <= m))
        {
            self.starts.pop_front();
        }
        self.starts.len()
    }

    /// How long the driver may sleep: `tick`, or less when a rate-limited job gets a free
    /// slot sooner (the oldest start leaving the window).
    pub fn sleep(&self, rollout: &Rollout, now: Instant, tick: Duration) -> Duration {
        match (rollout.rate_per_minute(0), self.starts.front()) {
            (Some(_), Some(first)) => (*first + Duration::from_secs(60))
                .saturating_duration_since(now)
                .min(tick),
            _ => tick,
        }
    }
}

/// How many executions may start now: what `max_in_flight` leaves beside the `in_flight`
/// ones, and what the per-minute rate (ramped by the `succeeded` count) leaves beside the
/// `started_last_minute`; 0 when nothing is pending (the store hands out at most what is
/// pending, so the room is not cut to the driver's count, which may lag behind).
pub fn room(
    rollout: &Rollout,
    counts: &Counts,
    in_flight: usize,
    started_last_minute: usize,
) -> usize {
    if counts.pending <= 0 {
        return 0;
    }
    let max = rollout.max_in_flight as usize;
    let by_flight = max - in_flight.min(max);
    let by_rate = rollout
        .rate_per_minute(u64::try_from(counts.succeeded).unwrap_or(0))
        .map_or(usize::MAX, |rate| {
            (rate as usize).saturating_sub(started_last_minute)
        });
    by_flight.min(by_rate)
}

/// Whether a lease renewed `since` ago is renewed now: every third of the `lease`, so a
/// renewal or two may fail before another node may take the job.
pub fn lease_renewal_due(since: Duration, lease: Duration) -> bool {
    since >= lease / 3
}

/// Whether counts read `since` ago are read again now (every [`COUNTS_REFRESH`]).
pub fn counts_refresh_due(since: Duration) -> bool {
    since >= COUNTS_REFRESH
}

/// Whether a job in `state` expires at `now`: it has not ended and its `expires_at` came.
pub fn expired(state: JobState, now: OffsetDateTime, expires_at: OffsetDateTime) -> bool {
    !state.is_final() && now >= expires_at
}

/// Why the abort rule of `rollout` ends a job in `state` now: `None` without a rule, once
/// the job has ended, or while the rule does not fire.
pub fn abort_reason(rollout: &Rollout, state: JobState, counts: &Counts) -> Option<String> {
    let rule = rollout.abort.as_ref()?;
    if state.is_final() {
        return None;
    }
    counts.abort_reason(rule)
}

/// Whether a running job may be complete, as far as the driver knows: nothing pending and
/// nothing `in_flight` (confirmed against the store with [`complete`]).
pub fn may_be_complete(counts: &Counts, in_flight: usize) -> bool {
    counts.pending == 0 && in_flight == 0
}

/// Whether the store's progress says every execution has ended: nothing pending, nothing in
/// progress.
pub fn complete(p: &JobProgress) -> bool {
    p.pending == 0 && p.in_progress == 0
}

/// Whether the driver of a job in `state` stops: the job has ended and none of its
/// executions is still `in_flight` here.
pub fn driver_done(state: JobState, in_flight: usize) -> bool {
    state.is_final() && in_flight == 0
}

#[cfg(test)]
mod tests {
    use callhome_core::jobs::Ramp;

    use super::*;

    fn rollout(max_in_flight: u32, max_per_minute: Option<u32>) -> Rollout {
        Rollout {
            max_in_flight,
            max_per_minute,
            ..Rollout::default()
        }
    }

    fn counts(pending: i64, succeeded: i64, failed: i64, waves: &[(i64, i64)]) -> Counts {
        Counts {
            pending,
            succeeded,
            failed,
            waves: waves.to_vec(),
        }
    }

    #[test]
    fn a_wave_opens_when_the_previous_one_has_finished() {
        let c = counts(90, 5, 0, &[(10, 5), (40, 0), (50, 0)]);
        assert_eq!(c.open_wave(1, 3), 1, "wave 1 is half done");
        let mut c = c;
        for _ in 0..5 {
            c.finish(1, ExecState::Succeeded);
        }
        assert_eq!(c.open_wave(1, 3), 2, "wave 1 done: wave 2 opens");
        assert_eq!(c.open_wave(2, 3), 2, "wave 2 not started");
        let done = counts(0, 100, 0, &[(10, 10), (40, 40), (50, 50)]);
        assert_eq!(done.open_wave(1, 3), 3, "never past the last wave");
        assert_eq!(done.open_wave(0, 1), 1, "a job without waves has one");
        let empty = counts(5, 0, 0, &[(0, 0), (5, 0)]);
        assert_eq!(empty.open_wave(1, 2), 2, "an empty wave is finished");
        let mut c = counts(1, 0, 0, &[(2, 0)]);
        c.finish(1, ExecState::Failed);
        c.finish(1, ExecState::Cancelled);
        assert_eq!((c.succeeded, c.failed, c.waves[0]), (0, 1, (2, 2)));
        // A skipped device (a firmware for another model) finishes its wave but is neither
        // a success nor a failure for the abort rule.
        let mut c = counts(2, 0, 0, &[(2, 0), (1, 0)]);
        c.finish(1, ExecState::Skipped);
        c.finish(1, ExecState::Skipped);
        assert_eq!((c.succeeded, c.failed, c.waves[0]), (0, 0, (2, 2)));
        assert_eq!(c.open_wave(1, 2), 2, "skipped devices open the next wave");
    }

    #[test]
    fn the_in_flight_limit_bounds_the_room() {
        let r = rollout(10, None);
        assert_eq!(room(&r, &counts(100, 0, 0, &[]), 0, 0), 10);
        assert_eq!(room(&r, &counts(100, 0, 0, &[]), 7, 0), 3);
        assert_eq!(
            room(&r, &counts(100, 0, 0, &[]), 12, 0),
            0,
            "over the limit"
        );
        assert_eq!(
            room(&r, &counts(2, 0, 0, &[]), 3, 0),
            7,
            "the store hands out only what is pending"
        );
        assert_eq!(room(&r, &counts(0, 9, 0, &[]), 0, 0), 0, "nothing pending");
    }

    #[test]
    fn the_rate_limits_starts_in_the_trailing_minute() {
        let r = rollout(100, Some(20));
        let c = counts(1000, 0, 0, &[]);
        let t0 = Instant::now();
        let mut w = StartWindow::default();
        assert_eq!(room(&r, &c, 0, w.in_last_minute(t0)), 20);
        for i in 0..15 {
            w.started(t0 + Duration::from_millis(i));
        }
        assert_eq!(room(&r, &c, 0, w.in_last_minute(t0)), 5);
        let tick = Duration::from_secs(1);
        assert_eq!(
            w.sleep(&r, t0, tick),
            tick,
            "the tick when no slot frees sooner"
        );
        let later = t0 + Duration::from_millis(59_500);
        assert_eq!(
            w.sleep(&r, later, tick),
            Duration::from_millis(500),
            "wake when the oldest start leaves the minute"
        );
        let after = t0 + Duration::from_secs(61);
        assert_eq!(
            w.in_last_minute(after),
            0,
            "a minute later the window is empty"
        );
        assert_eq!(room(&r, &c, 0, 0), 20);
        let unlimited = rollout(5, None);
        assert_eq!(
            room(&unlimited, &c, 0, 10_000),
            5,
            "no rate: only in flight"
        );
        assert_eq!(StartWindow::default().sleep(&unlimited, t0, tick), tick);
    }

    #[test]
    fn the_ramp_raises_the_rate_with_successes_up_to_the_cap() {
        let mut r = rollout(1000, Some(100));
        r.ramp = Some(Ramp {
            base_per_minute: 10,
            increment_factor: 2.0,
            every_succeeded: 10,
        });
        let at = |succeeded| room(&r, &counts(10_000, succeeded, 0, &[]), 0, 0);
        assert_eq!(at(0), 10);
        assert_eq!(at(9), 10);
        assert_eq!(at(10), 20, "doubled after 10 successes");
        assert_eq!(at(25), 40);
        assert_eq!(at(30), 80);
        assert_eq!(at(40), 100, "capped at max_per_minute");
        assert_eq!(at(10_000), 100);
        assert_eq!(
            room(&r, &counts(10_000, 10, 0, &[]), 0, 15),
            5,
            "what was started this minute counts"
        );
    }

    #[test]
    fn the_abort_rule_fires_with_its_reason_once_enough_have_ended() {
        let rule = AbortRule {
            failure_percent: 20.0,
            min_executed: 10,
        };
        assert_eq!(
            counts(0, 3, 5, &[]).abort_reason(&rule),
            None,
            "only 8 ended"
        );
        assert_eq!(counts(0, 9, 1, &[]).abort_reason(&rule), None, "10% < 20%");
        assert_eq!(
            counts(0, 8, 2, &[]).abort_reason(&rule).as_deref(),
            Some("abort rule: 2 of 10 executions failed (20.0% >= 20% after at least 10)")
        );
        assert_eq!(
            counts(0, 10, 0, &[]).abort_reason(&rule),
            None,
            "no failure"
        );
        let any = AbortRule {
            failure_percent: 0.0,
            min_executed: 0,
        };
        assert!(counts(0, 100, 1, &[]).abort_reason(&any).is_some());
        assert_eq!(counts(0, 0, 0, &[]).abort_reason(&any), None);
    }

    #[test]
    fn the_abort_rule_applies_only_to_a_job_that_has_not_ended() {
        let failing = counts(0, 8, 2, &[]);
        let mut r = rollout(10, None);
        assert_eq!(
            abort_reason(&r, JobState::Running, &failing),
            None,
            "no rule"
        );
        r.abort = Some(AbortRule {
            failure_percent: 20.0,
            min_executed: 10,
        });
        assert_eq!(
            abort_reason(&r, JobState::Running, &failing),
            failing.abort_reason(r.abort.as_ref().unwrap())
        );
        assert!(abort_reason(&r, JobState::Paused, &failing).is_some());
        for ended in [
            JobState::Aborted,
            JobState::Cancelled,
            JobState::Expired,
            JobState::Completed,
        ] {
            assert_eq!(
                abort_reason(&r, ended, &failing),
                None,
                "{} job",
                ended.as_str()
            );
        }
        assert_eq!(
            abort_reason(&r, JobState::Running, &counts(0, 9, 1, &[])),
            None,
            "the rule does not fire"
        );
    }

    #[test]
    fn the_lease_is_renewed_every_third_and_the_counts_every_ten_seconds() {
        let lease = Duration::from_secs(30);
        assert!(!lease_renewal_due(Duration::ZERO, lease));
        assert!(!lease_renewal_due(Duration::from_millis(9_999), lease));
        assert!(lease_renewal_due(Duration::from_secs(10), lease));
        assert!(lease_renewal_due(Duration::from_secs(45), lease));
        assert!(lease_renewal_due(
            Duration::from_secs(1),
            Duration::from_secs(3)
        ));
        assert!(!counts_refresh_due(Duration::from_millis(9_999)));
        assert!(counts_refresh_due(COUNTS_REFRESH));
        assert!(counts_refresh_due(Duration::from_secs(60)));
    }

    #[test]
    fn a_job_expires_at_its_deadline_unless_it_has_ended() {
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let before = at - time::Duration::milliseconds(1);
        assert!(!expired(JobState::Running, before, at));
        assert!(expired(JobState::Running, at, at));
        assert!(expired(JobState::Paused, at + time::Duration::hours(1), at));
        assert!(!expired(JobState::Completed, at, at), "already ended");
        assert!(!expired(JobState::Cancelled, at, at), "already ended");
    }

    #[test]
    fn a_job_is_complete_when_nothing_is_pending_or_in_flight() {
        assert!(may_be_complete(&counts(0, 5, 1, &[]), 0));
        assert!(!may_be_complete(&counts(1, 5, 1, &[]), 0), "one pending");
        assert!(!may_be_complete(&counts(0, 5, 1, &[]), 1), "one in flight");
        let progress = |pending, in_progress| JobProgress {
            total: 10,
            pending,
            in_progress,
            succeeded: 10 - pending - in_progress,
            failed: 0,
            cancelled: 0,
            expired: 0,
            skipped: 0,
            waves: vec![(10, 10 - pending - in_progress)],
        };
        assert!(complete(&progress(0, 0)));
        assert!(
            !complete(&progress(0, 1)),
            "in progress in the store (another node, or a lagging count)"
        );
        assert!(!complete(&progress(2, 0)));
        assert!(driver_done(JobState::Aborted, 0));
        assert!(
            !driver_done(JobState::Aborted, 3),
            "executions still finishing"
        );
        assert!(!driver_done(JobState::Running, 0));
        assert!(!driver_done(JobState::Paused, 0));
    }
}
