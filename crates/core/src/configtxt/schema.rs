//! The keys Callhome knows, what values each accepts, and which hold secrets.
//!
//! Sources: the seed scenario's master Config.txt and its observations, the vendor's
//! `config-example-iot.txt`, and the field notes. Keys are matched case-insensitively
//! (`MTX_pin` is `MTX_PIN`). Values are compared as written: `on`, not `ON`, because
//! the documents only show lower case and nothing says the firmware accepts other spellings.
//!
//! Numbers are decimal digits only: no sign, no `+`, no leading zeros (except `0` itself),
//! and a value too large for its range is an error, never an overflow. Unless a key says
//! otherwise, the upper limit is `2147483647`: MTX-Tunnel is a Java program, whose `int`
//! stops there.

use std::net::Ipv4Addr;

use super::placeholder::{self, IMEI_LEN, KNOWN_PLACEHOLDERS};
use super::whitelist::PhoneNumber;

/// Upper limit of numbers without a documented one: Java's `int`.
const JAVA_INT_MAX: u64 = 2_147_483_647;

/// The kind of value a key takes, and with it the check applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `on` or `off`.
    OnOff,
    /// Exactly one of the listed spellings.
    Choice(&'static [&'static str]),
    /// One of the listed spellings is documented; anything else is kept with a warning,
    /// because the documents do not give the full list.
    Documented(&'static [&'static str]),
    /// A decimal integer in `min..=max`.
    UInt {
        /// Smallest value accepted.
        min: u64,
        /// Largest value accepted.
        max: u64,
    },
    /// Free printable ASCII text (space included), at most `max` characters.
    Text {
        /// Longest value accepted, in characters.
        max: usize,
    },
    /// One word: 1 to `max` ASCII letters, digits, `_`, `-` and `.`.
    Word {
        /// Longest value accepted, in characters.
        max: usize,
    },
    /// A SIM PIN: 4 to 8 digits.
    Pin,
    /// An IPv4 address or a DNS host name.
    Host,
    /// An MQTT broker: `ssl://host:port` or `tcp://host:port`, port 1-65535.
    MqttServer,
    /// An MQTT topic name to publish or subscribe to: 1-128 printable ASCII characters, no
    /// wildcards `+` or `#`; placeholders allowed (`[IMEI]` counted as 15 characters).
    Topic,
    /// An identifier the modem sends: 1 to `max` printable ASCII characters; placeholders
    /// allowed (`[IMEI]` counted as 15 characters).
    Identifier {
        /// Longest value accepted, in characters, after expanding `[IMEI]`.
        max: usize,
    },
    /// A phone number: `+` and 8-15 digits (E.164), or 3-15 national digits.
    Phone,
}

/// A known Config.txt key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpec {
    /// The key as the vendor documents spell it (for an indexed family, the part before N).
    pub name: &'static str,
    /// For a family such as `SMS_validPhoneN`: the range of N. Keys are `name` followed by N
    /// in decimal without leading zeros.
    pub index: Option<(u32, u32)>,
    /// What values are accepted.
    pub kind: Kind,
    /// Whether the value must never be shown: redacted in [`super::ConfigFile::redacted`],
    /// `Debug`, diffs and validation messages.
    pub secret: bool,
    /// Whether an empty value (`KEY:`) is accepted (an unset login, an unused slot).
    pub empty_ok: bool,
    /// What the key does, from the vendor documents.
    pub description: &'static str,
}

impl KeySpec {
    const fn new(name: &'static str, kind: Kind, description: &'static str) -> Self {
        Self {
            name,
            index: None,
            kind,
            secret: false,
            empty_ok: false,
            description,
        }
    }

    const fn as_secret(mut self) -> Self {
        self.secret = true;
        self
    }

    const fn allowing_empty(mut self) -> Self {
        self.empty_ok = true;
        self
    }

    const fn family(mut self, first: u32, last: u32) -> Self {
        self.index = Some((first, last));
        self
    }

    /// The key for index `n` of a family (`SMS_validPhone` and 3 give `SMS_validPhone3`), or
    /// the name itself for a plain key.
    pub fn key(&self, n: u32) -> String {
        match self.index {
            Some(_) => format!("{}{n}", self.name),
            None => self.name.to_owned(),
        }
    }

