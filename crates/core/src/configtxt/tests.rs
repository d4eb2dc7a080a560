//! The reference configurations, and one test per validation rule.

use super::*;
use crate::ValidationError;

pub(super) use super::SEED_MASTER_CONFIG as SEED_MASTER;

/// `config-example-iot.txt` from the vendor's knowledge base, unchanged.
pub(super) const IOT_EXAMPLE: &str = include_str!("testdata/config-example-iot.txt");

const IMEI: &str = "490154203237518";

fn parse(text: &str) -> ConfigFile {
    ConfigFile::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

fn seed() -> ConfigFile {
    parse(SEED_MASTER)
}

fn warning_keys(r: &Report) -> Vec<&str> {
    r.warnings.iter().map(|w| w.key.as_str()).collect()
}

#[test]
fn seed_master_parses_validates_and_round_trips() {
    let c = seed();
    assert_eq!(c.render(), SEED_MASTER);
    assert_eq!(c.entries().count(), 42);
    assert_eq!(c.get("MTX_IDClient"), Some("[IMEI]"));
    assert_eq!(c.get("mqtt_server"), Some("ssl://broker.cervello.io:8883"));
    let r = c.validate();
    assert_eq!(r.errors, [], "{r:#?}");
    // Every channel encrypted, whitelists in place, 2G for CSD: nothing to warn about.
    assert_eq!(r.warnings, [], "{r:#?}");
    assert!(r.is_ok());
    // Every key of the seed is a known key.
    for k in c.keys() {
        assert!(schema::lookup(k).is_some(), "{k}");
    }
}

#[test]
fn seed_master_with_crlf_and_without_final_newline_round_trips() {
    let crlf = SEED_MASTER.replace('\n', "\r\n");
    assert_eq!(parse(&crlf).render(), crlf);
    assert_eq!(parse(&crlf).validate(), seed().validate());
    let open = SEED_MASTER.trim_end_matches('\n');
    assert_eq!(parse(open).render(), open);
    let open_crlf = crlf.trim_end_matches("\r\n");
    assert_eq!(parse(open_crlf).render(), open_crlf);

    let mut c = parse(open_crlf);
    c.set("MQTT_qos", "1").unwrap();
    assert_eq!(c.render(), format!("{open_crlf}\r\nMQTT_qos: 1"));
}

#[test]
fn seed_master_whitelists_secrets_and_placeholders() {
    let c = seed();
    assert_eq!(
        c.whitelists(),
        Whitelists {
            csd: vec!["666333444".into(), "666444555".into()],
            sms: vec!["+34666123456".into(), "+34666123457".into()],
        }
    );
    let red = c.redacted().render();
    let debug = format!("{c:?}");
    for key in ["GPRS_password", "MTX_PIN", "MQTT_password"] {
        assert!(red.contains(&format!("\n{key}: ***\n")), "{red}");
        assert!(debug.contains(&format!("(\"{key}\", \"***\")")), "{debug}");
    }
    assert!(!debug.contains("gthhdte67y3ttes33fgg"), "{debug}");
    assert!(!red.contains("gthhdte67y3ttes33fgg"), "{red}");
    // The login is not a secret (it is the same word as the password in this seed).
    assert!(red.contains("GPRS_login: MOVISTAR\n"));
    assert!(red.contains("MQTT_login: jfj1usly8ijhh9hizfr453\n"));

    let r = c
        .resolve_placeholders(&PlaceholderContext::imei(IMEI))
        .unwrap();
    assert_eq!(r.unresolved, []);
    assert_eq!(r.config.get("MTX_IDClient"), Some(IMEI));
    assert_eq!(
        r.config.get("MQTT_attopic1"),
        Some(format!("{IMEI}/AT").as_str())
    );
    assert_eq!(
        r.config.get("DNS_mqttTopic"),
        Some(format!("{IMEI}/dns").as_str())
    );
    assert_eq!(r.config.validate().errors, []);
    // What a device reports, compared with the resolved master: no difference.
    let reported = parse(&r.config.render().replace(": ", ":").replace('\n', "\r\n"));
    assert_eq!(diff(&r.config, &reported), []);
    // Compared with the unresolved master, the four keys with placeholders differ.
    let keys: Vec<String> = diff(&c, &reported).into_iter().map(|d| d.key).collect();
    assert_eq!(
        keys,
        [
            "MTX_IDClient",
            "MQTT_attopic1",
            "MQTT_atrtopic",
            "DNS_mqttTopic"
        ]
    );
}

#[test]
fn iot_example_round_trips_and_validates() {
    let c = parse(IOT_EXAMPLE);
    assert_eq!(c.render(), IOT_EXAMPLE);
    assert_eq!(c.get("MQTT_login"), Some(""));
    assert_eq!(c.get("MTX_PIN"), Some("0000"));
    assert_eq!(c.key_as_written("MTX_PIN"), Some("MTX_pin"));
    assert_eq!(c.get("DNS_exdended"), Some("on"));
    assert_eq!(c.get("DNS_extended"), None);

    let r = c.validate();
    assert_eq!(r.errors, [], "{r:#?}");
    // Per-key warnings in file order (unknown keys: the misspelt one, then the GPIO keys
    // Callhome has no schema for), then the cross-key ones.
    let gpio: Vec<String> = (0..6)
        .flat_map(|n| [format!("GPIO_mode{n}"), format!("GPIO_config{n}")])
        .collect();
    let mut expected = vec!["DNS_exdended"];
    expected.extend(gpio.iter().map(String::as_str));
    expected.extend([
        "SMS_allPhones", // with SMS_ATEnabled: on, any number may send commands
        "MQTT_server",   // tcp://
    ]);
    assert_eq!(warning_keys(&r), expected, "{r:#?}");
    let misspelt = &r.warnings[0];
    assert!(misspelt.message.contains("unknown key"), "{misspelt}");
    assert!(
        misspelt.message.contains("did you mean DNS_extended?"),
        "{misspelt}"
    );
    assert!(
        r.warnings[13].message.contains("any number"),
        "{}",
        r.warnings[13]
    );
    assert!(
        r.warnings[14].message.contains("not encrypted"),
        "{}",
        r.warnings[14]
    );

    // Empty secrets stay visible as empty; the PIN is hidden whatever its spelling.
    let red = c.redacted().render();
    assert!(
        red.contains("MTX_pin: ***\n") && red.contains("MQTT_password:\n"),
        "{red}"
    );
    assert_eq!(c.whitelists(), Whitelists::default());
}

#[test]
fn iot_example_edits_touch_only_their_lines() {
    let mut c = parse(IOT_EXAMPLE);
    c.set("mtx_PIN", "4321").unwrap();
    c.set("MQTT_server", "ssl://broker.example.com:8883")
        .unwrap();
    c.set("MQTT_login", "fleet").unwrap();
    assert_eq!(c.remove("dns_exdended"), Some("on".into()));
    c.set("DNS_extended", "on").unwrap();
    let expected = IOT_EXAMPLE
        .replace("MTX_pin: 0000\n", "MTX_pin: 4321\n")
        .replace(
            "tcp://broker.mqttdashboard.com:1883",
            "ssl://broker.example.com:8883",
        )
        .replace("MQTT_login:\n", "MQTT_login: fleet\n")
        .replace("DNS_exdended: on\n", "")
        + "DNS_extended: on\n";
    assert_eq!(c.render(), expected);
    let r = c.validate();
    assert_eq!(r.errors, []);
    assert!(!warning_keys(&r).contains(&"MQTT_server"));
    assert!(!warning_keys(&r).contains(&"DNS_exdended"));
}

/// Validates the seed with `key` set to `value` and returns the errors about `field`.
fn errors_for(key: &str, value: &str, field: &str) -> Vec<ValidationError> {
    let mut c = seed();
    c.set(key, value).unwrap();
    let r = c.validate();
    r.errors.into_iter().filter(|e| e.field == field).collect()
}

/// Asserts that setting `key` to `value` in the seed gives exactly one error, on `key` as
/// written, whose reason contains `want`.
fn assert_rejected(key: &str, value: &str, want: &str) -> ValidationError {
    let errors = errors_for(key, value, key);
    assert_eq!(errors.len(), 1, "{key}: {value:?}: {errors:?}");
    let e = errors.into_iter().next().unwrap();
    assert!(e.reason.contains(want), "{key}: {value:?}: {e}");
    if schema::is_secret(key) {
        assert!(!e.reason.contains(value), "{key}: a secret is quoted: {e}");
    }
    e
}

macro_rules! rejects {
    ($($name:ident: $key:literal = $value:expr => $want:literal;)*) => {
        $(
            #[test]
            fn $name() {
                assert_rejected($key, &$value, $want);
            }
        )*
    };
}

rejects! {
    baudrate_must_be_standard: "COMM_baudrate" = "9601" => "must be one of 300, 600";
    baudrate_must_not_be_empty: "COMM_baudrate" = "" => "must not be empty";
    bits_per_char_7_or_8: "COMM_bitsperchar" = "9" => "must be one of 7, 8";
    stop_bits_1_or_2: "COMM_stopbits" = "1.5" => "must be one of 1, 2";
    parity_none_even_odd: "COMM_parity" = "mark" => "must be one of none, even, odd";
    autorts_on_off: "COMM_autorts" = "yes" => "must be one of on, off";
    autocts_lower_case: "COMM_autocts" = "ON" => "must be written \"on\"";
    gprs_mode_known_network: "GPRS_mode" = "5g" => "must be one of 2g, 3g, 4g, auto";
    gprs_timeout_no_sign: "GPRS_timeout" = "-1" => "without a sign";
    gprs_timeout_no_plus: "GPRS_timeout" = "+10" => "without a sign";
    gprs_timeout_decimal: "GPRS_timeout" = "0x10" => "decimal digits";
    gprs_timeout_overflow: "GPRS_timeout" = "99999999999999999999999999" => "at most 2147483647";
    gprs_apn_printable: "GPRS_apn" = "movistar.es\u{e9}" => "printable ASCII";
    gprs_apn_length: "GPRS_apn" = "a".repeat(101) => "at most 100 characters";
    gprs_login_no_tab: "GPRS_login" = "MOV\tISTAR" => "tabs";
    gprs_password_printable_not_quoted: "GPRS_password" = "contraseña" => "printable ASCII";
    pin_digits_not_quoted: "MTX_PIN" = "12a4" => "digits only";
    pin_length_not_quoted: "MTX_PIN" = "123456789" => "4 to 8 digits";
    mtx_mode_one_word: "MTX_mode" = "no ne" => "not allowed";
    mtx_model_not_empty: "MTX_model" = "" => "must not be empty";
    ping_decimal: "MTX_ping" = "1.5" => "decimal digits";
    ping_ip_valid_ipv4: "MTX_pingIP" = "8.8.8.256" => "IPv4";
    ping_ip_valid_host: "MTX_pingIP" = "dns_google.com" => "host name";
    id_client_not_empty: "MTX_IDClient" = "" => "must not be empty";
    id_client_length_counts_imei: "MTX_IDClient" = format!("[IMEI]{}", "x".repeat(50)) => "at most 64 characters long, not 65";
    id_client_printable: "MTX_IDClient" = "caf\u{e9}" => "printable ASCII";
    temporal_timeout_at_least_1: "MTX_temporalClientTimeout" = "0" => "at least 1";
    temporal_timeout_at_most_a_day: "MTX_temporalClientTimeout" = "86401" => "at most 86400";
    client_ssl_on_off: "MTX_clientSSL" = "true" => "must be one of on, off";
    mqtt_server_scheme: "MQTT_server" = "mqtts://broker.cervello.io:8883" => "ssl:// or tcp://";
    mqtt_server_port_present: "MQTT_server" = "ssl://broker.cervello.io" => ":port";
    mqtt_server_port_not_zero: "MQTT_server" = "ssl://broker.cervello.io:0" => "port must be at least 1";
    mqtt_server_port_in_range: "MQTT_server" = "ssl://broker.cervello.io:65536" => "port must be at most 65535";
    mqtt_server_host_present: "MQTT_server" = "ssl://:8883" => "host is missing";
    mqtt_server_host_valid: "MQTT_server" = "ssl://broker..io:8883" => "empty label";
    mqtt_id_not_empty: "MQTT_id" = "" => "must not be empty";
    mqtt_password_length_not_quoted: "MQTT_password" = "p".repeat(129) => "at most 128 characters";
    at_topic_no_plus: "MQTT_attopic1" = "[IMEI]/+" => "wildcard '+'";
    atr_topic_no_hash: "MQTT_atrtopic" = "[IMEI]/#" => "wildcard '#'";
    dns_topic_length: "DNS_mqttTopic" = "t".repeat(129) => "at most 128 characters";
    dns_topic_not_empty: "DNS_mqttTopic" = "" => "must not be empty";
    keepalive_u16: "MQTT_keepalive" = "65536" => "at most 65535";
    qos_0_1_2: "MQTT_qos" = "3" => "must be one of 0, 1, 2";
    dns_mode_known: "DNS_mode" = "mqqt" => "must be one of mqtt, http, https";
    dns_period_at_least_10: "DNS_period" = "9" => "at least 10";
    dns_period_no_leading_zero: "DNS_period" = "0600" => "leading zeros";
    sms_phone_format: "SMS_validPhone3" = "+34 666 123 458" => "no spaces";
    sms_phone_e164_length: "SMS_validPhone1" = "+3466" => "8 to 15 digits";
    csd_phone_national_length: "CSD_validPhone2" = "12" => "3 to 15 digits";
    sms_phone_11_does_not_exist: "SMS_validPhone11" = "+34666123458" => "N = 1 to 10";
    csd_phone_0_does_not_exist: "CSD_validPhone0" = "666333445" => "N = 1 to 10";
    time_server_host: "MTX_TPServer" = "ntp roa es" => "host name";
    second_time_server_host: "MTX_TPServer2" = "-pool.ntp.org" => "must not start or end with -";
    gsm_errors_number: "MTX_numGSMErrors" = "many" => "decimal digits";
    io_qos_0_1_2: "MQTT_defaultIOQos" = "9" => "must be one of 0, 1, 2";
}

#[test]
fn every_on_off_flag_rejects_other_values() {
    let flags = [
        "COMM_autorts",
        "COMM_autocts",
        "MTX_ATLimited",
        "MTX_clientSSL",
        "SMS_allPhones",
        "SMS_sendIP",
        "SMS_ATEnabled",
        "SMS_ATResponse",
        "MQTT_enabled",
        "DNS_enabled",
        "DNS_extended",
        "CSD_enabled",
    ];
    for flag in flags {
        assert_eq!(
            schema::lookup(flag).unwrap().spec.kind,
            Kind::OnOff,
            "{flag}"
        );
        assert_rejected(flag, "1", "must be one of on, off");
        assert_rejected(flag, "Off", "must be written \"off\"");
        assert_rejected(flag, "", "must not be empty");
    }
}

#[test]
fn keys_are_matched_case_insensitively_and_named_as_written() {
    let text = SEED_MASTER.replace("COMM_baudrate: 9600", "comm_BAUDRATE: 9601");
    let r = parse(&text).validate();
    assert_eq!(r.errors.len(), 1, "{r:#?}");
    assert_eq!(r.errors[0].field, "comm_BAUDRATE");
}

#[test]
fn validation_reports_every_problem() {
    let mut c = seed();
    c.set("COMM_baudrate", "1").unwrap();
    c.set("MTX_PIN", "x").unwrap();
    c.set("MQTT_qos", "7").unwrap();
    c.set("Unknown_key", "1").unwrap();
    c.set("GPRS_mode", "auto").unwrap();
    let r = c.validate();
    let fields: Vec<&str> = r.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        ["COMM_baudrate", "MTX_PIN", "MQTT_qos", "GPRS_mode"]
    );
    assert_eq!(warning_keys(&r), ["Unknown_key"]);
    assert!(!r.is_ok());
}

