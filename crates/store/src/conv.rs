//! Conversions between stored column values and domain types, shared by both backends.

use time::OffsetDateTime;

use crate::StoreError;

/// Unix epoch milliseconds of `t`.
pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The instant `v` milliseconds after the Unix epoch (clamped to the representable range).
pub(crate) fn from_ms(v: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// [`from_ms`] for nullable columns.
pub(crate) fn opt_from_ms(v: Option<i64>) -> Option<OffsetDateTime> {
    v.map(from_ms)
}

/// Parses a stored text column, reporting a [`StoreError::Corrupt`] naming it.
pub(crate) fn parse_col<T, E: std::fmt::Display>(
    column: &'static str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(value).map_err(|e| StoreError::Corrupt {
        column,
        reason: format!("{value:?}: {e}"),
    })
}

/// A `LIKE` pattern matching `text` anywhere, with `%`, `_` and `\` escaped (`ESCAPE '\'`).
pub(crate) fn like_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// One page from rows fetched with `LIMIT limit + 1`: the extra row, if any, only tells that
/// there is a next page, whose cursor is `key` of the last row kept.
pub(crate) fn page<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> crate::Page<T> {
    let limit = limit as usize;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    };
    crate::Page { items, next }
}