    /// The key's documented name, with `N` for a family (`SMS_validPhoneN`).
    pub fn display_name(&self) -> String {
        match self.index {
            Some(_) => format!("{}N", self.name),
            None => self.name.to_owned(),
        }
    }
}

const ON_OFF: Kind = Kind::OnOff;
const SECONDS: Kind = Kind::UInt {
    min: 0,
    max: JAVA_INT_MAX,
};

/// Every key Callhome knows.
pub static KEYS: &[KeySpec] = &[
    // Serial port.
    KeySpec::new(
        "COMM_baudrate",
        Kind::Choice(&[
            "300", "600", "1200", "2400", "4800", "9600", "19200", "38400", "57600", "115200",
            "230400", "460800", "921600",
        ]),
        "Serial port baud rate",
    ),
    KeySpec::new(
        "COMM_bitsperchar",
        Kind::Choice(&["7", "8"]),
        "Serial port data bits per character",
    ),
    KeySpec::new(
        "COMM_stopbits",
        Kind::Choice(&["1", "2"]),
        "Serial port stop bits",
    ),
    KeySpec::new(
        "COMM_parity",
        Kind::Choice(&["none", "even", "odd"]),
        "Serial port parity",
    ),
    KeySpec::new("COMM_autorts", ON_OFF, "RTS hardware flow control"),
    KeySpec::new("COMM_autocts", ON_OFF, "CTS hardware flow control"),
    // Mobile data.
    KeySpec::new(
        "GPRS_apn",
        Kind::Text { max: 100 },
        "APN provided by the mobile operator",
    )
    .allowing_empty(),
    KeySpec::new("GPRS_login", Kind::Text { max: 64 }, "APN login").allowing_empty(),
    KeySpec::new("GPRS_password", Kind::Text { max: 64 }, "APN password")
        .as_secret()
        .allowing_empty(),
    KeySpec::new(
        "GPRS_timeout",
        SECONDS,
        "Idle time before the data connection is dropped; 0 keeps the modem always connected",
    ),
    KeySpec::new(
        "GPRS_mode",
        Kind::Choice(&["2g", "3g", "4g", "auto"]),
        "Radio network to use; 2g is required for CSD (GSM data) calls",
    ),
    // Modem.
    KeySpec::new(
        "MTX_PIN",
        Kind::Pin,
        "PIN of the SIM card (0000 if it has none)",
    )
    .as_secret(),
    KeySpec::new(
        "MTX_mode",
        Kind::Word { max: 32 },
        "Tunnel mode; none in the seed scenario, where the modem listens on no TCP port",
    ),
    KeySpec::new("MTX_model", Kind::Text { max: 64 }, "Modem model"),
    KeySpec::new(
        "MTX_ping",
        SECONDS,
        "Interval of the ping that oversees the connection, in seconds",
    ),
    KeySpec::new(
        "MTX_pingIP",
        Kind::Host,
        "Address pinged to oversee the connection",
    ),
    KeySpec::new("MTX_ATLimited", ON_OFF, "Limit the AT commands accepted"),
    KeySpec::new(
        "MTX_IDClient",
        Kind::Identifier { max: 64 },
        "Identifying string sent first on a TEMPORALCLIENT socket",
    ),
    KeySpec::new(
        "MTX_temporalClientTimeout",
        Kind::UInt { min: 1, max: 86400 },
        "A TEMPORALCLIENT socket closes after this many seconds without traffic",
    ),
    KeySpec::new(
        "MTX_clientSSL",
        ON_OFF,
        "TLS on the TCP client socket (meter-reading channel)",
    ),
    KeySpec::new(
        "MTX_numGSMErrors",
        SECONDS,
        "GSM error count (in the vendor's IoT example; its meaning is not in the references)",
    ),
    KeySpec::new(
        "MTX_TPProtocol",
        Kind::Documented(&["ntp"]),
        "Time server protocol",
    ),
    KeySpec::new("MTX_TPServer", Kind::Host, "Time server").allowing_empty(),
    KeySpec::new("MTX_TPServer", Kind::Host, "Further time servers")
        .family(2, 9)
        .allowing_empty(),
    KeySpec::new("MTX_TPFormat", Kind::Documented(&["unix"]), "Time format"),
    // SMS.
    KeySpec::new(
        "SMS_allPhones",
        ON_OFF,
        "Accept SMS commands from any phone (off: only SMS_validPhoneN)",
    ),
    KeySpec::new(
        "SMS_sendIP",
        ON_OFF,
        "Answer a missed call or SMS with the modem's IP address",
    ),
    KeySpec::new("SMS_ATEnabled", ON_OFF, "Accept AT commands by SMS"),
    KeySpec::new(
        "SMS_ATResponse",
        ON_OFF,
        "Answer an SMS command with an SMS",
    ),
    KeySpec::new(
        "SMS_validPhone",
        Kind::Phone,
        "Phone number authorised to send SMS commands",
    )
    .family(1, 10)
    .allowing_empty(),
    // MQTT command channel.
    KeySpec::new("MQTT_enabled", ON_OFF, "MQTT service enabled"),
    KeySpec::new(
        "MQTT_server",
        Kind::MqttServer,
        "Broker: ssl:// or tcp://, host and port",
    ),
    KeySpec::new(
        "MQTT_id",
        Kind::Identifier { max: 64 },
        "MQTT client identifier",
    ),
    KeySpec::new("MQTT_login", Kind::Text { max: 128 }, "MQTT user name").allowing_empty(),
    KeySpec::new("MQTT_password", Kind::Text { max: 128 }, "MQTT password")
        .as_secret()
        .allowing_empty(),
    KeySpec::new(
        "MQTT_attopic1",
        Kind::Topic,
        "Topic the modem takes AT commands from",
    ),
    KeySpec::new(
        "MQTT_atrtopic",
        Kind::Topic,
        "Topic the modem sends answers to commands to",
    ),
    KeySpec::new(
        "MQTT_keepalive",
        Kind::UInt { min: 0, max: 65535 },
        "MQTT keep-alive, in seconds",
    ),
    KeySpec::new(
        "MQTT_qos",
        Kind::Choice(&["0", "1", "2"]),
        "MQTT quality of service",
    ),
    KeySpec::new(
        "MQTT_defaultIOQos",
        Kind::Choice(&["0", "1", "2"]),
        "MQTT quality of service for I/O messages",
    ),
    KeySpec::new(
        "MQTT_defaultOTopic",
        Kind::Topic,
        "Topic for I/O change messages",
    ),
    // Periodic status ("DNS").
    KeySpec::new("DNS_enabled", ON_OFF, "Periodic status sending enabled"),
    KeySpec::new(
        "DNS_mode",
        Kind::Choice(&["mqtt", "http", "https"]),
        "How status is sent: MQTT, or HTTP(S) GET to a web platform",
    ),
    KeySpec::new("DNS_mqttTopic", Kind::Topic, "Topic status is published to"),
    KeySpec::new("DNS_extended", ON_OFF, "Send extended status (I/O, ADCs)"),
    KeySpec::new(
        "DNS_period",
        Kind::UInt {
            min: 10,
            max: JAVA_INT_MAX,
        },
        "Seconds between status messages",
    ),
    // GSM data calls.
    KeySpec::new("CSD_enabled", ON_OFF, "Accept CSD (GSM data) calls"),
    KeySpec::new(
        "CSD_validPhone",
        Kind::Phone,
        "Phone number authorised to make CSD calls",
    )
    .family(1, 10)
    .allowing_empty(),
];