#[test]
fn duplicate_phone_numbers_name_both_keys() {
    let mut c = seed();
    c.set("SMS_validPhone3", "+34666123456").unwrap();
    c.set("CSD_validPhone3", "666444555").unwrap();
    // The same number in both lists is fine.
    c.set("CSD_validPhone4", "+34666123457").unwrap();
    let r = c.validate();
    assert_eq!(r.errors.len(), 2, "{r:#?}");
    assert_eq!(r.errors[0].field, "SMS_validPhone3");
    assert!(
        r.errors[0].reason.contains("SMS_validPhone1"),
        "{}",
        r.errors[0]
    );
    assert_eq!(r.errors[1].field, "CSD_validPhone3");
    assert!(
        r.errors[1].reason.contains("CSD_validPhone2"),
        "{}",
        r.errors[1]
    );
}

#[test]
fn empty_phone_slots_are_allowed() {
    let mut c = seed();
    c.set("SMS_validPhone3", "").unwrap();
    c.set("CSD_validPhone10", "").unwrap();
    assert_eq!(c.validate(), Report::default());
}

#[test]
fn csd_needs_2g() {
    for mode in ["auto", "3g", "4g"] {
        let errors = errors_for("GPRS_mode", mode, "GPRS_mode");
        assert_eq!(errors.len(), 1, "{mode}: {errors:?}");
        assert!(
            errors[0].reason.contains("CSD calls need the 2G network"),
            "{}",
            errors[0]
        );
        assert!(errors[0].reason.contains(mode), "{}", errors[0]);
    }
    // Without CSD, any network will do.
    let mut c = seed();
    c.set("CSD_enabled", "off").unwrap();
    c.set("GPRS_mode", "auto").unwrap();
    assert_eq!(c.validate(), Report::default());
    // A missing GPRS_mode is reported under its documented name; a differently spelt one
    // under its spelling.
    let mut c = seed();
    c.remove("GPRS_mode");
    let r = c.validate();
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].field, "GPRS_mode");
    assert!(r.errors[0].reason.contains("not set"), "{}", r.errors[0]);
    let c = parse(&SEED_MASTER.replace("GPRS_mode: 2g", "gprs_MODE: 4g"));
    assert_eq!(c.validate().errors[0].field, "gprs_MODE");
}

