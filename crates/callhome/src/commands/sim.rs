//! `callhome sim`: a fleet of simulated MTX modems.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callhome_sim::{
    Behaviour, CounterSnapshot, Counters, Enroller, FirmwareFault, Fleet, FleetConfig,
    FleetTransport, ModemSettings, ReplyMode, SerialSide, TlsBase, answer::FIRMWARE_VERSION,
    config::MasterConfig, firmware, fleet_imeis,
};
use indicatif::{ProgressBar, ProgressStyle};

/// How the misbehaving part of the fleet misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Misbehave {
    /// Answer ERROR to every command.
    Error,
    /// Never answer.
    Silent,
    /// Drop the connection when a command arrives.
    Drop,
    /// Cut each firmware download's first request after about half of the bytes (it
    /// then resumes with Range).
    DownloadInterrupt,
    /// Install firmware and restart, but come back on the old version.
    BootOld,
    /// After a successful firmware download and its 900 report, go offline for good.
    NeverBack,
    /// Compute the firmware image's hash wrong (reports 907 SHA-256 mismatch).
    Corrupt,
    /// OTAP: report 904 JAR Size Mismatch whatever the JAR's size.
    OtapSizeMismatch,
    /// Certificate rotation: answer the install command OK but never reconnect with the
    /// new certificate (the rotation ends `not_confirmed`).
    NeverConfirm,
}

/// `callhome sim ...`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Callhome API base URL, e.g. http://127.0.0.1:8080 (for enrollment; not needed
    /// with --plain).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
    /// Access token for the API (operator role).
    #[arg(long, env = "CALLHOME_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API key for the API (operator role), instead of --token.
    #[arg(
        long,
        env = "CALLHOME_API_KEY",
        hide_env_values = true,
        conflicts_with = "token"
    )]
    pub api_key: Option<String>,
    /// Read the access token or API key from the first line of FILE (a token given as a
    /// flag shows in `ps`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "api_key"])]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https API URL.
    #[arg(long, value_name = "FILE")]
    pub api_ca: Option<PathBuf>,
    /// MQTT endpoint as HOST:PORT; the host is also the TLS server name.
    #[arg(long, value_name = "HOST:PORT")]
    pub broker: Option<String>,
    /// Plain TCP without certificates (a reference broker such as Mosquitto); skips
    /// enrollment.
    #[arg(long)]
    pub plain: bool,
    /// Number of modems.
    #[arg(long, default_value_t = 1)]
    pub modems: usize,
    /// First 14 IMEI digits; the fleet counts up from there.
    #[arg(long, value_name = "BODY14", default_value = "35693803000000")]
    pub first_imei: String,
    /// Where keys, certificates and the CA certificate are cached between runs.
    #[arg(long, value_name = "DIR", default_value = "callhome-sim-cache")]
    pub cache_dir: PathBuf,
    /// Seconds between status messages (Config.txt DNS_period).
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub status_period: u64,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Enrollments in progress at once.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// Make part of the fleet misbehave.
    #[arg(long, value_enum)]
    pub misbehave: Option<Misbehave>,
    /// Fraction of the fleet (0-1, spread evenly) that misbehaves.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub misbehave_fraction: f64,
    /// The misbehaving modems delay every reply by this many milliseconds.
    #[arg(long, value_name = "MS")]
    pub reply_delay_ms: Option<u64>,
    /// The misbehaving modems drop each connection this many seconds after it is made.
    #[arg(long, value_name = "S")]
    pub drop_after: Option<u64>,
    /// How long a modem stays offline after answering the reboot command
    /// (AT^MTXTUNNEL=REBOOT) before it connects again, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub reboot_delay_ms: u64,
    /// Models (Config.txt MTX_model, reported by ATI and in status messages) given to
    /// the modems in turn, comma-separated (default: the master configuration's).
    #[arg(long, value_name = "MODEL,...", value_delimiter = ',')]
    pub models: Vec<String>,
    /// The firmware version every modem starts with; an update changes it, per modem.
    #[arg(long, value_name = "V", default_value = FIRMWARE_VERSION)]
    pub firmware_version: String,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "S")]
    pub duration: Option<u64>,
    /// What sits on each modem's serial port behind TEMPORALCLIENT tunnels: the
    /// built-in IEC 62056-21 meter (iec62056), a TCP server the modem connects to when
    /// a tunnel opens (tcp:HOST:PORT, e.g. a Modbus RTU-over-TCP server), or a serial
    /// device or pty (serial:PATH, at COMM_baudrate).
    #[arg(long, value_name = "SIDE", default_value = "iec62056", value_parser = parse_serial_side)]
    pub meter: SerialSide,
    /// Same as --meter tcp:HOST:PORT.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["meter", "serial_device"])]
    pub serial_tcp: Option<String>,
    /// Same as --meter serial:PATH.
    #[arg(long, value_name = "PATH", conflicts_with = "meter")]
    pub serial_device: Option<PathBuf>,
}

