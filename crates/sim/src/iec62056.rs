//! A simulated electricity meter speaking IEC 62056-21 (formerly IEC 1107), protocol
//! mode C, data readout only: the built-in "serial side" behind a simulated modem's
//! TEMPORALCLIENT tunnel.
//!
//! # The exchange, byte for byte
//!
//! For the modem with IMEI 356938035643809:
//!
//! ```text
//! reader → meter   /?!\r\n                    sign-on (or /?<address>!\r\n, e.g. /?03564380!\r\n)
//! meter  → reader  /ISK5MT174-3809\r\n         identification: flag ID, baud char '5', ident
//! reader → meter   \x06 0 5 0 \r\n             ACK, protocol 0, baud char, mode 0 = readout
//!                                             (no spaces on the wire: 06 30 35 30 0D 0A)
//! meter  → reader  \x02                        STX
//!                  0.0.0(03564380)\r\n         meter address (8 digits)
//!                  1.8.0(336839.886*kWh)\r\n   active energy import, total
//!                  1.8.1(155405.669*kWh)\r\n   import, tariff 1
//!                  1.8.2(181434.217*kWh)\r\n   import, tariff 2 (1.8.1 + 1.8.2 = 1.8.0)
//!                  2.8.0(041398.820*kWh)\r\n   active energy export, total
//!                  32.7.0(230.3*V)\r\n         voltage L1
//!                  !\r\n                       end of data
//!                  \x03                        ETX
//!                  \x45                        BCC: XOR of every byte after STX up to ETX inclusive
//! ```
//!
//! The values are fixed per meter and derived from the modem's IMEI
//! ([`MeterReadings::for_imei`]); [`MeterReadings::readout_message`] is exactly what the
//! meter sends, and [`parse_readout`] reads it back (checking the BCC).
//!
//! The meter answers a sign-on without an address or with its own address (leading
//! zeros ignored); any other address is ignored, as on a shared bus. The baud rate
//! character in the acknowledgement may be `0`-`5`: the byte stream has no speed, so the
//! meter "switches" without changing anything. A break message (`SOH B0 ETX BCC`)
//! or a new sign-on restarts the session; programming mode (`\x06 0 Z 1`) is not
//! supported and ends the session silently. Bytes outside a message are ignored, and a
//! message may arrive split across any number of reads.

use std::fmt::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Start of text, before the data block.
pub const STX: u8 = 0x02;
/// End of text, after the data block; the BCC follows.
pub const ETX: u8 = 0x03;
/// Acknowledge: first byte of the option select message.
pub const ACK: u8 = 0x06;
/// Start of header: first byte of a programming-mode command (such as break).
pub const SOH: u8 = 0x01;
/// The sign-on request without a device address.
pub const SIGN_ON: &[u8] = b"/?!\r\n";
/// The acknowledgement / option select message for a data readout at the same speed
/// (mode C, baud character `5` = 9600 Bd): `ACK '0' '5' '0' CR LF`.
pub const ACK_DATA_READOUT: &[u8] = b"\x06050\r\n";
/// The break message: `SOH 'B' '0' ETX` and its BCC.
pub const BREAK: &[u8] = b"\x01B0\x03q";
/// The baud rate character the meter offers (mode C, 9600 Bd).
pub const BAUD_CHAR: u8 = b'5';
/// The longest message the meter buffers while waiting for its CR LF.
const MAX_MESSAGE: usize = 64;

/// The sign-on request, with an optional device address: `/?!\r\n`, `/?12345678!\r\n`.
pub fn sign_on(address: Option<&str>) -> Vec<u8> {
    format!("/?{}!\r\n", address.unwrap_or("")).into_bytes()
}

