//! Bulk jobs: the rules a rollout follows, as pure functions of counts and time the caller
//! passes in (the engine that runs them lives in `callhome-fleet`).
//!
//! - [`TagExpr`]: target expressions over device tags (`region:north and not pilot`).
//! - [`Rollout`]: maximum in flight, maximum per minute with an optional exponential
//!   ramp-up ([`Ramp`], after AWS IoT Jobs), waves by cumulative percentage (after hawkBit's
//!   rollout groups), an abort rule ([`AbortRule`]: failure percentage once at least N
//!   executions ended), and the job's expiry.
//! - [`JobState`] and [`ExecState`]: where a job and each device's execution are, and which
//!   moves are allowed.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// Longest tag expression accepted.
pub const MAX_TAG_EXPR_LEN: usize = 1024;
/// Deepest nesting of a tag expression.
pub const MAX_TAG_EXPR_DEPTH: usize = 32;
/// Most devices one job may target.
pub const MAX_JOB_DEVICES: usize = 1_000_000;
/// Most executions in flight at once for one job.
pub const MAX_IN_FLIGHT: u32 = 10_000;

/// A boolean expression over tags: `a`, `not a`, `a and b`, `a or b`, parentheses.
/// Keywords are case-insensitive; `and` binds tighter than `or`. A tag matches a device
/// that carries exactly that tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagExpr {
    /// The device carries this tag.
    Tag(String),
    /// Negation.
    Not(Box<TagExpr>),
    /// Both.
    And(Box<TagExpr>, Box<TagExpr>),
    /// Either.
    Or(Box<TagExpr>, Box<TagExpr>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Tag(String),
}

fn tokenize(s: &str) -> Result<Vec<Token>, ValidationError> {
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Token>| -> Result<(), ValidationError> {
        if word.is_empty() {
            return Ok(());
        }
        let t = match word.to_ascii_lowercase().as_str() {
            "and" | "&&" => Token::And,
            "or" | "||" => Token::Or,
            "not" | "!" => Token::Not,
            _ => {
                crate::Tag::parse(word).map_err(|e| {
                    ValidationError::new(
                        FIELD,
                        format!("'{word}' is not a valid tag: {}", e.reason),
                    )
                })?;
                Token::Tag(word.clone())
            }
        };
        out.push(t);
        word.clear();
        Ok(())
    };
    for c in s.chars() {
        match c {
            '(' | ')' | '!' => {
                flush(&mut word, &mut out)?;
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    _ => Token::Not,
                });
            }
            c if c.is_whitespace() => flush(&mut word, &mut out)?,
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out)?;
    Ok(out)
}

const FIELD: &str = "target.tag_expr";

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn err(&self, what: &str) -> ValidationError {
        ValidationError::new(FIELD, format!("{what} at token {}", self.pos + 1))
    }

    fn or(&mut self, depth: usize) -> Result<TagExpr, ValidationError> {
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            let right = self.and(depth)?;
            left = TagExpr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<TagExpr, ValidationError> {
        let mut left = self.not(depth)?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            let right = self.not(depth)?;
            left = TagExpr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self, depth: usize) -> Result<TagExpr, ValidationError> {
        if depth > MAX_TAG_EXPR_DEPTH {
            return Err(self.err(&format!("nested deeper than {MAX_TAG_EXPR_DEPTH}")));
        }
        match self.peek().cloned() {
            Some(Token::Not) => {
                self.pos += 1;
                Ok(TagExpr::Not(Box::new(self.not(depth + 1)?)))
            }
            Some(Token::Open) => {
                self.pos += 1;
                let e = self.or(depth + 1)?;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.err("expected ')'"));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Token::Tag(t)) => {
                self.pos += 1;
                Ok(TagExpr::Tag(t))
            }
            Some(Token::Close) => Err(self.err("unexpected ')'")),
            Some(Token::And | Token::Or) => Err(self.err("expected a tag, 'not' or '('")),
            None => Err(self.err("expected a tag, 'not' or '(' but the expression ended")),
        }
    }
}