/// A key found in [`KEYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMatch {
    /// Its specification.
    pub spec: &'static KeySpec,
    /// N, for a member of an indexed family.
    pub index: Option<u32>,
}

/// Finds the specification of `key`, matched case-insensitively. An indexed family's key
/// matches only with N in range (`SMS_validPhone11` does not; see [`family_out_of_range`]).
pub fn lookup(key: &str) -> Option<KeyMatch> {
    if let Some(spec) = KEYS
        .iter()
        .find(|s| s.index.is_none() && s.name.eq_ignore_ascii_case(key))
    {
        return Some(KeyMatch { spec, index: None });
    }
    KEYS.iter().find_map(|spec| {
        let (first, last) = spec.index?;
        let n = family_index(spec.name, key)?;
        (first..=last).contains(&n).then_some(KeyMatch {
            spec,
            index: Some(n),
        })
    })
}

/// The family `key` is named after when its N is out of range (`SMS_validPhone11`,
/// `CSD_validPhone0`), with that N (`None` when too large to represent).
pub fn family_out_of_range(key: &str) -> Option<(&'static KeySpec, Option<u32>)> {
    if lookup(key).is_some() {
        return None;
    }
    KEYS.iter().find_map(|spec| {
        spec.index?;
        let prefix_len = spec.name.len();
        let head = key.get(..prefix_len)?;
        let digits = &key[prefix_len..];
        (head.eq_ignore_ascii_case(spec.name)
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (spec, digits.parse().ok()))
    })
}

