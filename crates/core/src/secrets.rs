//! Keeping Config.txt secrets (`GPRS_password`, `MQTT_password`, `MTX_PIN`) out of what the
//! platform shows and logs: command text and modem replies carry them too
//! (`SETPARAM,MQTT_password,...`, a `GETCONFIG` reply).
//!
//! Two kinds of functions:
//! - **masking** for display and logs ([`redact_command`], [`redact_reply`],
//!   [`redact_reply_for`]);
//! - **finding** the secret values inside the texts Callhome stores, so that the store can
//!   replace each one by something else (its ciphertext when writing, its plaintext when
//!   reading) while the text keeps its shape: [`map_command`], [`map_reply`], [`map_lines`]
//!   (Config.txt text), [`map_json`] (overrides, job operations). Each calls `f(key, value)`
//!   for every non-empty secret value (`key` as written) and puts `Some(new)` in its place;
//!   `None` leaves the value alone. Nothing else in the text changes, and text without
//!   secrets comes back borrowed. No cryptography and no I/O here: the store brings the key.

use std::borrow::Cow;

use crate::configtxt::{REDACTED, schema};
use crate::dialect::{self, FinalResult, MtxCommand};

/// What the `map_*` functions call for each secret value: `(key, value) -> replacement`.
pub type ValueFn<'f> = dyn FnMut(&str, &str) -> Option<String> + 'f;

/// `command` with the value of a `SETPARAM` of a secret key replaced by `***`.
pub fn redact_command(command: &str) -> Cow<'_, str> {
    match dialect::parse_mtx_command(command) {
        Some(MtxCommand::SetParam { name, value })
            if !value.is_empty() && schema::is_secret(&name) =>
        {
            Cow::Owned(format!("AT^MTXTUNNEL=SETPARAM,{name},{REDACTED}"))
        }
        _ => Cow::Borrowed(command),
    }
}