impl TagExpr {
    /// Parses an expression; a rejection names `target.tag_expr` and the problem.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.len() > MAX_TAG_EXPR_LEN {
            return Err(ValidationError::new(
                FIELD,
                format!("longer than {MAX_TAG_EXPR_LEN} characters"),
            ));
        }
        let tokens = tokenize(s)?;
        if tokens.is_empty() {
            return Err(ValidationError::new(FIELD, "is empty"));
        }
        let mut p = Parser { tokens, pos: 0 };
        let e = p.or(0)?;
        if p.pos != p.tokens.len() {
            return Err(p.err("unexpected token"));
        }
        Ok(e)
    }

    /// Whether a device with `tags` matches.
    pub fn matches(&self, tags: &[String]) -> bool {
        match self {
            TagExpr::Tag(t) => tags.iter().any(|x| x == t),
            TagExpr::Not(e) => !e.matches(tags),
            TagExpr::And(a, b) => a.matches(tags) && b.matches(tags),
            TagExpr::Or(a, b) => a.matches(tags) || b.matches(tags),
        }
    }

    /// A tag every matching device must carry, if there is one (lets a store narrow the
    /// candidates before the expression is evaluated).
    pub fn required_tag(&self) -> Option<&str> {
        match self {
            TagExpr::Tag(t) => Some(t),
            TagExpr::And(a, b) => a.required_tag().or_else(|| b.required_tag()),
            TagExpr::Not(_) | TagExpr::Or(..) => None,
        }
    }
}

/// Exponential ramp-up of the start rate (after AWS IoT Jobs' `exponentialRate`): start at
/// `base_per_minute`, multiply by `increment_factor` each time another `every_succeeded`
/// executions have succeeded, never above the rollout's `max_per_minute`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ramp {
    /// Starts per minute at first.
    pub base_per_minute: u32,
    /// Growth factor (more than 1, at most 5).
    pub increment_factor: f64,
    /// Successes between two increases.
    pub every_succeeded: u32,
}

/// Stop the job when too many executions fail.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortRule {
    /// Abort when failed / ended executions reaches this percentage...
    pub failure_percent: f64,
    /// ...once at least this many executions have ended (succeeded or failed).
    pub min_executed: u32,
}

impl AbortRule {
    /// Whether the rule fires for these counts.
    pub fn fires(&self, succeeded: u64, failed: u64) -> bool {
        let ended = succeeded + failed;
        #[allow(clippy::cast_precision_loss)]
        let pct = if ended == 0 {
            0.0
        } else {
            failed as f64 * 100.0 / ended as f64
        };
        ended >= u64::from(self.min_executed) && failed > 0 && pct >= self.failure_percent
    }
}

/// How a job rolls out. Every field has a default.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Most executions in flight at once (default 50).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: u32,
    /// Most executions started in any 60 s (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_minute: Option<u32>,
    /// Exponential ramp-up of the start rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<Ramp>,
    /// Waves as cumulative percentages of the targets, ending at 100 (e.g. `[1, 10, 100]`);
    /// a wave starts once every device of the ones before has finished (an offline device
    /// holds the next wave until it is done or the job expires, as in hawkBit). Empty: one wave.
    #[serde(default)]
    pub waves: Vec<f64>,
    /// Abort rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortRule>,
    /// Devices not done by then (offline ones wait until this) end `expired` (default one
    /// day, at most 30 days).
    #[serde(default = "default_expires")]
    pub expires_in_s: u64,
    /// Reply timeout of each command the job sends (default 30 s).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_s: u32,
}

fn default_in_flight() -> u32 {
    50
}
fn default_expires() -> u64 {
    86_400
}
fn default_command_timeout() -> u32 {
    30
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            max_in_flight: default_in_flight(),
            max_per_minute: None,
            ramp: None,
            waves: Vec::new(),
            abort: None,
            expires_in_s: default_expires(),
            command_timeout_s: default_command_timeout(),
        }
    }
}