/// N when `key` is `prefix` (case-insensitively) followed by N in decimal without leading zeros.
pub(crate) fn family_index(prefix: &str, key: &str) -> Option<u32> {
    let head = key.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let digits = &key[prefix.len()..];
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a change of `key` takes effect only after the modem restarts. The firmware reads
/// Config.txt when it starts; the caller whitelists (`SMS_validPhoneN`, `CSD_validPhoneN`,
/// `SMS_allPhones`) are assumed to be consulted on each incoming call or SMS, so they apply
/// at once. (No public document states either way; an apply's restart policy can force or
/// skip the restart.)
pub fn needs_restart(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    !(k.starts_with("sms_validphone") || k.starts_with("csd_validphone") || k == "sms_allphones")
}

/// Whether `key` holds a secret (shown as `***`, never logged).
pub fn is_secret(key: &str) -> bool {
    lookup(key).is_some_and(|m| m.spec.secret)
}

/// The outcome of checking one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// Accepted.
    Ok,
    /// Accepted, with a remark.
    Warn(String),
    /// Rejected, with the reason. Reasons never quote the value: the caller adds it for
    /// keys that are not secret.
    Err(String),
}

/// Checks `value` (already trimmed) against `spec`.
pub(crate) fn check(spec: &KeySpec, value: &str) -> Check {
    if value.is_empty() {
        if spec.empty_ok {
            return Check::Ok;
        }
        return Check::Err(format!("must not be empty; {}", expectation(spec.kind)));
    }
    let result = match spec.kind {
        Kind::OnOff => choice(&["on", "off"], value),
        Kind::Choice(values) => choice(values, value),
        Kind::Documented(values) => {
            return match choice(values, value) {
                Ok(()) => Check::Ok,
                Err(_) if printable(value).is_ok() => Check::Warn(format!(
                    "is not a documented value ({}); kept as written",
                    values.join(", ")
                )),
                Err(e) => Check::Err(e),
            };
        }
        Kind::UInt { min, max } => uint(value, min, max).map(|_| ()),
        Kind::Text { max } => printable(value).and_then(|()| max_len(value.len(), max)),
        Kind::Word { max } => word(value, max),
        Kind::Pin => pin(value),
        Kind::Host => host(value),
        Kind::MqttServer => mqtt_server(value),
        Kind::Topic => topic(value),
        Kind::Identifier { max } => {
            printable(value).and_then(|()| max_len(placeholder::expanded_len(value, IMEI_LEN), max))
        }
        Kind::Phone => PhoneNumber::parse(value).map(|_| ()).map_err(|e| e.reason),
    };
    match result {
        Err(e) => Check::Err(e),
        Ok(()) if matches!(spec.kind, Kind::Topic | Kind::Identifier { .. }) => {
            unknown_placeholders(value)
        }
        Ok(()) => Check::Ok,
    }
}

/// What a kind expects, for the message about an empty value.
fn expectation(kind: Kind) -> String {
    match kind {
        Kind::OnOff => "expected on or off".into(),
        Kind::Choice(v) | Kind::Documented(v) => format!("expected one of {}", v.join(", ")),
        Kind::UInt { min, max } => format!("expected a whole number from {min} to {max}"),
        Kind::Text { .. } => "expected text".into(),
        Kind::Word { .. } => "expected a word".into(),
        Kind::Pin => "expected 4 to 8 digits".into(),
        Kind::Host => "expected an IPv4 address or a host name".into(),
        Kind::MqttServer => "expected ssl://host:port or tcp://host:port".into(),
        Kind::Topic => "expected an MQTT topic".into(),
        Kind::Identifier { .. } => "expected an identifier".into(),
        Kind::Phone => "expected a phone number".into(),
    }
}