/// `reply` with the value of every `KEY: value` line of a secret key replaced by `***`
/// (line ends kept).
pub fn redact_reply(reply: &str) -> Cow<'_, str> {
    let secret_line = |line: &str| {
        line.split_once(':')
            .is_some_and(|(k, v)| !v.trim().is_empty() && schema::is_secret(k.trim()))
    };
    if !reply.split('\n').any(secret_line) {
        return Cow::Borrowed(reply);
    }
    let out: Vec<String> = reply
        .split('\n')
        .map(|line| {
            if secret_line(line) {
                let (k, rest) = line.split_once(':').unwrap_or((line, ""));
                let cr = if rest.ends_with('\r') { "\r" } else { "" };
                format!("{k}: {REDACTED}{cr}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    Cow::Owned(out.join("\n"))
}

/// `reply` to `command` as [`redact_reply`] shows it, and in addition, when `command` reads
/// a secret parameter (`GETPARAM,MQTT_password`), every information line masked: such a reply
/// may carry the bare value.
pub fn redact_reply_for<'a>(command: &str, reply: &'a str) -> Cow<'a, str> {
    if getparam_secret(command).is_some() {
        return map_reply(command, reply, &mut |_, _| Some(REDACTED.to_owned()));
    }
    redact_reply(reply)
}

/// Strips `prefix` from `s`, ignoring ASCII case.
fn strip_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `(verb, rest after the verb's comma)` of `AT^MTXTUNNEL=<VERB>,<rest>`, read loosely (any
/// case, spaces around `^`, `=` and commas): `rest` is a suffix of `command`.
fn mtx_verb_and_rest(command: &str) -> Option<(&str, &str)> {
    let s = command.trim_start();
    let s = strip_ci(s, "AT")?.trim_start();
    let s = s.strip_prefix('^')?.trim_start();
    let s = strip_ci(s, "MTXTUNNEL")?.trim_start();
    let s = s.strip_prefix('=')?.trim_start();
    let (verb, rest) = s.split_once(',')?;
    Some((verb.trim(), rest))
}

/// The name of the secret parameter `command` reads (`GETPARAM,<secret>`), if it does.
fn getparam_secret(command: &str) -> Option<&str> {
    let (verb, rest) = mtx_verb_and_rest(command)?;
    let name = rest.trim();
    (verb.eq_ignore_ascii_case("GETPARAM") && schema::is_secret(name)).then_some(name)
}

/// Replaces the non-empty trimmed span of `text[start..]` by `f(key, span)`.
fn replace_span(text: &str, start: usize, key: &str, f: &mut ValueFn<'_>) -> Option<String> {
    let tail = &text[start..];
    let value = tail.trim_matches([' ', '\t']);
    if value.is_empty() {
        return None;
    }
    let from = start + (tail.len() - tail.trim_start_matches([' ', '\t']).len());
    let new = f(key, value)?;
    let mut out = String::with_capacity(text.len() + new.len());
    out.push_str(&text[..from]);
    out.push_str(&new);
    out.push_str(&text[from + value.len()..]);
    Some(out)
}

/// `command` with the value of a `SETPARAM` of a secret key replaced by `f(name, value)`;
/// read loosely (any case, spaces around the commas and kept), so that a value that would not
/// pass validation is found too.
pub fn map_command<'a>(command: &'a str, f: &mut ValueFn<'_>) -> Cow<'a, str> {
    let found = mtx_verb_and_rest(command).and_then(|(verb, rest)| {
        if !verb.eq_ignore_ascii_case("SETPARAM") {
            return None;
        }
        let (name, value) = rest.split_once(',')?;
        let name = name.trim();
        if !schema::is_secret(name) {
            return None;
        }
        // `value` is a suffix of `command`; a trailing CR or LF stays where it is.
        let body = value.trim_end_matches(['\r', '\n']);
        let start = command.len() - value.len();
        let end = start + body.len();
        replace_span(&command[..end], start, name, f).map(|s| s + &command[end..])
    });
    found.map_or(Cow::Borrowed(command), Cow::Owned)
}

/// Text of `KEY: value` lines (a Config.txt, a `GETCONFIG` reply) with the value of each
/// secret key replaced by `f(key, value)`. Line ends, spacing and comments are kept; a comment
/// line that holds a `KEY: value` of a secret key (`# MQTT_password: old`) counts too.
pub fn map_lines<'a>(text: &'a str, f: &mut ValueFn<'_>) -> Cow<'a, str> {
    let mut out: Option<String> = None;
    let mut done = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let body = line.trim_end_matches(['\r', '\n']);
        let Some(colon) = body.find(':') else {
            continue;
        };
        let key = body[..colon].trim();
        let key = ["#", ";", "//"]
            .iter()
            .find_map(|c| key.strip_prefix(c))
            .unwrap_or(key)
            .trim();
        if !schema::is_secret(key) {
            continue;
        }
        if let Some(new) = replace_span(body, colon + 1, key, f) {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 64));
            o.push_str(&text[done..start]);
            o.push_str(&new);
            done = start + body.len();
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&text[done..]);
            Cow::Owned(o)
        }
        None => Cow::Borrowed(text),
    }
}

/// `reply` to `command` with its secret values replaced by `f(key, value)`: for a
/// `GETPARAM` of a secret key, every information line whole (the modem may answer with the
/// bare value); otherwise the `KEY: value` lines of secret keys (see [`map_lines`]).
pub fn map_reply<'a>(command: &str, reply: &'a str, f: &mut ValueFn<'_>) -> Cow<'a, str> {
    let Some(name) = getparam_secret(command) else {
        return map_lines(reply, f);
    };
    let mut changed = false;
    let out: Vec<Cow<'_, str>> = reply
        .split('\n')
        .map(|line| {
            let body = line.strip_suffix('\r').unwrap_or(line);
            let trimmed = body.trim();
            if trimmed.is_empty() || FinalResult::from_line(trimmed).is_some() {
                return Cow::Borrowed(line);
            }
            match replace_span(body, 0, name, f) {
                Some(new) => {
                    changed = true;
                    Cow::Owned(new + &line[body.len()..])
                }
                None => Cow::Borrowed(line),
            }
        })
        .collect();
    if changed {
        Cow::Owned(out.join("\n"))
    } else {
        Cow::Borrowed(reply)
    }
}

