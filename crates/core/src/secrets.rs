//! Keeping Config.txt secrets (`GPRS_password`, `MQTT_password`, `MTX_PIN`) out of what the
//! platform shows and logs: command text and modem replies carry them too
//! (`SETPARAM,MQTT_password,...`, a `GETCONFIG` reply).

use std::borrow::Cow;

use crate::configtxt::{REDACTED, schema};
use crate::dialect::{self, MtxCommand};

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

#[cfg(test)]
mod tests {
    use super::*;

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