fn unknown_placeholders(value: &str) -> Check {
    let unknown: Vec<&str> = placeholder::find(value)
        .map(|p| p.text)
        .filter(|t| !KNOWN_PLACEHOLDERS.contains(t))
        .collect();
    if unknown.is_empty() {
        Check::Ok
    } else {
        Check::Warn(format!(
            "placeholder {} is not one Callhome knows ({}); the modem may use it literally",
            unknown.join(", "),
            KNOWN_PLACEHOLDERS.join(", ")
        ))
    }
}

fn choice(values: &[&str], value: &str) -> Result<(), String> {
    if values.contains(&value) {
        return Ok(());
    }
    if let Some(v) = values.iter().find(|v| v.eq_ignore_ascii_case(value)) {
        return Err(format!("must be written {v:?} (lower case)"));
    }
    Err(format!("must be one of {}", values.join(", ")))
}

/// Parses a decimal number in `min..=max`: digits only, no sign, no leading zeros.
pub(crate) fn uint(value: &str, min: u64, max: u64) -> Result<u64, String> {
    if value.starts_with(['+', '-']) {
        return Err("must be a whole number without a sign".into());
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be a whole number written in decimal digits 0-9".into());
    }
    if value.len() > 1 && value.starts_with('0') {
        return Err("must not have leading zeros".into());
    }
    let n = value
        .bytes()
        .try_fold(0u64, |acc, b| {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })
        .filter(|n| *n <= max)
        .ok_or_else(|| format!("must be at most {max}"))?;
    if n < min {
        return Err(format!("must be at least {min}"));
    }
    Ok(n)
}

fn printable(value: &str) -> Result<(), String> {
    match value.chars().find(|c| !(' '..='~').contains(c)) {
        None => Ok(()),
        Some('\t') => Err("must not contain tabs".into()),
        Some(c) => Err(format!(
            "must be printable ASCII; found U+{:04X}",
            u32::from(c)
        )),
    }
}

fn max_len(len: usize, max: usize) -> Result<(), String> {
    if len > max {
        Err(format!("must be at most {max} characters long, not {len}"))
    } else {
        Ok(())
    }
}

fn word(value: &str, max: usize) -> Result<(), String> {
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "character {c:?} is not allowed; use ASCII letters, digits, _, - and ."
        ));
    }
    max_len(value.len(), max)
}

fn pin(value: &str) -> Result<(), String> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be digits only".into());
    }
    if !(4..=8).contains(&value.len()) {
        return Err(format!("must be 4 to 8 digits, not {}", value.len()));
    }
    Ok(())
}

/// Checks an IPv4 address or a DNS host name (labels of 1-63 letters, digits and `-`, not
/// starting or ending with `-`; at most 253 characters). Text made only of digits and dots
/// must be an IPv4 address.
pub(crate) fn host(value: &str) -> Result<(), String> {
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return value
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| "is not a valid IPv4 address".into());
    }
    if value.len() > 253 {
        return Err("host name must be at most 253 characters".into());
    }
    let name = value.strip_suffix('.').unwrap_or(value);
    for label in name.split('.') {
        if label.is_empty() {
            return Err(
                "host name has an empty label (two dots in a row, or a leading dot)".into(),
            );
        }
        if label.len() > 63 {
            return Err("host name label must be at most 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "character {c:?} is not allowed in a host name; use letters, digits, - and ."
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("host name label must not start or end with -".into());
        }
    }
    Ok(())
}

fn mqtt_server(value: &str) -> Result<(), String> {
    let Some(rest) = value
        .strip_prefix("ssl://")
        .or_else(|| value.strip_prefix("tcp://"))
    else {
        return Err("must start with ssl:// or tcp://".into());
    };
    let Some((h, port)) = rest.rsplit_once(':') else {
        return Err("must end with :port".into());
    };
    if h.is_empty() {
        return Err("host is missing".into());
    }
    host(h)?;
    uint(port, 1, 65535).map_err(|e| format!("port {e}"))?;
    Ok(())
}

