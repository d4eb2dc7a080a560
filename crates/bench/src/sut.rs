//! The server under test: `callhome serve` as a child process (so its memory and CPU are
//! measured alone), a private reference broker, the bench's HTTP client and admin token,
//! and the enrolled, cached simulated fleet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callhome_core::Imei;
use callhome_sim::config::MasterConfig;
use callhome_sim::*;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::fleet::FleetArgs;
use crate::fleet::*;
use crate::procfs::*;

/// The `callhome` binary to start: `$CALLHOME_BIN`, else the one beside this executable
/// (`cargo build --release -p callhome -p callhome-bench` puts both in `target/release`).
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CALLHOME_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let p = me.with_file_name(format!("callhome{}", std::env::consts::EXE_SUFFIX));
    if !p.is_file() {
        bail!(
            "no callhome binary at {} (build it with `cargo build --release -p callhome`, or set CALLHOME_BIN)",
            p.display()
        );
    }
    Ok(p)
}

pub struct ServerProcess {
    pub child: Child,
    pub pid: u32,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

impl ServerProcess {
    /// Starts `callhome serve` on 127.0.0.1 port 0 and waits for its "listening" line.
    pub async fn start(
        args: &FleetArgs,
        data_dir: &Path,
        admin_password: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(args, data_dir, admin_password, log, "").await
    }

    /// [`Self::start`] with more settings appended to the settings file (whole TOML
    /// tables other than the ones written here: `[mqtt]`, `[tunnel]`, `[http]`,
    /// `[device_http]`).
    pub async fn start_with(
        args: &FleetArgs,
        data_dir: &Path,
        admin_password: &str,
        log: &Path,
        extra_settings: &str,
    ) -> anyhow::Result<Self> {
        let exe = server_binary()?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the server log {}", log.display()))?;
        // Every simulated modem dials from 127.0.0.1: lift the per-address caps (meant for
        // real fleets, one address per modem) to the global ones.
        let settings = log.with_extension("toml");
        std::fs::write(
            &settings,
            format!(
                "[mqtt]\nmax_connections_per_address = 10000000\nmax_handshakes_per_address = 100000\n\
                 [tunnel]\nmax_connections_per_address = 10000000\nmax_handshakes_per_address = 100000\n\
                 [http]\nmax_connections_per_address = 1000000\n\
                 [device_http]\nmax_connections_per_address = 10000000\nmax_handshakes_per_address = 100000\n\
                 {extra_settings}"
            ),
        )
        .with_context(|| format!("writing the server settings {}", settings.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&settings)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
            .args([
                "--tunnel",
                "127.0.0.1:0",
                "--device-http",
                "127.0.0.1:0",
                "--log",
                &args.server_log,
            ])
            .env("CALLHOME_ADMIN_PASSWORD", admin_password)
            .env_remove("CALLHOME_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        match &args.database_url {
            Some(url) => {
                cmd.arg("--database-url").arg(url);
            }
            None => {
                cmd.env_remove("CALLHOME_DATABASE_URL");
            }
        }
        let mut child = cmd.spawn().context("starting callhome serve")?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("callhome: listening ") {
                    return Ok::<_, anyhow::Error>(Some(rest.to_owned()));
                }
            }
            Ok(None)
        })
        .await;
        let rest = match found {
            Ok(Ok(Some(rest))) => rest,
            Ok(Ok(None)) => bail!("the server exited before listening; see {}", log.display()),
            Ok(Err(e)) => return Err(e.context("reading the server's output")),
            Err(_) => bail!(
                "the server did not listen within 120 s; see {}",
                log.display()
            ),
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |key: &str| -> anyhow::Result<SocketAddr> {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key}= in {rest:?}"))?
                .parse()
                .with_context(|| format!("{key} address in {rest:?}"))
        };
        Ok(Self {
            pid,
            http: addr("http")?,
            mqtt: addr("mqtt")?,
            child,
        })
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGTERM, then SIGKILL if it has not exited within 30 s.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            eprintln!("bench: the server did not stop within 30 s of SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// A Mosquitto started for one run: plain TCP on 127.0.0.1, anonymous, no persistence,
/// its log on standard error (to a file).
pub struct PrivateMosquitto {
    pub child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl PrivateMosquitto {
    pub async fn start(cache_dir: &Path, log: &Path) -> anyhow::Result<Self> {
        // A free port: bind port 0, note it, release it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let conf = cache_dir.join("mosquitto-bench.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nmax_connections -1\n"
            ),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the mosquitto log {}", log.display()))?;
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .context("starting mosquitto")?;
        let pid = child.id().context("mosquitto exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "mosquitto did not listen on {addr} within 10 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, pid, addr })
    }

    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(75))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(512)
        .build()
        .context("building the HTTP client")
}

pub async fn admin_token(
    client: &reqwest::Client,
    base: &str,
    password: &str,
) -> anyhow::Result<String> {
    let resp = client
        .post(format!("{base}/api/v1/auth/token"))
        .json(&serde_json::json!({"username": "admin", "password": password}))
        .send()
        .await
        .context("POST /api/v1/auth/token")?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "logging in as admin: HTTP {status} {body}; the server data directory was made \
             with another admin password: delete the cache directory or give --server-data-dir"
        );
    }
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the login answer")
}