#[test]
fn csd_without_whitelist_warns_that_any_number_may_call() {
    let mut c = seed();
    c.set_whitelists(&Whitelists {
        csd: vec![],
        sms: c.whitelists().sms,
    })
    .unwrap();
    assert_eq!(c.get("CSD_validPhone1"), None);
    let r = c.validate();
    assert_eq!(r.errors, []);
    assert_eq!(warning_keys(&r), ["CSD_enabled"]);
    assert!(r.warnings[0].message.contains("any number may call"));
    // An empty slot is no whitelist either.
    let mut c = seed();
    c.set("CSD_validPhone1", "").unwrap();
    c.set("CSD_validPhone2", "").unwrap();
    assert_eq!(warning_keys(&c.validate()), ["CSD_enabled"]);
    c.set("CSD_enabled", "off").unwrap();
    assert_eq!(c.validate(), Report::default());
}

#[test]
fn sms_commands_from_any_number_warn() {
    let mut c = seed();
    c.set("SMS_allPhones", "on").unwrap();
    let r = c.validate();
    assert_eq!(warning_keys(&r), ["SMS_allPhones"]);
    assert!(
        r.warnings[0].message.contains("from any number"),
        "{}",
        r.warnings[0]
    );
    c.set("SMS_ATEnabled", "off").unwrap();
    assert_eq!(c.validate(), Report::default());
}