/// The block check character: XOR of `bytes` (for a readout: every byte after STX up to
/// and including ETX).
pub fn bcc(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// One meter's fixed identity and register values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterReadings {
    /// Three-letter manufacturer flag ID (`ISK`).
    pub manufacturer: String,
    /// Identification after the baud character, at most 16 characters (`MT174-1234`).
    pub identification: String,
    /// Device address and serial number, 8 digits; register `0.0.0`.
    pub address: String,
    /// Active energy import, tariff 1, in Wh (`1.8.1`).
    pub import_t1_wh: u64,
    /// Active energy import, tariff 2, in Wh (`1.8.2`).
    pub import_t2_wh: u64,
    /// Active energy export in Wh (`2.8.0`).
    pub export_wh: u64,
    /// Voltage L1 in tenths of a volt (`32.7.0`).
    pub voltage_dv: u32,
}

/// SplitMix64: a fixed, well-mixed function of the seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn kwh(wh: u64) -> String {
    format!("{:06}.{:03}", wh / 1000, wh % 1000)
}

impl MeterReadings {
    /// The meter behind the modem with `imei`: the address is the 8 IMEI digits before
    /// the check digit, the identification `MT174-` and the last four IMEI digits, and the energy and voltage values a fixed function of the
    /// IMEI.
    pub fn for_imei(imei: &str) -> Self {
        let digits: String = imei.chars().filter(char::is_ascii_digit).collect();
        let padded = format!("{digits:0>15}");
        let address = padded[padded.len() - 9..padded.len() - 1].to_owned();
        let seed = padded.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let r = |i: u64| mix(seed ^ mix(i));
        Self {
            manufacturer: "ISK".into(),
            identification: format!("MT174-{}", &padded[padded.len() - 4..]),
            address,
            import_t1_wh: 1_000_000 + r(1) % 400_000_000,
            import_t2_wh: 500_000 + r(2) % 200_000_000,
            export_wh: r(3) % 50_000_000,
            voltage_dv: 2200 + u32::try_from(r(4) % 201).unwrap_or(0),
        }
    }

    /// Total active energy import (`1.8.0`) in Wh: tariff 1 + tariff 2.
    pub fn import_total_wh(&self) -> u64 {
        self.import_t1_wh + self.import_t2_wh
    }

    /// The identification message: `/` flag ID, baud character, identification, CR LF.
    pub fn identification_message(&self) -> Vec<u8> {
        format!(
            "/{}{}{}\r\n",
            self.manufacturer,
            char::from(BAUD_CHAR),
            self.identification
        )
        .into_bytes()
    }

    /// The data sets of the readout, in order.
    pub fn data_sets(&self) -> Vec<DataSet> {
        let set = |address: &str, value: String, unit: Option<&str>| DataSet {
            address: address.to_owned(),
            value,
            unit: unit.map(str::to_owned),
        };
        vec![
            set("0.0.0", self.address.clone(), None),
            set("1.8.0", kwh(self.import_total_wh()), Some("kWh")),
            set("1.8.1", kwh(self.import_t1_wh), Some("kWh")),
            set("1.8.2", kwh(self.import_t2_wh), Some("kWh")),
            set("2.8.0", kwh(self.export_wh), Some("kWh")),
            set(
                "32.7.0",
                format!("{}.{}", self.voltage_dv / 10, self.voltage_dv % 10),
                Some("V"),
            ),
        ]
    }

    /// The data block between STX and ETX: one `address(value*unit)\r\n` line per data
    /// set, then `!\r\n`.
    pub fn data_block(&self) -> String {
        let mut s = String::new();
        for d in self.data_sets() {
            let _ = write!(s, "{d}\r\n");
        }
        s.push_str("!\r\n");
        s
    }

    /// The whole data readout message: STX, [`MeterReadings::data_block`], ETX, BCC.
    pub fn readout_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(160);
        m.push(STX);
        m.extend_from_slice(self.data_block().as_bytes());
        m.push(ETX);
        m.push(bcc(&m[1..]));
        m
    }
}