fn parse_serial_side(s: &str) -> Result<SerialSide, String> {
    s.parse()
}

/// The serial side chosen with --meter, --serial-tcp or --serial-device.
fn serial_side(args: &SimArgs) -> anyhow::Result<SerialSide> {
    if let Some(addr) = &args.serial_tcp {
        parse_endpoint(addr)?;
        return Ok(SerialSide::Tcp(addr.clone()));
    }
    if let Some(path) = &args.serial_device {
        return Ok(SerialSide::Device(path.clone()));
    }
    Ok(args.meter.clone())
}

/// Splits `HOST:PORT` (`[v6]:PORT` too).
fn parse_endpoint(s: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{s:?}: expected HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{s:?}: the host is empty");
    }
    let port: u16 = port
        .parse()
        .with_context(|| format!("{s:?}: the port is not a number 1-65535"))?;
    if port == 0 {
        bail!("{s:?}: the port must not be 0");
    }
    Ok((host.to_owned(), port))
}

fn endpoint(args: &SimArgs) -> anyhow::Result<(String, u16)> {
    match &args.broker {
        Some(b) => parse_endpoint(b),
        None => bail!("give the MQTT endpoint with --broker HOST:PORT"),
    }
}

fn misbehaviour(args: &SimArgs) -> anyhow::Result<Option<(Behaviour, f64)>> {
    if !(0.0..=1.0).contains(&args.misbehave_fraction) {
        bail!("--misbehave-fraction must be between 0 and 1");
    }
    let b = Behaviour {
        reply: match args.misbehave {
            Some(Misbehave::Error) => ReplyMode::Error,
            Some(Misbehave::Silent) => ReplyMode::Silent,
            Some(Misbehave::Drop) => ReplyMode::Drop,
            _ => ReplyMode::Normal,
        },
        reply_delay: Duration::from_millis(args.reply_delay_ms.unwrap_or(0)),
        drop_after: args.drop_after.map(Duration::from_secs),
        firmware: match args.misbehave {
            Some(Misbehave::DownloadInterrupt) => FirmwareFault::DownloadInterrupt,
            Some(Misbehave::BootOld) => FirmwareFault::BootOld,
            Some(Misbehave::NeverBack) => FirmwareFault::NeverBack,
            Some(Misbehave::Corrupt) => FirmwareFault::Corrupt,
            Some(Misbehave::OtapSizeMismatch) => FirmwareFault::OtapSizeMismatch,
            _ => FirmwareFault::None,
        },
        never_confirm: args.misbehave == Some(Misbehave::NeverConfirm),
    };
    Ok((b != Behaviour::default()).then_some((b, args.misbehave_fraction)))
}

