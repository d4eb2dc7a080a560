//! What a simulated modem answers to one AT command: pure text in, text out.

use callhome_core::dialect::{self, FinalResult, MtxCommand};

use crate::config::ModemConfig;

/// The firmware version a simulated modem reports until it is updated (the default of
/// [`crate::ModemSettings::firmware_version`]).
pub const FIRMWARE_VERSION: &str = "11.0.3-sim";

/// The modem's answer to `command`, exactly as it would publish it on its reply topic:
/// information lines and the final result code, `\r\n` line ends (see
/// [`callhome_core::dialect`] for the shape).
///
/// - `AT` → `OK`; `ATI` → manufacturer, model (`MTX_model`), revision (`firmware`) +
///   `OK`; `AT+CSQ` → `+CSQ: <csq>,99` + `OK`; `AT+CGSN` → the IMEI + `OK`.
/// - `AT^MTXTUNNEL=VERSION` → `MTX-Tunnel v<firmware>` + `OK`; `GETPARAM,<k>` →
///   `<k>: <value>` + `OK` (`ERROR` for an unknown key); `SETPARAM,<k>,<v>` stores it,
///   `OK`; `GETCONFIG` → every `KEY: value` line + `OK`.
/// - `AT^MTXTUNNEL=REBOOT` (the reboot template of [`dialect::Dialect::mtx`], no
///   arguments) → `OK`. Rebooting is up to the caller: a running modem sees the
///   command with [`is_reboot`], drops its connection once the reply is written and
///   comes back after its reboot delay with its configuration re-read (see
///   [`crate::SimModem`]). `SETPARAM` changes survive it.
/// - Anything else → `ERROR`, including `TEMPORALCLIENT`, `FWUPDATE` and `AT^SJOTAP`:
///   they open sockets, so a running modem handles them itself before calling this (see
///   [`crate::tunnel`] and [`crate::firmware`]).
pub fn answer(
    command: &str,
    imei: &str,
    config: &mut ModemConfig,
    csq: u8,
    firmware: &str,
) -> String {
    let cmd = command.trim();
    let ok = |lines: &[String]| dialect::format_reply(lines, &FinalResult::Ok);
    let error = || dialect::format_reply::<&str>(&[], &FinalResult::Error);
    let upper = cmd.to_ascii_uppercase();
    match upper.as_str() {
        "AT" => return ok(&[]),
        "ATI" | "ATI0" => {
            let model = config.get("MTX_model", imei).unwrap_or_default();
            return ok(&[
                "Callhome".to_owned(),
                format!("MTX-Tunnel {model}"),
                format!("REVISION {firmware}"),
            ]);
        }
        "AT+CSQ" => return ok(&[format!("+CSQ: {csq},99")]),
        "AT+CGSN" | "AT+GSN" => return ok(&[imei.to_owned()]),
        _ => {}
    }
    match dialect::parse_mtx_command(cmd) {
        Some(MtxCommand::Version) => ok(&[format!("MTX-Tunnel v{firmware}")]),
        Some(MtxCommand::GetParam { name }) => match config.get(&name, imei) {
            Some(v) if v.is_empty() => ok(&[format!("{name}:")]),
            Some(v) => ok(&[format!("{name}: {v}")]),
            None => error(),
        },
        Some(MtxCommand::SetParam { name, value }) => {
            config.set(&name, &value);
            ok(&[])
        }
        Some(MtxCommand::GetConfig) => ok(&config.render_lines(imei)),
        Some(ref c) if is_reboot(c) => ok(&[]),
        _ => error(),
    }
}

