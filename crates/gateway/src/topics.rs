//! A device's MQTT topics, from its record (defaults as in the seed Config.txt).

use callhome_store::Device;

/// The topics a modem may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Where the modem receives AT commands (`MQTT_attopic1`, default `{IMEI}/AT`).
    pub command: String,
    /// Where it publishes replies (`MQTT_atrtopic`, default `{IMEI}/ATR`).
    pub reply: String,
    /// Where it publishes status (`DNS_mqttTopic`, default `{IMEI}/dns`).
    pub status: String,
    /// Where it publishes a certificate request in a rotation (`{IMEI}/csr`).
    pub csr: String,
    /// Where it receives the answer: its new certificate (`{IMEI}/cert`).
    pub cert: String,
}

impl Topics {
    /// The topics of `device`, with `[IMEI]` placeholders resolved.
    pub fn for_device(device: &Device) -> Self {
        let imei = device.imei.as_str();
        let pick = |t: &Option<String>, default: &str| {
            t.as_deref()
                .map(|t| t.replace("[IMEI]", imei))
                .unwrap_or_else(|| format!("{imei}/{default}"))
        };
        Self {
            command: pick(&device.mqtt.command_topic, "AT"),
            reply: pick(&device.mqtt.reply_topic, "ATR"),
            status: pick(&device.mqtt.status_topic, "dns"),
            csr: format!("{imei}/csr"),
            cert: format!("{imei}/cert"),
        }
    }
}

/// Checks a topic name given by an operator: 1-128 bytes, no wildcards, no NUL.
pub fn check_topic(field: &str, topic: &str) -> Result<(), callhome_core::ValidationError> {
    if topic.is_empty() || topic.len() > 128 {
        return Err(callhome_core::ValidationError::new(
            field,
            "must be 1-128 bytes",
        ));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(callhome_core::ValidationError::new(
            field,
            "must not contain the wildcards '+' or '#' or NUL",
        ));
    }
    Ok(())
}