#[test]
fn unencrypted_reading_channel_warns() {
    let mut c = seed();
    c.set("MTX_clientSSL", "off").unwrap();
    let r = c.validate();
    assert_eq!(warning_keys(&r), ["MTX_clientSSL"]);
    assert!(r.warnings[0].message.contains("not encrypted"));
}

#[test]
fn unencrypted_command_channel_warns_while_mqtt_is_on() {
    let mut c = seed();
    c.set("MQTT_server", "tcp://broker.cervello.io:1883")
        .unwrap();
    let r = c.validate();
    assert_eq!(r.errors, []);
    assert_eq!(warning_keys(&r), ["MQTT_server"]);
    assert!(r.warnings[0].message.contains("command channel"));
    c.set("MQTT_enabled", "off").unwrap();
    assert_eq!(c.validate(), Report::default());
}

#[test]
fn undocumented_choices_and_placeholders_warn() {
    let mut c = seed();
    c.set("MTX_TPProtocol", "sntp").unwrap();
    c.set("MQTT_id", "[IMSI]").unwrap();
    c.set("MTX_TPProtocol2", "ntp").unwrap();
    let r = c.validate();
    assert_eq!(r.errors, []);
    assert_eq!(
        warning_keys(&r),
        ["MQTT_id", "MTX_TPProtocol", "MTX_TPProtocol2"]
    );
    assert!(
        r.warnings[0].message.contains("[IMSI]"),
        "{}",
        r.warnings[0]
    );
    assert!(
        r.warnings[1].message.contains("not a documented value"),
        "{}",
        r.warnings[1]
    );
    assert!(r.warnings[1].message.contains("sntp"), "{}", r.warnings[1]);
    assert!(
        r.warnings[2]
            .message
            .contains("did you mean MTX_TPProtocol?"),
        "{}",
        r.warnings[2]
    );
}

#[test]
fn time_server_family_beyond_range_is_a_warning() {
    let mut c = seed();
    c.set("MTX_TPServer3", "es.pool.ntp.org").unwrap();
    c.set("MTX_TPServer10", "es.pool.ntp.org").unwrap();
    let r = c.validate();
    assert_eq!(r.errors, []);
    assert_eq!(warning_keys(&r), ["MTX_TPServer10"]);
}

#[test]
fn report_and_errors_display() {
    let e = assert_rejected("COMM_baudrate", "9601", "one of");
    assert_eq!(
        e.to_string(),
        "COMM_baudrate: must be one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600 (got \"9601\")"
    );
    let w = Warning {
        key: "K".into(),
        message: "m".into(),
    };
    assert_eq!(w.to_string(), "K: m");
}
