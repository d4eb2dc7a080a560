//! HTTP Range arithmetic for firmware downloads (RFC 9110 §14, formerly RFC 7233).
//!
//! Only what a modem resuming a download needs: one `bytes=` range, `a-b`, `a-` or `-n`,
//! optionally under an `If-Range` carrying the blob's strong entity tag. Anything else a
//! server may ignore (RFC 9110 §14.2), and does: the whole file is sent.

/// What to send for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole file (200).
    Full,
    /// Bytes `start..=end` (206 with `Content-Range: bytes start-end/size`).
    Partial {
        /// First byte, from 0.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// The range starts at or past the end of the file (416 with
    /// `Content-Range: bytes */size`).
    Unsatisfiable,
}

impl RangeAnswer {
    /// The `Content-Range` header value for a file of `size` bytes: `bytes a-b/size` for
    /// [`RangeAnswer::Partial`], `bytes */size` for [`RangeAnswer::Unsatisfiable`], none
    /// for [`RangeAnswer::Full`].
    pub fn content_range(&self, size: u64) -> Option<String> {
        match self {
            Self::Full => None,
            Self::Partial { start, end } => Some(format!("bytes {start}-{end}/{size}")),
            Self::Unsatisfiable => Some(format!("bytes */{size}")),
        }
    }

    /// How many bytes the answer's body has for a file of `size` bytes.
    pub fn len(&self, size: u64) -> u64 {
        match self {
            Self::Full => size,
            Self::Partial { start, end } => end - start + 1,
            Self::Unsatisfiable => 0,
        }
    }

    /// Whether the body is empty ([`RangeAnswer::Unsatisfiable`], or a full empty file).
    pub fn is_empty(&self, size: u64) -> bool {
        self.len(size) == 0
    }
}

/// Decides what to send for a `Range` header `range` and an `If-Range` header `if_range`,
/// for a file of `size` bytes whose strong entity tag is `etag` (quoted, `"<hex>"`; an
/// unquoted tag is quoted first).
///
/// - No `Range`, an empty file, a unit other than `bytes`, several ranges, or a syntax
///   error (including `a-b` with `b < a`): [`RangeAnswer::Full`].
/// - `If-Range` present and not exactly the strong `etag` (a weak tag or an HTTP date
///   never matches): [`RangeAnswer::Full`].
/// - `a-b` or `a-` with `a >= size`, or `-0`: [`RangeAnswer::Unsatisfiable`].
/// - Otherwise [`RangeAnswer::Partial`], with `b` past the end clipped to the last byte
///   and `-n` meaning the last `n` bytes (all of them when `n >= size`).
pub fn evaluate(range: Option<&str>, if_range: Option<&str>, etag: &str, size: u64) -> RangeAnswer {
    let Some(range) = range else {
        return RangeAnswer::Full;
    };
    if size == 0 {
        return RangeAnswer::Full;
    }
    if let Some(cond) = if_range {
        let etag = etag.trim();
        let matches = if etag.starts_with('"') {
            cond.trim() == etag
        } else {
            cond.trim()
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .is_some_and(|c| c == etag)
        };
        if !matches {
            return RangeAnswer::Full;
        }
    }
    match parse(range) {
        Some(Spec::FromTo(a, b)) => {
            if a >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: a,
                    end: b.min(size - 1),
                }
            }
        }
        Some(Spec::From(a)) => {
            if a >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial {
                    start: a,
                    end: size - 1,
                }
            }
        }
        Some(Spec::Suffix(0)) => RangeAnswer::Unsatisfiable,
        Some(Spec::Suffix(n)) => RangeAnswer::Partial {
            start: size.saturating_sub(n),
            end: size - 1,
        },
        None => RangeAnswer::Full,
    }
}

/// One parsed byte-range spec.
enum Spec {
    /// `a-b`, with `a <= b`.
    FromTo(u64, u64),
    /// `a-`.
    From(u64),
    /// `-n`.
    Suffix(u64),
}