impl Rollout {
    /// Checks every field; each problem names its field (`rollout.max_in_flight`, ...).
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut errors = Vec::new();
        let mut bad =
            |f: &str, r: String| errors.push(ValidationError::new(format!("rollout.{f}"), r));
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            bad(
                "max_in_flight",
                format!("must be between 1 and {MAX_IN_FLIGHT}"),
            );
        }
        if let Some(m) = self.max_per_minute
            && !(1..=1_000_000).contains(&m)
        {
            bad("max_per_minute", "must be between 1 and 1000000".into());
        }
        if let Some(r) = &self.ramp {
            if r.base_per_minute == 0 {
                bad("ramp.base_per_minute", "must be at least 1".into());
            }
            if !(r.increment_factor > 1.0 && r.increment_factor <= 5.0) {
                bad(
                    "ramp.increment_factor",
                    "must be more than 1 and at most 5".into(),
                );
            }
            if r.every_succeeded == 0 {
                bad("ramp.every_succeeded", "must be at least 1".into());
            }
            if let Some(m) = self.max_per_minute
                && r.base_per_minute > m
            {
                bad(
                    "ramp.base_per_minute",
                    "must not be above max_per_minute".into(),
                );
            }
        }
        if self.waves.len() > 20 {
            bad("waves", "at most 20 waves".into());
        }
        let mut last = 0.0;
        for (i, w) in self.waves.iter().enumerate() {
            if !(w.is_finite() && *w > last && *w <= 100.0) {
                bad(
                    &format!("waves[{i}]"),
                    "waves are increasing cumulative percentages above 0 and at most 100".into(),
                );
                break;
            }
            last = *w;
        }
        if !self.waves.is_empty() && (last - 100.0).abs() > f64::EPSILON {
            bad("waves", "the last wave must be 100 (every device)".into());
        }
        if let Some(a) = &self.abort
            && !(a.failure_percent > 0.0 && a.failure_percent <= 100.0)
        {
            bad(
                "abort.failure_percent",
                "must be more than 0 and at most 100".into(),
            );
        }
        if !(60..=30 * 86_400).contains(&self.expires_in_s) {
            bad(
                "expires_in_s",
                "must be between 60 and 2592000 (30 days)".into(),
            );
        }
        if !(1..=600).contains(&self.command_timeout_s) {
            bad("command_timeout_s", "must be between 1 and 600".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The number of waves (at least 1).
    pub fn wave_count(&self) -> u32 {
        u32::try_from(self.waves.len().max(1)).unwrap_or(u32::MAX)
    }

    /// The wave (1-based) of the device at `index` (0-based, in target order) of `total`.
    pub fn wave_of(&self, index: usize, total: usize) -> u32 {
        let mut wave = 1;
        for pct in &self.waves {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss
            )]
            let end = ((pct * total as f64) / 100.0).ceil() as usize;
            if index < end.max(1) {
                return wave;
            }
            wave += 1;
        }
        wave.min(self.wave_count())
    }

    /// Starts allowed in the trailing minute after `succeeded` successes; `None`: no limit.
    pub fn rate_per_minute(&self, succeeded: u64) -> Option<u32> {
        match (&self.ramp, self.max_per_minute) {
            (None, m) => m,
            (Some(r), m) => {
                let steps = succeeded / u64::from(r.every_succeeded.max(1));
                let steps = i32::try_from(steps.min(64)).unwrap_or(64);
                let rate = f64::from(r.base_per_minute) * r.increment_factor.powi(steps);
                let cap = f64::from(m.unwrap_or(u32::MAX));
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Some(rate.min(cap).max(1.0) as u32)
            }
        }
    }
}

/// Where a job is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Starting executions.
    Running,
    /// Not starting new executions (the ones in flight finish).
    Paused,
    /// Every device finished.
    Completed,
    /// Stopped by its abort rule.
    Aborted,
    /// Stopped by an operator.
    Cancelled,
    /// Its expiry passed with devices not done.
    Expired,
}