/// Whether `command` is the reboot command: `AT^MTXTUNNEL=REBOOT` without arguments.
pub fn is_reboot(command: &MtxCommand) -> bool {
    matches!(command, MtxCommand::Other { verb, args } if verb == "REBOOT" && args.is_empty())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use callhome_core::dialect::{
        AtReply, Dialect, parse_csq_reply, parse_getconfig_reply, parse_getparam_reply,
        parse_version_reply,
    };

    use super::*;
    use crate::config::MasterConfig;

    const IMEI: &str = "490154203237518";

    fn run(cmd: &str, c: &mut ModemConfig) -> String {
        answer(cmd, IMEI, c, 20, FIRMWARE_VERSION)
    }

    #[test]
    fn answers_standard_commands() {
        let mut c = ModemConfig::new(Arc::new(MasterConfig::seed()));
        assert_eq!(run("AT", &mut c), "OK");
        assert_eq!(run("at+csq\r\n", &mut c), "+CSQ: 20,99\r\n\r\nOK");
        assert_eq!(parse_csq_reply(&run("AT+CSQ", &mut c)), Ok((20, 99)));
        let ati = AtReply::parse(&run("ATI", &mut c));
        assert!(ati.result.is_ok());
        assert_eq!(ati.information_lines().len(), 3);
        assert_eq!(run("AT+CGSN", &mut c), format!("{IMEI}\r\n\r\nOK"));
        assert_eq!(run("AT+COPS?", &mut c), "ERROR");
        assert_eq!(run("hello", &mut c), "ERROR");
        assert_eq!(run("", &mut c), "ERROR");
    }

    #[test]
    fn answers_mtx_commands_as_the_dialect_reads_them() {
        let d = Dialect::mtx();
        let mut c = ModemConfig::new(Arc::new(MasterConfig::seed()));
        let v = run(d.version().unwrap().as_str(), &mut c);
        assert_eq!(
            parse_version_reply(&v).unwrap(),
            format!("MTX-Tunnel v{FIRMWARE_VERSION}")
        );
        let r = run(d.get_param("GPRS_apn").unwrap().as_str(), &mut c);
        assert_eq!(r, "GPRS_apn: movistar.es\r\n\r\nOK");
        assert_eq!(parse_getparam_reply(&r, "GPRS_apn").unwrap(), "movistar.es");
        let r = run("AT^MTXTUNNEL=GETPARAM, mqtt_atrtopic", &mut c);
        assert_eq!(
            parse_getparam_reply(&r, "MQTT_atrtopic").unwrap(),
            format!("{IMEI}/ATR")
        );
        assert_eq!(run("AT^MTXTUNNEL=GETPARAM,NOPE", &mut c), "ERROR");
        assert_eq!(
            run(d.set_param("GPRS_apn", "x.apn").unwrap().as_str(), &mut c),
            "OK"
        );
        assert_eq!(run("AT^MTXTUNNEL=SETPARAM, MQTT_login, ", &mut c), "OK");
        let r = run("AT^MTXTUNNEL=GETPARAM,GPRS_apn", &mut c);
        assert_eq!(parse_getparam_reply(&r, "GPRS_apn").unwrap(), "x.apn");
        let r = run("AT^MTXTUNNEL=GETPARAM,MQTT_login", &mut c);
        assert_eq!(parse_getparam_reply(&r, "MQTT_login").unwrap(), "");
        let cfg = parse_getconfig_reply(&run(d.get_config().unwrap().as_str(), &mut c)).unwrap();
        assert!(cfg.contains("GPRS_apn: x.apn\n"), "{cfg}");
        assert!(cfg.contains(&format!("MTX_IDClient: {IMEI}")));
        assert_eq!(
            run(
                d.temporal_client("1.2.3.4", 5000, 60).unwrap().as_str(),
                &mut c
            ),
            "ERROR"
        );
        assert_eq!(run(d.reboot().unwrap().as_str(), &mut c), "OK");
        assert_eq!(run("at^mtxtunnel = reboot", &mut c), "OK");
        assert_eq!(run("AT^MTXTUNNEL=REBOOT,now", &mut c), "ERROR");
        assert_eq!(run("AT^MTXTUNNEL=FWUPDATE", &mut c), "ERROR");
        assert_eq!(run("AT^SJOTAP=,https://h/jad", &mut c), "ERROR");
        // The version and revision are the modem's current firmware.
        let v = answer(d.version().unwrap().as_str(), IMEI, &mut c, 20, "2.0.0");
        assert_eq!(parse_version_reply(&v).unwrap(), "MTX-Tunnel v2.0.0");
        let ati = answer("ATI", IMEI, &mut c, 20, "2.0.0");
        assert!(ati.contains("REVISION 2.0.0\r\n"), "{ati}");
        // SETPARAM changes are kept (the modem's Config.txt).
        let r = run("AT^MTXTUNNEL=GETPARAM,GPRS_apn", &mut c);
        assert_eq!(parse_getparam_reply(&r, "GPRS_apn").unwrap(), "x.apn");
    }
}