fn topic(value: &str) -> Result<(), String> {
    printable(value)?;
    if let Some(c) = value.chars().find(|c| matches!(c, '+' | '#')) {
        return Err(format!(
            "must not contain the wildcard {c:?}: the modem publishes or subscribes to one topic"
        ));
    }
    max_len(placeholder::expanded_len(value, IMEI_LEN), 128)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicate_or_invalid_names() {
        for (i, a) in KEYS.iter().enumerate() {
            super::super::file::check_key(&a.key(a.index.map_or(0, |r| r.0))).unwrap();
            for b in &KEYS[i + 1..] {
                assert!(
                    !(a.name.eq_ignore_ascii_case(b.name)
                        && a.index.is_none()
                        && b.index.is_none()),
                    "{} twice",
                    a.name
                );
            }
        }
    }

    #[test]
    fn lookup_is_case_insensitive_and_knows_families() {
        assert_eq!(lookup("mtx_pin").unwrap().spec.name, "MTX_PIN");
        let m = lookup("sms_VALIDPHONE10").unwrap();
        assert_eq!((m.spec.name, m.index), ("SMS_validPhone", Some(10)));
        assert!(lookup("SMS_validPhone11").is_none());
        assert!(lookup("SMS_validPhone0").is_none());
        assert!(lookup("SMS_validPhone01").is_none());
        assert!(lookup("SMS_validPhone").is_none());
        assert_eq!(lookup("MTX_TPServer").unwrap().index, None);
        assert_eq!(lookup("MTX_TPServer2").unwrap().index, Some(2));
        assert!(lookup("DNS_exdended").is_none());
        let (spec, n) = family_out_of_range("CSD_validPhone11").unwrap();
        assert_eq!((spec.name, n), ("CSD_validPhone", Some(11)));
        assert_eq!(
            family_out_of_range("CSD_validPhone99999999999").unwrap().1,
            None
        );
        assert!(family_out_of_range("CSD_validPhone1").is_none());
        assert!(family_out_of_range("CSD_validPhoneX").is_none());
    }

    #[test]
    fn secrets() {
        for k in ["GPRS_password", "MQTT_password", "MTX_PIN", "mtx_pin"] {
            assert!(is_secret(k), "{k}");
        }
        for k in ["GPRS_login", "MQTT_login", "MTX_pingIP", "unknown"] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn numbers_are_decimal_unsigned_and_do_not_overflow() {
        assert_eq!(uint("0", 0, 10), Ok(0));
        assert_eq!(uint("10", 0, 10), Ok(10));
        assert!(uint("11", 0, 10).unwrap_err().contains("at most 10"));
        assert!(uint("5", 6, 10).unwrap_err().contains("at least 6"));
        assert!(uint("+5", 0, 10).unwrap_err().contains("sign"));
        assert!(uint("-5", 0, 10).unwrap_err().contains("sign"));
        assert!(uint("05", 0, 10).unwrap_err().contains("leading zeros"));
        assert!(uint("0x5", 0, 10).unwrap_err().contains("decimal"));
        assert!(uint("1e3", 0, 10_000).unwrap_err().contains("decimal"));
        assert!(uint("١", 0, 10).unwrap_err().contains("decimal"));
        assert!(
            uint("99999999999999999999999999", 0, u64::MAX)
                .unwrap_err()
                .contains("at most")
        );
        assert_eq!(uint("18446744073709551615", 0, u64::MAX), Ok(u64::MAX));
        assert!(uint("18446744073709551616", 0, u64::MAX).is_err());
    }

    #[test]
    fn hosts() {
        for ok in [
            "8.8.8.8",
            "ntp.roa.es",
            "localhost",
            "a-b.example.",
            "1.example",
        ] {
            host(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "8.8.8.256",
            "8.8.8",
            "08.8.8.8",
            "a..b",
            ".a",
            "-a.b",
            "a_b.c",
            "exa mple",
            &"a".repeat(64),
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
    }
}