impl JobState {
    /// All states.
    pub const ALL: [JobState; 6] = [
        JobState::Running,
        JobState::Paused,
        JobState::Completed,
        JobState::Aborted,
        JobState::Cancelled,
        JobState::Expired,
    ];

    /// The stored and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Completed => "completed",
            JobState::Aborted => "aborted",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "state",
                    "must be running, paused, completed, aborted, cancelled or expired",
                )
            })
    }

    /// No more executions will start.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Running | JobState::Paused)
    }

    /// Whether an operator's or the engine's move from `self` to `to` is allowed.
    pub fn can_move_to(self, to: JobState) -> bool {
        use JobState::{Aborted, Cancelled, Completed, Expired, Paused, Running};
        matches!(
            (self, to),
            (Running, Paused | Completed | Aborted | Cancelled | Expired)
                | (Paused, Running | Cancelled | Expired | Aborted)
        )
    }
}

/// Where one device's execution of a job is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecState {
    /// Not started (offline devices wait here).
    Pending,
    /// Started.
    InProgress,
    /// Done.
    Succeeded,
    /// Done, with an error.
    Failed,
    /// Never started: the job was cancelled or aborted.
    Cancelled,
    /// Never started: the job expired first.
    Expired,
    /// Not run: the device did not qualify (a firmware for another model, already at the
    /// target version...); the reason is in its outcome and error. Neither a success nor a
    /// failure for the abort rule.
    Skipped,
}

impl ExecState {
    /// All states.
    pub const ALL: [ExecState; 7] = [
        ExecState::Pending,
        ExecState::InProgress,
        ExecState::Succeeded,
        ExecState::Failed,
        ExecState::Cancelled,
        ExecState::Expired,
        ExecState::Skipped,
    ];

    /// The stored and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecState::Pending => "pending",
            ExecState::InProgress => "in_progress",
            ExecState::Succeeded => "succeeded",
            ExecState::Failed => "failed",
            ExecState::Cancelled => "cancelled",
            ExecState::Expired => "expired",
            ExecState::Skipped => "skipped",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "state",
                    "must be pending, in_progress, succeeded, failed, cancelled, expired or skipped",
                )
            })
    }

    /// Ended (one way or another).
    pub fn is_final(self) -> bool {
        !matches!(self, ExecState::Pending | ExecState::InProgress)
    }
}

/// When an apply restarts the modem.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartPolicy {
    /// When a changed key needs it ([`crate::configtxt::schema::needs_restart`]).
    #[default]
    Auto,
    /// After any change.
    Always,
    /// Never (changes wait for the next restart).
    Never,
}

impl RestartPolicy {
    /// The JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Auto => "auto",
            RestartPolicy::Always => "always",
            RestartPolicy::Never => "never",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn tag_expressions_parse_and_match() {
        let e = TagExpr::parse("region:north and not pilot").unwrap();
        assert!(e.matches(&tags(&["region:north"])));
        assert!(!e.matches(&tags(&["region:north", "pilot"])));
        assert!(!e.matches(&tags(&["region:south"])));
        assert_eq!(e.required_tag(), Some("region:north"));
        let e = TagExpr::parse("a OR b and c").unwrap();
        assert!(e.matches(&tags(&["a"])));
        assert!(!e.matches(&tags(&["b"])));
        assert!(e.matches(&tags(&["b", "c"])));
        assert_eq!(e.required_tag(), None);
        let e = TagExpr::parse("(a or b) and c").unwrap();
        assert!(!e.matches(&tags(&["a"])));
        assert!(e.matches(&tags(&["a", "c"])));
        assert!(TagExpr::parse("not not x").unwrap().matches(&tags(&["x"])));
        assert!(TagExpr::parse("!x").unwrap().matches(&tags(&[])));
    }