/// A decimal number of one or more ASCII digits; values past `u64::MAX` saturate (a
/// position that large is past the end of any file anyway).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Parses `bytes=<one range>`; `None` for anything else.
fn parse(header: &str) -> Option<Spec> {
    let header = header.trim();
    let (unit, set) = header.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let spec = set.trim_matches([' ', '\t']);
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        (true, true) => None,
        (true, false) => number(last).map(Spec::Suffix),
        (false, true) => number(first).map(Spec::From),
        (false, false) => {
            let (a, b) = (number(first)?, number(last)?);
            (a <= b).then_some(Spec::FromTo(a, b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAG: &str = "\"abc\"";

    fn ev(range: &str, size: u64) -> RangeAnswer {
        evaluate(Some(range), None, TAG, size)
    }

    fn part(start: u64, end: u64) -> RangeAnswer {
        RangeAnswer::Partial { start, end }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(ev("bytes=0-499", 1000), part(0, 499));
        assert_eq!(ev("bytes=500-999", 1000), part(500, 999));
        assert_eq!(ev("bytes=500-5000", 1000), part(500, 999));
        assert_eq!(ev("bytes=9500-", 10000), part(9500, 9999));
        assert_eq!(ev("bytes=-500", 10000), part(9500, 9999));
        assert_eq!(ev("bytes=-50000", 10000), part(0, 9999));
        assert_eq!(ev("bytes=0-0", 1), part(0, 0));
        assert_eq!(ev("Bytes = 3 - 4", 10), part(3, 4));
        assert_eq!(ev("bytes=5-99999999999999999999999999", 10), part(5, 9));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(ev("bytes=1000-", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(ev("bytes=1000-2000", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(ev("bytes=-0", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(
            ev("bytes=99999999999999999999999-", 1000),
            RangeAnswer::Unsatisfiable
        );
    }

    #[test]
    fn ignored_ranges_give_the_whole_file() {
        for r in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1",
            "items=0-1",
            "0-1",
            "",
            "bytes=-1-2",
        ] {
            assert_eq!(ev(r, 100), RangeAnswer::Full, "{r:?}");
        }
        assert_eq!(evaluate(None, None, TAG, 100), RangeAnswer::Full);
        assert_eq!(ev("bytes=0-1", 0), RangeAnswer::Full);
    }

    #[test]
    fn if_range_must_match_the_strong_etag() {
        let r = Some("bytes=10-");
        assert_eq!(evaluate(r, Some(TAG), TAG, 100), part(10, 99));
        assert_eq!(evaluate(r, Some(" \"abc\" "), TAG, 100), part(10, 99));
        assert_eq!(evaluate(r, Some("\"abc\""), "abc", 100), part(10, 99));
        assert_eq!(evaluate(r, Some("\"abd\""), TAG, 100), RangeAnswer::Full);
        assert_eq!(evaluate(r, Some("W/\"abc\""), TAG, 100), RangeAnswer::Full);
        assert_eq!(evaluate(r, Some("abc"), TAG, 100), RangeAnswer::Full);
        assert_eq!(
            evaluate(r, Some("Wed, 21 Oct 2015 07:28:00 GMT"), TAG, 100),
            RangeAnswer::Full
        );
        // If-Range does not turn an unsatisfiable range into a full answer when it matches.
        assert_eq!(
            evaluate(Some("bytes=100-"), Some(TAG), TAG, 100),
            RangeAnswer::Unsatisfiable
        );
    }

    #[test]
    fn content_range_and_len() {
        assert_eq!(
            part(0, 9).content_range(100).as_deref(),
            Some("bytes 0-9/100")
        );
        assert_eq!(
            RangeAnswer::Unsatisfiable.content_range(100).as_deref(),
            Some("bytes */100")
        );
        assert_eq!(RangeAnswer::Full.content_range(100), None);
        assert_eq!(part(5, 9).len(100), 5);
        assert_eq!(RangeAnswer::Full.len(100), 100);
        assert!(RangeAnswer::Unsatisfiable.is_empty(100));
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_inside(
            range in "\\PC{0,40}|bytes=[0-9]{0,22}-[0-9]{0,22}|bytes=-[0-9]{0,22}",
            if_range in proptest::option::of("\\PC{0,10}|\"abc\""),
            size in prop_oneof![Just(0u64), Just(1u64), 0u64..10_000, Just(u64::MAX)],
        ) {
            match evaluate(Some(&range), if_range.as_deref(), TAG, size) {
                RangeAnswer::Partial { start, end } => {
                    prop_assert!(start <= end);
                    prop_assert!(end < size);
                    prop_assert!(end - start < size);
                }
                RangeAnswer::Full | RangeAnswer::Unsatisfiable => {}
            }
        }
    }
}