pub async fn scrape(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let resp = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .context("GET /metrics")?;
    resp.text().await.context("reading /metrics")
}

/// The value of an unlabelled sample `name` in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub struct Prepared {
    pub imeis: Vec<Imei>,
    pub credentials: Vec<Credentials>,
    pub ca_pem: String,
    pub admin_password: String,
    pub data_dir: PathBuf,
}

pub fn admin_password(cache_dir: &Path) -> anyhow::Result<String> {
    let file = cache_dir.join("bench-admin-password");
    if let Ok(p) = std::fs::read_to_string(&file) {
        return Ok(p.trim().to_owned());
    }
    let p = callhome::server::generate_password();
    callhome_ca::write_secret_file(&file, format!("{p}\n").as_bytes())?;
    Ok(p)
}

/// Enrolls the fleet (or loads it from the cache) against a server started for that
/// alone, so enrollment leaves nothing in the memory of the servers measured later.
pub async fn prepare(
    args: &FleetArgs,
    enrollment: &mut BTreeMap<&'static str, f64>,
) -> anyhow::Result<Prepared> {
    std::fs::create_dir_all(&args.cache_dir)
        .with_context(|| format!("creating {}", args.cache_dir.display()))?;
    let cache_dir = args.cache_dir.canonicalize()?;
    let data_dir = args
        .server_data_dir
        .clone()
        .unwrap_or_else(|| cache_dir.join("server"));
    let certs_dir = cache_dir.join("certs");
    let password = admin_password(&cache_dir)?;
    let imeis = fleet_imeis(&args.first_imei, args.modems)?;

    let server = ServerProcess::start(
        args,
        &data_dir,
        &password,
        &cache_dir.join("server-enroll.log"),
    )
    .await?;
    let result = async {
        let client = http_client()?;
        let token = admin_token(&client, &server.base(), &password).await?;
        let enroller = Enroller::new(&server.base(), &token, &certs_dir, None)?;
        let ca = enroller
            .ca_certificate()
            .await
            .context("fetching the CA certificate")?;
        let cached_before = imeis
            .iter()
            .filter(|i| certs_dir.join(format!("{i}.crt.pem")).exists())
            .count();
        eprintln!(
            "bench: enrolling {} modems ({} certificate files cached in {})",
            imeis.len(),
            cached_before,
            certs_dir.display()
        );
        let done = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let total = imeis.len();
        let creds = enroller
            .enroll_all(&imeis, args.enroll_concurrency, |_| {
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if n.is_multiple_of(5000) && n < total {
                    eprintln!("bench:   {n}/{total} enrolled or loaded");
                }
            })
            .await
            .context("enrolling")?;
        let t = started.elapsed().as_secs_f64();
        enrollment.insert("modems", total as f64);
        enrollment.insert("cached_files_before", cached_before as f64);
        enrollment.insert("seconds", t);
        enrollment.insert("per_s", total as f64 / t.max(1e-9));
        eprintln!(
            "bench: enrollment (not part of any connect figure): {total} modems in {t:.1} s \
             ({:.0}/s; {cached_before} had cached files)",
            total as f64 / t.max(1e-9)
        );
        anyhow::Ok((creds, ca))
    }
    .await;
    server.stop().await;
    let (credentials, ca_pem) = result?;
    Ok(Prepared {
        imeis,
        credentials,
        ca_pem,
        admin_password: password,
        data_dir,
    })
}

pub fn check_limits(args: &FleetArgs) -> anyhow::Result<()> {
    if args.modems == 0 {
        bail!("--modems must be at least 1");
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.commands > 0 && !(args.command_rate > 0.0 && args.command_rate <= 10_000.0) {
        bail!("--command-rate must be between 0 and 10000 per second");
    }
    if let Some(r) = args.reference_broker
        && !r.ip().is_loopback()
    {
        bail!("--reference-broker must be a loopback address (127.0.0.0/8 or ::1)");
    }
    let (lo, hi) = ephemeral_ports();
    let ports = hi.saturating_sub(lo) + 1;
    if args.modems as u64 + PORT_MARGIN > ports {
        bail!(
            "{} modems need as many local ports towards one address and port, and \
             net.ipv4.ip_local_port_range ({lo}-{hi}) has {ports} (less {PORT_MARGIN} kept \
             free). Several source addresses (127.0.0.x) would multiply that, but the \
             simulator's MQTT client (rumqttc 0.25) cannot bind a local address (its \
             NetworkOptions only offer bind_device, SO_BINDTODEVICE), so one source address \
             is all this bench can use. Use at most {} modems, or widen the port range.",
            args.modems,
            ports.saturating_sub(PORT_MARGIN)
        );
    }
    Ok(())
}

pub fn modem_settings(host: &str, port: u16, tls: bool, args: &FleetArgs) -> ModemSettings {
    let mut s = ModemSettings::new(host, port, tls);
    s.master = Arc::new(MasterConfig::for_platform(
        host,
        port,
        tls,
        Some(STATUS_PERIOD_S),
    ));
    s.status_on_connect = !args.no_connect_status;
    s.tcp_nodelay = !args.modem_nagle;
    s.reboot_delay = Duration::from_millis(args.reboot_delay_ms);
    s
}