/// JSON text (per-device overrides, a job's operation) with secret values replaced by
/// `f(key, value)`: the string value of every member whose name is a secret key, and the
/// value inside every string that is a `SETPARAM` of a secret key. Text that is not JSON, or
/// has no secret, comes back unchanged; changed text is re-serialised (compact).
pub fn map_json<'a>(text: &'a str, f: &mut ValueFn<'_>) -> Cow<'a, str> {
    fn walk(v: &mut serde_json::Value, f: &mut ValueFn<'_>) -> bool {
        match v {
            serde_json::Value::Object(map) => {
                let mut changed = false;
                for (k, v) in map.iter_mut() {
                    if let serde_json::Value::String(s) = v
                        && !s.is_empty()
                        && schema::is_secret(k)
                    {
                        if let Some(new) = f(k, s) {
                            *s = new;
                            changed = true;
                        }
                    } else {
                        changed |= walk(v, f);
                    }
                }
                changed
            }
            serde_json::Value::Array(items) => {
                let mut changed = false;
                for v in items {
                    changed |= walk(v, f);
                }
                changed
            }
            serde_json::Value::String(s) => match map_command(s, f) {
                Cow::Owned(new) => {
                    *s = new;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            _ => false,
        }
    }
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Cow::Borrowed(text);
    };
    if walk(&mut value, f) {
        Cow::Owned(value.to_string())
    } else {
        Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wraps every secret value in `<...>`, and unwraps it again.
    fn wrap(_: &str, v: &str) -> Option<String> {
        Some(format!("<{v}>"))
    }
    fn unwrap(_: &str, v: &str) -> Option<String> {
        v.strip_prefix('<')?.strip_suffix('>').map(str::to_owned)
    }

    #[test]
    fn secret_values_are_found_in_every_stored_text_and_only_there() {
        let cases: [(&str, &str); 4] = [
            (
                "AT^MTXTUNNEL=SETPARAM,MQTT_password,hunter 2, x",
                "AT^MTXTUNNEL=SETPARAM,MQTT_password,<hunter 2, x>",
            ),
            (
                "at^mtxtunnel = setparam , mtx_pin ,  1234 \r",
                "at^mtxtunnel = setparam , mtx_pin ,  <1234> \r",
            ),
            (
                "AT^MTXTUNNEL=SETPARAM,DNS_period,300",
                "AT^MTXTUNNEL=SETPARAM,DNS_period,300",
            ),
            (
                "AT^MTXTUNNEL=SETPARAM,MQTT_password,",
                "AT^MTXTUNNEL=SETPARAM,MQTT_password,",
            ),
        ];
        for (plain, sealed) in cases {
            assert_eq!(map_command(plain, &mut wrap), sealed);
            assert_eq!(map_command(sealed, &mut unwrap), plain);
        }

        let config = "\u{FEFF}# Site 4\r\nGPRS_apn: movistar.es\r\nGPRS_password:  MOVISTAR \r\n# mqtt_password: old\nMTX_PIN:\nMQTT_server: ssl://h:8883\nMQTT_password:x:y";
        let sealed = map_lines(config, &mut wrap);
        assert_eq!(
            sealed,
            "\u{FEFF}# Site 4\r\nGPRS_apn: movistar.es\r\nGPRS_password:  <MOVISTAR> \r\n# mqtt_password: <old>\nMTX_PIN:\nMQTT_server: ssl://h:8883\nMQTT_password:<x:y>"
        );
        assert_eq!(map_lines(&sealed, &mut unwrap), config);
        assert!(matches!(
            map_lines("DNS_period: 600\n", &mut wrap),
            Cow::Borrowed(_)
        ));

        // A GETPARAM of a secret: the bare value, whatever its form; the result code stays.
        let cmd = "AT^MTXTUNNEL=GETPARAM,MQTT_password";
        for (reply, sealed) in [
            ("hunter2\r\n\r\nOK", "<hunter2>\r\n\r\nOK"),
            (
                "^MTXTUNNEL: MQTT_password,hunter2\r\n\r\nOK",
                "<^MTXTUNNEL: MQTT_password,hunter2>\r\n\r\nOK",
            ),
            ("OK", "OK"),
        ] {
            assert_eq!(map_reply(cmd, reply, &mut wrap), sealed);
            assert_eq!(map_reply(cmd, sealed, &mut unwrap), reply);
        }
        assert_eq!(redact_reply_for(cmd, "hunter2\r\n\r\nOK"), "***\r\n\r\nOK");
        assert_eq!(
            map_reply(
                "AT^MTXTUNNEL=GETCONFIG",
                "MTX_PIN: 1234\r\n\r\nOK",
                &mut wrap
            ),
            "MTX_PIN: <1234>\r\n\r\nOK"
        );
        assert_eq!(
            map_reply("AT+CSQ", "+CSQ: 20,99\r\n\r\nOK", &mut wrap),
            "+CSQ: 20,99\r\n\r\nOK"
        );

        let json = r#"{"DNS_period":"300","GPRS_password":"p","MTX_PIN":null,"mqtt_password":""}"#;
        let sealed = map_json(json, &mut wrap);
        assert_eq!(
            sealed,
            r#"{"DNS_period":"300","GPRS_password":"<p>","MTX_PIN":null,"mqtt_password":""}"#
        );
        assert_eq!(map_json(&sealed, &mut unwrap), json);
        let op = r#"{"type":"at_command","command":"AT^MTXTUNNEL=SETPARAM,MTX_PIN,1234"}"#;
        let sealed: serde_json::Value = serde_json::from_str(&map_json(op, &mut wrap)).unwrap();
        assert_eq!(
            sealed,
            serde_json::json!({"type": "at_command", "command": "AT^MTXTUNNEL=SETPARAM,MTX_PIN,<1234>"})
        );
        assert!(matches!(map_json("not json", &mut wrap), Cow::Borrowed(_)));
    }

    #[test]
    fn secrets_in_commands_and_replies_are_masked() {
        assert_eq!(
            redact_command("AT^MTXTUNNEL=SETPARAM,MQTT_password,hunter2"),
            "AT^MTXTUNNEL=SETPARAM,MQTT_password,***"
        );
        assert_eq!(
            redact_command("AT^MTXTUNNEL=SETPARAM, mtx_pin, 1234"),
            "AT^MTXTUNNEL=SETPARAM,mtx_pin,***"
        );
        assert_eq!(
            redact_command("AT^MTXTUNNEL=SETPARAM,DNS_period,300"),
            "AT^MTXTUNNEL=SETPARAM,DNS_period,300"
        );
        assert_eq!(redact_command("AT+CSQ"), "AT+CSQ");
        let reply = "GPRS_apn: movistar.es\r\nGPRS_password: MOVISTAR\r\nMTX_PIN:\r\nMTX_PIN : 0000\r\n\r\nOK";
        assert_eq!(
            redact_reply(reply),
            "GPRS_apn: movistar.es\r\nGPRS_password: ***\r\nMTX_PIN:\r\nMTX_PIN : ***\r\n\r\nOK"
        );
        assert!(matches!(
            redact_reply("+CSQ: 20,99\r\n\r\nOK"),
            Cow::Borrowed(_)
        ));
    }
}