/// One `address(value*unit)` data set of a readout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSet {
    /// The register address (an OBIS code without medium and channel: `1.8.0`).
    pub address: String,
    /// The value as sent (`001234.567`).
    pub value: String,
    /// The unit, when sent (`kWh`).
    pub unit: Option<String>,
}

impl std::fmt::Display for DataSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.unit {
            Some(u) => write!(f, "{}({}*{u})", self.address, self.value),
            None => write!(f, "{}({})", self.address, self.value),
        }
    }
}

/// Why a readout could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadoutError {
    /// The message does not start with STX.
    #[error("no STX at the start")]
    NoStx,
    /// No ETX followed by a BCC byte.
    #[error("no ETX and BCC (incomplete message)")]
    Incomplete,
    /// The BCC does not match.
    #[error("BCC mismatch: received {received:#04x}, computed {computed:#04x}")]
    Bcc {
        /// The BCC in the message.
        received: u8,
        /// The BCC computed over the message.
        computed: u8,
    },
    /// The data block is not `line\r\n...!\r\n` with `address(value[*unit])` lines.
    #[error("malformed data block: {0}")]
    Malformed(String),
}

/// Reads a data readout message (STX, data lines, `!\r\n`, ETX, BCC), checking the BCC.
/// Bytes after the BCC are ignored.
pub fn parse_readout(message: &[u8]) -> Result<Vec<DataSet>, ReadoutError> {
    if message.first() != Some(&STX) {
        return Err(ReadoutError::NoStx);
    }
    let etx = message
        .iter()
        .position(|b| *b == ETX)
        .filter(|i| i + 1 < message.len())
        .ok_or(ReadoutError::Incomplete)?;
    let computed = bcc(&message[1..=etx]);
    let received = message[etx + 1];
    if computed != received {
        return Err(ReadoutError::Bcc { received, computed });
    }
    let block = std::str::from_utf8(&message[1..etx])
        .map_err(|_| ReadoutError::Malformed("not ASCII".into()))?;
    let body = block
        .strip_suffix("!\r\n")
        .ok_or_else(|| ReadoutError::Malformed("no `!` end line".into()))?;
    let mut sets = Vec::new();
    for line in body.split_terminator("\r\n") {
        // A line may hold several data sets: `a(v)b(w)`.
        let mut rest = line;
        while !rest.is_empty() {
            let open = rest
                .find('(')
                .ok_or_else(|| ReadoutError::Malformed(format!("{line:?}")))?;
            let close = rest[open..]
                .find(')')
                .map(|i| open + i)
                .ok_or_else(|| ReadoutError::Malformed(format!("{line:?}")))?;
            let inner = &rest[open + 1..close];
            let (value, unit) = match inner.split_once('*') {
                Some((v, u)) => (v, Some(u.to_owned())),
                None => (inner, None),
            };
            sets.push(DataSet {
                address: rest[..open].to_owned(),
                value: value.to_owned(),
                unit,
            });
            rest = &rest[close + 1..];
        }
    }
    Ok(sets)
}

/// The fields of an identification message `/XXXZ<ident>\r\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// Manufacturer flag ID (three letters).
    pub manufacturer: String,
    /// Baud rate character (`5` for 9600 Bd in mode C).
    pub baud: char,
    /// The identification.
    pub identification: String,
}

