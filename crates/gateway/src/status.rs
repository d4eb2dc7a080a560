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

#[cfg(test)]
mod tests {
    use super::parse;
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