/// The --models list, each one usable as a Config.txt value.
fn models(args: &SimArgs) -> anyhow::Result<Vec<String>> {
    for m in &args.models {
        if m.is_empty() {
            bail!("--models: empty model name");
        }
        callhome_core::dialect::check_param_value(m)
            .map_err(|e| anyhow::anyhow!("--models {m:?}: {}", e.reason))?;
    }
    Ok(args.models.clone())
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Resolves when Ctrl-C is pressed or `duration` has passed.
async fn stop_signal(duration: Option<u64>) {
    let timer = async {
        match duration {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = timer => {}
    }
}

pub(super) async fn run(args: SimArgs) -> anyhow::Result<()> {
    callhome_sim::install_crypto_provider();
    let (host, port) = endpoint(&args)?;
    let misbehaviour = misbehaviour(&args)?;
    let serial = serial_side(&args)?;
    let models = models(&args)?;
    firmware::validate_version(&args.firmware_version)
        .map_err(|e| anyhow::anyhow!("--firmware-version: {e}"))?;
    let imeis = fleet_imeis(&args.first_imei, args.modems)?;
    if imeis.is_empty() {
        bail!("--modems must be at least 1");
    }
    let stop = stop_signal(args.duration);
    tokio::pin!(stop);

    let transport = if args.plain {
        FleetTransport::Plain
    } else {
        let Some(api) = &args.api else {
            bail!("mutual TLS needs --api URL to enroll the modems (or use --plain)");
        };
        let credential = super::api::client_credential(
            api,
            args.token.as_ref(),
            args.api_key.as_ref(),
            args.token_file.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("enrolling the modems: {e:#}"))?;
        let credential = credential.as_str();
        let api_ca = match &args.api_ca {
            Some(p) => Some(
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            ),
            None => None,
        };
        let enroller = Enroller::new(api, credential, &args.cache_dir, api_ca.as_deref())?;
        let ca = enroller
            .ca_certificate()
            .await
            .context("fetching the CA certificate")?;
        let bar = ProgressBar::new(imeis.len() as u64).with_style(bar_style(
            "enrolling  [{bar:40}] {pos}/{len} ({per_sec}, {elapsed})",
        ));
        let enrolled = tokio::select! {
            r = enroller.enroll_all(&imeis, args.enroll_concurrency, |_| bar.inc(1)) => r,
            () = &mut stop => {
                bar.abandon();
                println!("interrupted during enrollment");
                return Ok(());
            }
        };
        bar.finish();
        let credentials = enrolled.context("enrolling")?;
        FleetTransport::MutualTls {
            base: TlsBase::new(&ca)?,
            credentials,
        }
    };

    let mut settings = ModemSettings::new(&host, port, !args.plain);
    settings.master = std::sync::Arc::new(MasterConfig::for_platform(
        &host,
        port,
        !args.plain,
        Some(args.status_period),
    ));
    settings.serial = serial.clone();
    settings.reboot_delay = Duration::from_millis(args.reboot_delay_ms);
    settings.firmware_version = args.firmware_version.clone();
    let mut config = FleetConfig::new(&args.first_imei, imeis.len(), settings);
    config.connect_concurrency = args.connect_concurrency;
    config.misbehaviour = misbehaviour;
    config.models = models;
    if !args.plain {
        config.credential_cache = Some(args.cache_dir.clone());
    }
    let fleet = Fleet::start(config, transport)?;
    let counters = fleet.counters().clone();

    let scheme = if args.plain { "mqtt" } else { "mqtts" };
    println!(
        "{} modems ({}..) -> {scheme}://{host}:{port}, meter {serial}",
        imeis.len(),
        imeis[0]
    );
    if args.plain {
        println!("(--plain: no modem certificates, so TEMPORALCLIENT tunnels will fail)");
    }
    let bar = ProgressBar::new(imeis.len() as u64).with_style(bar_style(
        "connecting [{bar:40}] {pos}/{len} ({per_sec}, {elapsed}) {msg}",
    ));
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut phase_connecting = true;
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                let c = counters.snapshot();
                if phase_connecting {
                    bar.set_position(c.ever_connected);
                    bar.set_message(format!("failures {}", c.connect_failures));
                    if let Some(t) = counters.time_to_all_connected() {
                        bar.finish();
                        println!(
                            "all {} modems connected in {:.2} s ({:.0} connections/s)",
                            counters.target(),
                            t.as_secs_f64(),
                            rate(counters.target(), t)
                        );
                        phase_connecting = false;
                        bar.reset();
                        bar.set_style(bar_style("{spinner} {elapsed} {msg}"));
                    }
                } else {
                    bar.tick();
                    bar.set_message(format!(
                        "connected {}  replies {}  status {}  reconnects {}  reboots {}  tunnels {}/{}  downloads {}  installs {}",
                        c.connected, c.replies_sent, c.status_sent, c.reconnects, c.reboots,
                        c.tunnels_active, c.tunnels_opened, c.downloads_started, c.installs
                    ));
                }
            }
        }
    }
    bar.finish_and_clear();
    let c = counters.snapshot();
    let elapsed = counters.elapsed();
    fleet.shutdown().await;
    print_summary(&counters, &c, elapsed);
    Ok(())
}