/// Reads an identification message (`/ISK5MT174-1234\r\n`; the CR LF is optional).
pub fn parse_identification(message: &[u8]) -> Option<Identification> {
    let s = std::str::from_utf8(message).ok()?;
    let s = s.strip_prefix('/')?;
    let s = s.strip_suffix("\r\n").unwrap_or(s);
    let manufacturer = s.get(..3)?;
    let baud = s[3..].chars().next()?;
    if !manufacturer.chars().all(|c| c.is_ascii_alphabetic()) || !baud.is_ascii_digit() {
        return None;
    }
    Some(Identification {
        manufacturer: manufacturer.to_owned(),
        baud,
        identification: s[4..].to_owned(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a sign-on.
    Idle,
    /// Identification sent; waiting for the acknowledgement / option select.
    Identified,
}

/// The meter's protocol state machine: bytes from the reader in, bytes to the reader
/// out. Pure (no I/O, no clock): feed it whatever a read returned.
#[derive(Debug, Clone)]
pub struct Iec62056Meter {
    readings: MeterReadings,
    state: State,
    buf: Vec<u8>,
    readouts: u64,
}

impl Iec62056Meter {
    /// A meter with `readings`, waiting for a sign-on.
    pub fn new(readings: MeterReadings) -> Self {
        Self {
            readings,
            state: State::Idle,
            buf: Vec::with_capacity(MAX_MESSAGE),
            readouts: 0,
        }
    }

    /// The meter's values.
    pub fn readings(&self) -> &MeterReadings {
        &self.readings
    }

    /// Data readouts sent so far.
    pub fn readouts(&self) -> u64 {
        self.readouts
    }

    /// Whether the meter is waiting for the acknowledgement after its identification.
    pub fn is_identified(&self) -> bool {
        self.state == State::Identified
    }

    /// Takes bytes received from the reader; returns what the meter sends back (empty
    /// when nothing is due yet).
    pub fn feed(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in input {
            self.push(b, &mut out);
        }
        out
    }

    fn push(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.buf.is_empty() {
            // Only a message start begins a message; anything else is line noise.
            if matches!(b, b'/' | ACK | SOH) {
                self.buf.push(b);
            }
            return;
        }
        if b == b'/' && self.buf[0] != SOH {
            // A new sign-on interrupts an unfinished message.
            self.buf.clear();
            self.buf.push(b);
            return;
        }
        self.buf.push(b);
        if self.buf[0] == SOH {
            // SOH ... ETX BCC: complete one byte after the ETX.
            let n = self.buf.len();
            if n >= 2 && self.buf[n - 2] == ETX {
                let msg = std::mem::take(&mut self.buf);
                self.on_command(&msg);
            } else if n > MAX_MESSAGE {
                self.buf.clear();
            }
            return;
        }
        if self.buf.ends_with(b"\r\n") {
            let msg = std::mem::take(&mut self.buf);
            self.on_message(&msg[..msg.len() - 2], out);
        } else if self.buf.len() > MAX_MESSAGE {
            self.buf.clear();
        }
    }

    fn on_message(&mut self, msg: &[u8], out: &mut Vec<u8>) {
        match msg.first() {
            Some(b'/') => {
                let Some(address) = msg.strip_prefix(b"/?").and_then(|m| m.strip_suffix(b"!"))
                else {
                    return;
                };
                if self.addressed(address) {
                    self.state = State::Identified;
                    out.extend_from_slice(&self.readings.identification_message());
                } else {
                    self.state = State::Idle;
                }
            }
            Some(&ACK) if self.state == State::Identified => {
                self.state = State::Idle;
                // ACK V Z Y: protocol control '0' (normal), baud char up to the one
                // offered, mode '0' = data readout.
                if let [ACK, b'0', z, b'0'] = msg
                    && (b'0'..=BAUD_CHAR).contains(z)
                {
                    self.readouts += 1;
                    out.extend_from_slice(&self.readings.readout_message());
                }
            }
            _ => {}
        }
    }

    fn on_command(&mut self, _msg: &[u8]) {
        // Break (or any programming command, which is not supported): back to idle.
        self.state = State::Idle;
    }

    fn addressed(&self, address: &[u8]) -> bool {
        if address.is_empty() {
            return true;
        }
        let strip = |a: &[u8]| -> Vec<u8> {
            let i = a.iter().position(|c| *c != b'0').unwrap_or(a.len());
            a[i..].to_vec()
        };
        strip(address) == strip(self.readings.address.as_bytes())
    }

    /// Serves `stream` (the reader's side of the serial line) until it ends or fails:
    /// every read is fed to the state machine and the answer written back.
    pub async fn serve<S>(mut self, mut stream: S) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            let out = self.feed(&buf[..n]);
            if !out.is_empty() {
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMEI: &str = "356938035643809";

    fn meter() -> Iec62056Meter {
        Iec62056Meter::new(MeterReadings::for_imei(IMEI))
    }

    #[test]
    fn readings_are_fixed_per_imei() {
        let r = MeterReadings::for_imei(IMEI);
        assert_eq!(r, MeterReadings::for_imei(IMEI));
        assert_eq!(r.address, "03564380");
        assert_eq!(r.identification, "MT174-3809");
        assert_ne!(r, MeterReadings::for_imei("356938035643817"));
        // Golden bytes: other crates' tests may rely on them.
        assert_eq!(
            r.readout_message(),
            b"\x020.0.0(03564380)\r\n1.8.0(336839.886*kWh)\r\n1.8.1(155405.669*kWh)\r\n\
              1.8.2(181434.217*kWh)\r\n2.8.0(041398.820*kWh)\r\n32.7.0(230.3*V)\r\n!\r\n\x03\x45"
                .to_vec()
        );
        assert!((2200..=2400).contains(&r.voltage_dv));
        assert!(r.import_total_wh() < 1_000_000_000);
        assert_eq!(r.identification_message(), b"/ISK5MT174-3809\r\n".to_vec());
        assert_eq!(
            parse_identification(&r.identification_message()),
            Some(Identification {
                manufacturer: "ISK".into(),
                baud: '5',
                identification: "MT174-3809".into(),
            })
        );
    }

    #[test]
    fn readout_is_well_formed_and_parses_back() {
        let r = MeterReadings::for_imei(IMEI);
        let m = r.readout_message();
        assert_eq!(m[0], STX);
        let n = m.len();
        assert_eq!(m[n - 2], ETX);
        assert_eq!(m[n - 1], m[1..n - 1].iter().fold(0, |a, b| a ^ b));
        let text = std::str::from_utf8(&m[1..n - 2]).unwrap();
        assert!(
            text.starts_with(&format!("0.0.0({})\r\n1.8.0(", r.address)),
            "{text}"
        );
        assert!(text.ends_with("*V)\r\n!\r\n"), "{text}");
        let sets = parse_readout(&m).unwrap();
        assert_eq!(sets, r.data_sets());
        let addresses: Vec<&str> = sets.iter().map(|d| d.address.as_str()).collect();
        assert_eq!(
            addresses,
            ["0.0.0", "1.8.0", "1.8.1", "1.8.2", "2.8.0", "32.7.0"]
        );
        let kwh = |s: &DataSet| -> u64 { s.value.replace('.', "").parse().unwrap() };
        assert_eq!(kwh(&sets[1]), kwh(&sets[2]) + kwh(&sets[3]));
        assert_eq!(kwh(&sets[1]), r.import_total_wh());
        assert!(sets[1].value.len() == 10 && sets[1].unit.as_deref() == Some("kWh"));

        let mut bad = m.clone();
        bad[3] ^= 1;
        assert!(matches!(parse_readout(&bad), Err(ReadoutError::Bcc { .. })));
        assert_eq!(parse_readout(&m[..n - 1]), Err(ReadoutError::Incomplete));
        assert_eq!(parse_readout(&m[1..]), Err(ReadoutError::NoStx));
        assert_eq!(bcc(BREAK), 0x01 ^ bcc(&BREAK[1..]));
        assert_eq!(BREAK[4], bcc(&BREAK[1..4]));
    }

    #[test]
    fn sign_on_and_readout_in_one_piece() {
        let mut m = meter();
        let id = m.feed(SIGN_ON);
        assert_eq!(id, m.readings().identification_message());
        assert!(m.is_identified());
        let readout = m.feed(ACK_DATA_READOUT);
        assert_eq!(readout, m.readings().readout_message());
        assert_eq!(m.readouts(), 1);
        assert!(!m.is_identified());
        // An acknowledgement without a sign-on is ignored.
        assert!(m.feed(ACK_DATA_READOUT).is_empty());
    }

    #[test]
    fn split_reads_at_every_position() {
        let wire: Vec<u8> = [SIGN_ON, ACK_DATA_READOUT].concat();
        let readings = MeterReadings::for_imei(IMEI);
        let want = [
            readings.identification_message(),
            readings.readout_message(),
        ]
        .concat();
        // Every single split point, and byte by byte.
        for cut in 0..=wire.len() {
            let mut m = meter();
            let mut out = m.feed(&wire[..cut]);
            out.extend(m.feed(&wire[cut..]));
            assert_eq!(out, want, "split at {cut}");
        }
        let mut m = meter();
        let mut out = Vec::new();
        for b in &wire {
            let part = m.feed(std::slice::from_ref(b));
            // The identification comes exactly when the sign-on's LF arrives.
            out.extend(part);
        }
        assert_eq!(out, want);
        // The identification is due after the sign-on's last byte, not before.
        let mut m = meter();
        assert!(m.feed(&SIGN_ON[..SIGN_ON.len() - 1]).is_empty());
        assert_eq!(m.feed(b"\n"), readings.identification_message());
    }

    #[test]
    fn addresses_noise_and_restarts() {
        let r = MeterReadings::for_imei(IMEI);
        let mut m = meter();
        // Another meter's address: silence.
        assert!(m.feed(&sign_on(Some("99999999"))).is_empty());
        assert!(m.feed(ACK_DATA_READOUT).is_empty());
        // Its own address, with or without leading zeros.
        assert_eq!(
            m.feed(&sign_on(Some(&r.address))),
            r.identification_message()
        );
        let mut z = meter();
        assert_eq!(
            z.feed(&sign_on(Some(&format!("000{}", r.address)))),
            r.identification_message()
        );
        // Noise before and a new sign-on in the middle of an unfinished one.
        let mut n = meter();
        assert_eq!(
            n.feed(b"\r\n\x00garbage/?12/?!\r\n"),
            r.identification_message()
        );
        // A break returns to idle: the acknowledgement is then ignored.
        assert!(n.feed(BREAK).is_empty());
        assert!(n.feed(ACK_DATA_READOUT).is_empty());
        // Programming mode is not supported: silence, then idle.
        n.feed(SIGN_ON);
        assert!(n.feed(b"\x06051\r\n").is_empty());
        assert!(!n.is_identified());
        // A lower baud character is accepted (same speed on a byte stream).
        n.feed(SIGN_ON);
        assert_eq!(n.feed(b"\x06000\r\n"), r.readout_message());
        // An overlong message is dropped without answering.
        let mut o = meter();
        let long = [b"/?".as_slice(), &[b'1'; 100], b"!\r\n"].concat();
        assert!(o.feed(&long).is_empty());
        assert_eq!(o.feed(SIGN_ON), r.identification_message());
    }

    #[tokio::test]
    async fn serves_a_stream() {
        let (mut reader, meter_side) = tokio::io::duplex(64);
        let task = tokio::spawn(meter().serve(meter_side));
        let r = MeterReadings::for_imei(IMEI);
        reader.write_all(b"/?").await.unwrap();
        reader.write_all(b"!\r").await.unwrap();
        reader.write_all(b"\n").await.unwrap();
        let mut id = vec![0; r.identification_message().len()];
        reader.read_exact(&mut id).await.unwrap();
        assert_eq!(id, r.identification_message());
        reader.write_all(ACK_DATA_READOUT).await.unwrap();
        let mut readout = vec![0; r.readout_message().len()];
        reader.read_exact(&mut readout).await.unwrap();
        assert_eq!(parse_readout(&readout).unwrap(), r.data_sets());
        drop(reader);
        task.await.unwrap().unwrap();
    }
}
