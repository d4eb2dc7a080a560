//! Status payloads: stored raw, and parsed into fields when they are JSON or `key=value` text.

/// Parsed fields of a status payload: a JSON object as is; other JSON as `{"value": ...}`;
/// `key=value` pairs separated by newlines, `;`, `&` or `,` as an object of strings; else
/// `None` (the raw payload is still stored).
pub fn parse(payload: &[u8]) -> Option<serde_json::Value> {
    let text = std::str::from_utf8(payload).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return Some(match v {
            serde_json::Value::Object(_) => v,
            other => serde_json::json!({ "value": other }),
        });
    }
    let mut map = serde_json::Map::new();
    for part in text.split(['\n', ';', '&', ',']) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').or_else(|| part.split_once(':'))?;
        let k = k.trim();
        if k.is_empty()
            || k.len() > 64
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return None;
        }
        map.insert(k.to_owned(), serde_json::Value::String(v.trim().to_owned()));
    }
    (!map.is_empty()).then_some(serde_json::Value::Object(map))
}

/// A token bucket per device: how many status messages each device may store.
/// The model and firmware version a parsed status message reports, if any: `model` (or
/// `mod`), and `fw` (or `firmware`, `version`, `ver`); strings or numbers. Values that are
/// not a plausible model or version are left out.
pub fn firmware_fields(parsed: &serde_json::Value) -> (Option<String>, Option<String>) {
    let field = |names: &[&str]| {
        names.iter().find_map(|n| match parsed.get(*n) {
            Some(serde_json::Value::String(s)) => Some(s.trim().to_owned()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
    };
    let model =
        field(&["model", "mod"]).filter(|m| callhome_core::firmware::check_model(m).is_ok());
    let version = field(&["fw", "firmware", "version", "ver"])
        .and_then(|v| callhome_core::firmware::Version::from_reported(&v).ok())
        .map(String::from);
    (model, version)
}

pub(crate) struct RateLimiter {
    /// Tokens added per second.
    per_second: f64,
    /// Bucket size: the burst.
    burst: f64,
    /// Each device's bucket: tokens left and when they were counted.
    buckets:
        std::sync::Mutex<std::collections::HashMap<callhome_core::Imei, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    /// `per_second` tokens a second, at most `burst` at once.
    pub(crate) fn new((per_second, burst): (f64, f64)) -> Self {
        Self {
            per_second,
            burst,
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether `imei` may store one more status message now (takes a token if so).
    pub(crate) fn allow(&self, imei: &callhome_core::Imei) -> bool {
        self.allow_at(imei, std::time::Instant::now())
    }

    fn allow_at(&self, imei: &callhome_core::Imei, now: std::time::Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Full buckets carry no state: forget them when the map grows, so that it holds
        // only devices that sent recently.
        if buckets.len() >= 4096 && !buckets.contains_key(imei) {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(imei.clone()).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rate_limiter_allows_a_burst_then_the_rate() {
        let limiter = super::RateLimiter::new((1.0, 3.0));
        let a = callhome_core::Imei::parse("356938035643809").unwrap();
        let b = callhome_core::Imei::from_body("35693803564381").unwrap();
        let t0 = std::time::Instant::now();
        assert!((0..3).all(|_| limiter.allow_at(&a, t0)), "the burst");
        assert!(!limiter.allow_at(&a, t0), "over the burst");
        assert!(
            limiter.allow_at(&b, t0),
            "another device has its own bucket"
        );
        let t1 = t0 + std::time::Duration::from_millis(1100);
        assert!(limiter.allow_at(&a, t1), "one token a second");
        assert!(!limiter.allow_at(&a, t1));
    }

    use super::parse;

    #[test]
    fn firmware_fields_are_read_from_status() {
        let v = parse(br#"{"model":"199801422","fw":"11.0.3-sim","csq":20}"#).unwrap();
        assert_eq!(
            super::firmware_fields(&v),
            (Some("199801422".into()), Some("11.0.3-sim".into()))
        );
        let v = parse(b"model=EHS6;version=MTX-Tunnel v2.1").unwrap();
        assert_eq!(
            super::firmware_fields(&v),
            (Some("EHS6".into()), Some("2.1".into()))
        );
        let v = parse(br#"{"model":"","fw":{"x":1}}"#).unwrap();
        assert_eq!(super::firmware_fields(&v), (None, None));
    }
    use serde_json::json;

    #[test]
    fn json_key_value_and_opaque() {
        assert_eq!(
            parse(br#"{"csq": 20, "ip": "10.1.2.3"}"#),
            Some(json!({"csq": 20, "ip": "10.1.2.3"}))
        );
        assert_eq!(parse(b"42"), Some(json!({"value": 42})));
        assert_eq!(
            parse(b"csq=20;ip=10.1.2.3"),
            Some(json!({"csq": "20", "ip": "10.1.2.3"}))
        );
        assert_eq!(
            parse(b"IMEI: 356938035643809\nCSQ: 17"),
            Some(json!({"IMEI": "356938035643809", "CSQ": "17"}))
        );
        assert_eq!(parse(b"just some words"), None);
        assert_eq!(parse(&[0xff, 0xfe, 0x00]), None);
        assert_eq!(parse(b"   "), None);
    }
}