fn rate(n: u64, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

fn print_summary(counters: &Counters, c: &CounterSnapshot, elapsed: Duration) {
    let line = |label: &str, value: String| println!("  {label:<25} {value}");
    let n = counters.target();
    println!(
        "summary ({:.1} s since the fleet started)",
        elapsed.as_secs_f64()
    );
    line("modems:", n.to_string());
    line("connected at the end:", c.connected.to_string());
    line("connected at least once:", c.ever_connected.to_string());
    match counters.time_to_all_connected() {
        Some(t) => {
            line(
                "time to all connected:",
                format!("{:.2} s", t.as_secs_f64()),
            );
            line("connections/s:", format!("{:.0}", rate(n, t)));
        }
        None => {
            line("time to all connected:", "not reached".into());
            line(
                "connections/s:",
                format!(
                    "{:.0} (over the whole run)",
                    rate(c.ever_connected, elapsed)
                ),
            );
        }
    }
    line("connect failures:", c.connect_failures.to_string());
    line("reconnects:", c.reconnects.to_string());
    line("reboots:", c.reboots.to_string());
    line("commands received:", c.commands_received.to_string());
    line(
        "replies sent:",
        format!("{} ({} errors)", c.replies_sent, c.error_replies),
    );
    line("status messages:", c.status_sent.to_string());
    line(
        "tunnels opened:",
        format!(
            "{} ({} failed to open, {} refused while busy, {} open at the end)",
            c.tunnels_opened, c.tunnel_failures, c.tunnels_busy, c.tunnels_active
        ),
    );
    line(
        "tunnels closed:",
        format!(
            "{} (peer_closed {}, idle_timeout {}, stopped {}, error {}, serial_closed {})",
            c.tunnels_closed(),
            c.tunnel_closed_peer,
            c.tunnel_closed_idle,
            c.tunnel_closed_stopped,
            c.tunnel_closed_error,
            c.tunnel_closed_serial
        ),
    );
    line(
        "tunnel bytes:",
        format!(
            "{} meter->platform, {} platform->meter",
            c.tunnel_bytes_up, c.tunnel_bytes_down
        ),
    );
    line(
        "firmware downloads:",
        format!(
            "{} started, {} bytes, {} resumed requests (206), {} refused (4xx)",
            c.downloads_started, c.download_bytes, c.download_resumes, c.downloads_refused
        ),
    );
    line(
        "firmware installs:",
        format!(
            "{} ({} install statuses reported)",
            c.installs, c.notifies_sent
        ),
    );
    line("dropped (queues full):", c.dropped.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("gw.example:8883").unwrap(),
            ("gw.example".into(), 8883)
        );
        assert_eq!(parse_endpoint("[::1]:1883").unwrap(), ("::1".into(), 1883));
        assert!(parse_endpoint("gw.example").is_err());
        assert!(parse_endpoint(":1").is_err());
        assert!(parse_endpoint("h:0").is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn parse(argv: &[&str]) -> Result<SimArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("sim").chain(argv.iter().copied())).map(|c| c.sim)
    }

    #[test]
    fn meter_flags() {
        let a = parse(&[]).unwrap();
        assert_eq!(serial_side(&a).unwrap(), SerialSide::Iec62056);
        let a = parse(&["--meter", "tcp:127.0.0.1:5020"]).unwrap();
        assert_eq!(
            serial_side(&a).unwrap(),
            SerialSide::Tcp("127.0.0.1:5020".into())
        );
        let a = parse(&["--meter", "serial:/dev/pts/7"]).unwrap();
        assert_eq!(
            serial_side(&a).unwrap(),
            SerialSide::Device("/dev/pts/7".into())
        );
        let a = parse(&["--serial-tcp", "localhost:502"]).unwrap();
        assert_eq!(
            serial_side(&a).unwrap(),
            SerialSide::Tcp("localhost:502".into())
        );
        let a = parse(&["--serial-device", "/dev/ttyUSB0"]).unwrap();
        assert_eq!(
            serial_side(&a).unwrap(),
            SerialSide::Device("/dev/ttyUSB0".into())
        );
        assert!(parse(&["--meter", "modbus"]).is_err());
        assert!(parse(&["--meter", "iec62056", "--serial-tcp", "h:1"]).is_err());
        assert!(parse(&["--serial-tcp", "h:1", "--serial-device", "/dev/x"]).is_err());
        assert!(serial_side(&parse(&["--serial-tcp", "nohost"]).unwrap()).is_err());
    }

    #[test]
    fn firmware_flags() {
        let a = parse(&[]).unwrap();
        assert!(models(&a).unwrap().is_empty());
        assert_eq!(a.firmware_version, FIRMWARE_VERSION);
        assert_eq!(misbehaviour(&a).unwrap(), None);

        let a = parse(&["--models", "MTX-4G,MTX-3G", "--firmware-version", "1.2.3"]).unwrap();
        assert_eq!(models(&a).unwrap(), ["MTX-4G", "MTX-3G"]);
        assert_eq!(a.firmware_version, "1.2.3");
        assert!(models(&parse(&["--models", "A,,B"]).unwrap()).is_err());
        assert!(models(&parse(&["--models", "caf\u{e9}"]).unwrap()).is_err());

        for (flag, fault) in [
            ("download-interrupt", FirmwareFault::DownloadInterrupt),
            ("boot-old", FirmwareFault::BootOld),
            ("never-back", FirmwareFault::NeverBack),
            ("corrupt", FirmwareFault::Corrupt),
            ("otap-size-mismatch", FirmwareFault::OtapSizeMismatch),
        ] {
            let a = parse(&["--misbehave", flag, "--misbehave-fraction", "0.25"]).unwrap();
            let (b, f) = misbehaviour(&a).unwrap().expect("a misbehaviour");
            assert_eq!(
                (b.firmware, b.reply, f),
                (fault, ReplyMode::Normal, 0.25),
                "{flag}"
            );
        }
        let a = parse(&["--misbehave", "never-confirm"]).unwrap();
        let (b, _) = misbehaviour(&a).unwrap().unwrap();
        assert!(b.never_confirm);
        assert_eq!(b.reply, ReplyMode::Normal);
        let a = parse(&["--misbehave", "error"]).unwrap();
        let (b, _) = misbehaviour(&a).unwrap().unwrap();
        assert_eq!(
            (b.reply, b.firmware),
            (ReplyMode::Error, FirmwareFault::None)
        );
    }
}