    #[test]
    fn bad_tag_expressions_name_the_problem() {
        for (s, want) in [
            ("", "is empty"),
            ("a and", "ended"),
            ("(a or b", "expected ')'"),
            ("a b", "unexpected token"),
            ("a ) b", "unexpected token"),
            ("or a", "expected a tag"),
            ("a and bad*tag", "not a valid tag"),
        ] {
            let e = TagExpr::parse(s).unwrap_err();
            assert_eq!(e.field, "target.tag_expr");
            assert!(e.reason.contains(want), "{s}: {}", e.reason);
        }
        let deep = format!("{}a{}", "(".repeat(40), ")".repeat(40));
        assert!(TagExpr::parse(&deep).unwrap_err().reason.contains("nested"));
        assert!(TagExpr::parse(&"a or ".repeat(300)).is_err());
    }

    #[test]
    fn waves_split_targets_by_cumulative_percentage() {
        let r = Rollout {
            waves: vec![10.0, 50.0, 100.0],
            ..Rollout::default()
        };
        assert!(r.validate().is_ok());
        let waves: Vec<u32> = (0..20).map(|i| r.wave_of(i, 20)).collect();
        assert_eq!(waves[..2], [1, 1]);
        assert_eq!(waves[2..10], [2; 8]);
        assert_eq!(waves[10..], [3; 10]);
        // A tiny first wave still holds one device.
        let r = Rollout {
            waves: vec![1.0, 100.0],
            ..Rollout::default()
        };
        assert_eq!(r.wave_of(0, 5), 1);
        assert_eq!(r.wave_of(1, 5), 2);
        assert_eq!(Rollout::default().wave_of(7, 9), 1);
    }

    #[test]
    fn rollout_validation_names_fields() {
        let r = Rollout {
            max_in_flight: 0,
            waves: vec![50.0, 40.0],
            abort: Some(AbortRule {
                failure_percent: 0.0,
                min_executed: 1,
            }),
            ramp: Some(Ramp {
                base_per_minute: 0,
                increment_factor: 1.0,
                every_succeeded: 0,
            }),
            expires_in_s: 1,
            command_timeout_s: 0,
            max_per_minute: Some(0),
        };
        let fields: Vec<String> = r
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        for f in [
            "rollout.max_in_flight",
            "rollout.max_per_minute",
            "rollout.ramp.base_per_minute",
            "rollout.ramp.increment_factor",
            "rollout.ramp.every_succeeded",
            "rollout.waves[1]",
            "rollout.abort.failure_percent",
            "rollout.expires_in_s",
            "rollout.command_timeout_s",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn ramp_grows_exponentially_up_to_the_maximum() {
        let r = Rollout {
            max_per_minute: Some(100),
            ramp: Some(Ramp {
                base_per_minute: 10,
                increment_factor: 2.0,
                every_succeeded: 5,
            }),
            ..Rollout::default()
        };
        assert_eq!(r.rate_per_minute(0), Some(10));
        assert_eq!(r.rate_per_minute(4), Some(10));
        assert_eq!(r.rate_per_minute(5), Some(20));
        assert_eq!(r.rate_per_minute(10), Some(40));
        assert_eq!(r.rate_per_minute(1000), Some(100));
        assert_eq!(Rollout::default().rate_per_minute(10), None);
    }

    #[test]
    fn abort_rule_waits_for_enough_executions() {
        let a = AbortRule {
            failure_percent: 10.0,
            min_executed: 50,
        };
        assert!(!a.fires(0, 10)); // 10 ended < 50
        assert!(!a.fires(46, 4)); // 8 %
        assert!(a.fires(45, 5)); // 10 %
        assert!(!a.fires(1000, 0));
    }

    #[test]
    fn job_state_moves() {
        assert!(JobState::Running.can_move_to(JobState::Paused));
        assert!(JobState::Paused.can_move_to(JobState::Running));
        assert!(!JobState::Completed.can_move_to(JobState::Running));
        assert!(!JobState::Cancelled.can_move_to(JobState::Paused));
        assert!(!JobState::Paused.can_move_to(JobState::Completed));
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()).unwrap(), s);
        }
        for s in ExecState::ALL {
            assert_eq!(ExecState::parse(s.as_str()).unwrap(), s);
        }
    }
}
