//! Page size and cursor parameters, the same on every list endpoint.

use std::str::FromStr;

use callhome_core::ValidationError;

use crate::error::ApiError;

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size.
pub const MAX_LIMIT: u32 = 1000;

/// The `limit` parameter: 1-1000, default 100.
pub fn limit(requested: Option<u32>) -> Result<u32, ApiError> {
    let limit = requested.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(
            ValidationError::new("limit", format!("must be between 1 and {MAX_LIMIT}")).into(),
        );
    }
    Ok(limit)
}

/// The `cursor` parameter, parsed as the key type of the listing (absent or empty: first
/// page). A cursor this API did not hand out is a 400.
pub fn cursor<T: FromStr>(raw: Option<&str>) -> Result<Option<T>, ApiError> {
    match raw {
        None | Some("") => Ok(None),
        Some(c) => c.parse().map(Some).map_err(|_| {
            ApiError::bad_request(
                "bad-query-parameter",
                "cursor: not a cursor returned by this API",
            )
        }),
    }
}
