//! `callhome-bench fleet`: connection and command benchmarks of a real server process
//! with a simulated fleet, and the same fleet against a reference MQTT broker.
//!
//! What one run does:
//!
//! 1. Starts `callhome serve` as a child process (the `callhome` binary beside this one) on 127.0.0.1 port 0,
//!    with its data directory in the cache directory, so its memory is measured alone.
//! 2. Connects N simulated modems over mutual TLS (keys and certificates enrolled once
//!    through the API, before the runs, and cached) and measures the time until the
//!    server's `callhome_mqtt_connections` gauge reaches N, and until every modem has
//!    its SUBACK (client side); the server's and this process's RSS and CPU time.
//! 3. Sends M `AT` commands at R per second to random modems through
//!    `POST /api/v1/devices/{imei}/commands?wait_s=30` and measures client and
//!    server-side (`completed_at - created_at`) latency.
//! 4. Disconnects the fleet, stops the server, and connects the same fleet over plain
//!    TCP to the reference broker (Mosquitto), measuring its RSS and CPU time.
//!
//! Everything stays on 127.0.0.0/8; every wait is bounded.

use crate::procfs::*;
use crate::stats::{median, percentile};
use crate::sut::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callhome_core::Imei;
use callhome_sim::{Fleet, FleetConfig, FleetTransport, TlsBase};
use rand::Rng as _;
use serde::Serialize;

/// `callhome-bench fleet ...`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Number of simulated modems.
    #[arg(long)]
    pub modems: usize,
    /// Commands per second in the command round-trip phase.
    #[arg(long, value_name = "R", default_value_t = 20.0)]
    pub command_rate: f64,
    /// Commands sent in the command round-trip phase (0 skips it).
    #[arg(long, value_name = "M", default_value_t = 200)]
    pub commands: usize,
    /// A reference MQTT broker (plain TCP, on 127.0.0.0/8) to connect the same fleet to,
    /// e.g. Mosquitto on 127.0.0.1:1883.
    #[arg(long, value_name = "HOST:PORT")]
    pub reference_broker: Option<SocketAddr>,
    /// Instead of a running broker, start a private `mosquitto` (from PATH) for each run
    /// on 127.0.0.1 and a free port: a fresh process, so its RSS growth is not hidden by
    /// heap a long-running broker already holds, and with this bench's open-files limit.
    #[arg(long, conflicts_with = "reference_broker")]
    pub spawn_mosquitto: bool,
    /// Repeat the whole measurement this many times and report medians.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub runs: usize,
    /// Where enrolled keys and certificates, the server's data directory, the bench's
    /// admin password and the server logs are kept between invocations.
    #[arg(long, value_name = "DIR", default_value = "callhome-bench-cache")]
    pub cache_dir: PathBuf,
    /// The server's data directory (default: `server` in the cache directory; it must
    /// persist with the cache, or every certificate is enrolled again). The global
    /// `--data-dir` and `CALLHOME_DATA_DIR` are deliberately not used: the bench registers
    /// thousands of devices and must not touch a real installation's data.
    #[arg(long = "server-data-dir", value_name = "DIR")]
    pub server_data_dir: Option<PathBuf>,
    /// First 14 IMEI digits; the fleet counts up from there.
    #[arg(long, value_name = "BODY14", default_value = "35693804000000")]
    pub first_imei: String,
    /// Connection attempts (TCP + handshake + CONNACK) in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Enrollments in progress at once.
    #[arg(long, default_value_t = 32)]
    pub enroll_concurrency: usize,
    /// Give up on connecting the fleet after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub connect_timeout: u64,
    /// Do not send a status message as soon as each modem is subscribed (by default
    /// every modem does, as the real ones do; on Callhome each is one database insert).
    #[arg(long)]
    pub no_connect_status: bool,
    /// Leave Nagle's algorithm on in the simulated modems (rumqttc's default). By default
    /// the bench sets TCP_NODELAY, because with Nagle every command round trip includes
    /// the server's delayed ACK (about 40 ms): the modem's reply waits behind its PUBACK.
    #[arg(long)]
    pub modem_nagle: bool,
    /// How long a simulated modem stays offline after answering the reboot command
    /// before it connects again, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub reboot_delay_ms: u64,
    /// The server's log filter (`info` is what `callhome serve` runs with by default;
    /// its log goes to a file in the cache directory).
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub server_log: String,
    /// The server's database (default: SQLite in its data directory).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Print the results as JSON on standard output (the tables go to standard error).
    #[arg(long)]
    pub json: bool,
}

/// Seconds between status messages of the simulated modems (the seed's `DNS_period`).
pub const STATUS_PERIOD_S: u64 = 600;
/// How often the server's gauge is read while the fleet connects.
pub const POLL: Duration = Duration::from_millis(50);
/// Ports kept free for everything else on the machine when checking the port range.
pub const PORT_MARGIN: u64 = 1000;
/// File descriptors a process needs besides one per connection (database, listeners,
/// HTTP clients, logs).
pub const NOFILE_MARGIN: u64 = 256;

// ---------------------------------------------------------------------------------------
// Results

/// One run's figures, by key (see [`TABLE`] and [`COMMAND_TABLE`]), plus notes.
#[derive(Debug, Default, Serialize)]
struct Run {
    run: usize,
    load_before: String,
    load_after: String,
    values: BTreeMap<&'static str, f64>,
    notes: Vec<String>,
    /// Every 5 s of each connect phase: seconds, connected (server gauge for Callhome,
    /// SUBACKs for the reference), connections/s in the interval, server (or broker)
    /// and bench CPU cores used in the interval.
    timeline: BTreeMap<&'static str, Vec<[f64; 5]>>,
}

impl Run {
    fn set(&mut self, key: &'static str, v: f64) {
        if v.is_finite() {
            self.values.insert(key, v);
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// Everything printed with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    machine: BTreeMap<&'static str, String>,
    enrollment: BTreeMap<&'static str, f64>,
    runs: Vec<Run>,
    median: BTreeMap<&'static str, f64>,
}

/// A table row: label, Callhome key, reference key, whether a ratio makes sense.
type Row = (&'static str, &'static str, Option<&'static str>, bool);

const TABLE: &[Row] = &[
    ("modems connected", "ch.modems", Some("ref.modems"), false),
    (
        "time to all connected, client SUBACK (s)",
        "ch.t_client_s",
        Some("ref.t_client_s"),
        true,
    ),
    (
        "time to all online, server gauge (s)",
        "ch.t_server_s",
        None,
        false,
    ),
    (
        "connections/s, client side",
        "ch.conn_per_s_client",
        Some("ref.conn_per_s_client"),
        true,
    ),
    (
        "connections/s, server side",
        "ch.conn_per_s_server",
        None,
        false,
    ),
    (
        "server RSS before (MiB)",
        "ch.server_rss_before_mib",
        Some("ref.broker_rss_before_mib"),
        false,
    ),
    (
        "server RSS all connected (MiB)",
        "ch.server_rss_after_mib",
        Some("ref.broker_rss_after_mib"),
        true,
    ),
    (
        "server RSS per connection (KiB)",
        "ch.server_rss_per_conn_kib",
        Some("ref.broker_rss_per_conn_kib"),
        true,
    ),
    (
        "server CPU while connecting (s)",
        "ch.server_cpu_s",
        Some("ref.broker_cpu_s"),
        true,
    ),
    (
        "server CPU per connection (ms)",
        "ch.server_cpu_per_conn_ms",
        Some("ref.broker_cpu_per_conn_ms"),
        true,
    ),
    (
        "bench RSS per connection, run 1 only (KiB)",
        "ch.client_rss_per_conn_kib",
        None,
        false,
    ),
    (
        "bench CPU while connecting (s)",
        "ch.client_cpu_s",
        Some("ref.client_cpu_s"),
        true,
    ),
    (
        "CPU cores used, server + bench",
        "ch.cores_used",
        Some("ref.cores_used"),
        true,
    ),
    (
        "connect failures (retried)",
        "ch.connect_failures",
        Some("ref.connect_failures"),
        false,
    ),
];

const COMMAND_TABLE: &[(&str, &str)] = &[
    ("commands sent", "cmd.sent"),
    ("succeeded", "cmd.ok"),
    ("failed", "cmd.failures"),
    ("achieved rate (/s)", "cmd.rate"),
    ("client latency p50 (ms)", "cmd.client_p50_ms"),
    ("client latency p99 (ms)", "cmd.client_p99_ms"),
    ("client latency max (ms)", "cmd.client_max_ms"),
    ("server completed-created p50 (ms)", "cmd.server_p50_ms"),
    ("server completed-created p99 (ms)", "cmd.server_p99_ms"),
    ("server completed-created max (ms)", "cmd.server_max_ms"),
    (
        "  of which sent-created p50 (ms)",
        "cmd.sent_created_p50_ms",
    ),
    (
        "  of which sent-created p99 (ms)",
        "cmd.sent_created_p99_ms",
    ),
    (
        "  of which completed-sent p50 (ms)",
        "cmd.completed_sent_p50_ms",
    ),
    (
        "  of which completed-sent p99 (ms)",
        "cmd.completed_sent_p99_ms",
    ),
];

fn medians(runs: &[Run]) -> BTreeMap<&'static str, f64> {
    let mut keys: Vec<&'static str> = runs.iter().flat_map(|r| r.values.keys().copied()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| median(runs.iter().filter_map(|r| r.get(k))).map(|m| (k, m)))
        .collect()
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v.abs() >= 100.0 || v == v.trunc() => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn render_tables(title: &str, get: &dyn Fn(&str) -> Option<f64>, reference: bool) -> String {
    let mut s = String::new();
    s.push_str(&format!("{title}\n"));
    let (a, b) = ("Callhome (mTLS)", "Mosquitto (TCP)");
    s.push_str(&format!(
        "  {:<42} {:>16} {:>16} {:>10}\n",
        "connect phase", a, b, "ratio C/M"
    ));
    for (label, ch, rf, ratio) in TABLE {
        let c = get(ch);
        let m = rf.and_then(|k| if reference { get(k) } else { None });
        let r = match (c, m) {
            (Some(c), Some(m)) if *ratio && m != 0.0 => format!("{:.2}", c / m),
            _ => "-".to_owned(),
        };
        s.push_str(&format!(
            "  {label:<42} {:>16} {:>16} {r:>10}\n",
            fmt_num(c),
            fmt_num(m)
        ));
    }
    if get("cmd.sent").is_some() {
        s.push_str(&format!(
            "  {:<42} {:>16}\n",
            "command round trip (Callhome)", ""
        ));
        for (label, k) in COMMAND_TABLE {
            s.push_str(&format!("  {label:<42} {:>16}\n", fmt_num(get(k))));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// /proc readings

/// Prints and records connect progress every 5 s.
struct Progress {
    label: &'static str,
    t0: Instant,
    ticks: f64,
    server: Option<u32>,
    next: Instant,
    last: (Instant, f64, f64, f64),
    rows: Vec<[f64; 5]>,
}

impl Progress {
    const EVERY: Duration = Duration::from_secs(5);

    fn new(label: &'static str, t0: Instant, ticks: f64, server: Option<u32>) -> Self {
        let cpu = |pid: Option<u32>| pid.and_then(|p| cpu_s(p, ticks)).unwrap_or(0.0);
        Self {
            label,
            t0,
            ticks,
            server,
            next: t0 + Self::EVERY,
            last: (t0, 0.0, cpu(server), cpu(Some(std::process::id()))),
            rows: Vec::new(),
        }
    }

    fn tick(&mut self, connected: f64, target: usize, failures: u64) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + Self::EVERY;
        let cpu = |pid: Option<u32>| pid.and_then(|p| cpu_s(p, self.ticks)).unwrap_or(0.0);
        let (server_cpu, bench_cpu) = (cpu(self.server), cpu(Some(std::process::id())));
        let dt = now.duration_since(self.last.0).as_secs_f64().max(1e-9);
        let row = [
            now.duration_since(self.t0).as_secs_f64(),
            connected,
            (connected - self.last.1) / dt,
            (server_cpu - self.last.2) / dt,
            (bench_cpu - self.last.3) / dt,
        ];
        eprintln!(
            "bench:   {} {:>4.0} s: {:>6.0}/{target} connected, {:>5.0}/s, server {:.2} \
             cores, bench {:.2} cores, {failures} connect failures, load {}",
            self.label,
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            loadavg()
        );
        self.rows.push(row);
        self.last = (now, connected, server_cpu, bench_cpu);
    }
}

// ---------------------------------------------------------------------------------------
// The server child process

// ---------------------------------------------------------------------------------------
// HTTP helpers

/// Non-zero samples (labelled or not) of the gateway's error counters.
fn gateway_trouble(text: &str) -> Vec<String> {
    const NAMES: &[&str] = &[
        "callhome_mqtt_handshake_failures_total",
        "callhome_mqtt_rejected_total",
        "callhome_mqtt_accept_errors_total",
        "callhome_mqtt_takeovers_total",
        "callhome_mqtt_replies_dropped_total",
    ];
    text.lines()
        .filter(|l| NAMES.iter().any(|n| l.starts_with(n)))
        .filter(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v != 0.0)
        })
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------
// The benchmark

pub async fn fleet(args: FleetArgs) -> anyhow::Result<()> {
    callhome_sim::install_crypto_provider();
    check_limits(&args)?;
    let n = args.modems;
    let (soft, hard) = raise_nofile(n as u64 + 4096);
    if soft < n as u64 + NOFILE_MARGIN {
        bail!(
            "RLIMIT_NOFILE is {soft} (hard {hard}) and could not be raised (raising the hard \
             limit needs CAP_SYS_RESOURCE): this process holds one socket per modem and the \
             server, which inherits the limit, one per connection, so at most {} modems fit",
            soft.saturating_sub(NOFILE_MARGIN)
        );
    }
    let ticks = clock_ticks();

    let mut machine = BTreeMap::new();
    machine.insert(
        "cpus",
        std::thread::available_parallelism().map_or_else(|_| "?".into(), |c| c.to_string()),
    );
    machine.insert(
        "mem_total",
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_default(),
    );
    machine.insert(
        "kernel",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    );
    let (lo, hi) = ephemeral_ports();
    machine.insert("ip_local_port_range", format!("{lo}-{hi}"));
    machine.insert("nofile_bench_and_server", format!("{soft}/{hard}"));
    let mosquitto = args.reference_broker.and_then(|_| pgrep("mosquitto"));
    if let Some(pid) = mosquitto {
        machine.insert("mosquitto_pid", pid.to_string());
        if let Some(l) = nofile_of(pid) {
            machine.insert("mosquitto_nofile", l.to_string());
        }
    }
    machine.insert("load_at_start", loadavg());
    if args.spawn_mosquitto {
        let v = std::process::Command::new("mosquitto")
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.lines().next().map(str::to_owned))
            .context("--spawn-mosquitto: cannot run mosquitto from PATH")?;
        machine.insert("mosquitto", v);
    }
    for (k, v) in &machine {
        eprintln!("bench: {k}: {v}");
    }

    let mut enrollment = BTreeMap::new();
    let prepared = prepare(&args, &mut enrollment).await?;

    let mut runs = Vec::with_capacity(args.runs);
    for k in 1..=args.runs {
        eprintln!("bench: run {k}/{} (load {})", args.runs, loadavg());
        let run = one_run(&args, &prepared, k, ticks, mosquitto).await?;
        let text = render_tables(
            &format!(
                "run {k}: {n} modems; load before {} after {}",
                run.load_before, run.load_after
            ),
            &|key| run.get(key),
            args.reference_broker.is_some() || args.spawn_mosquitto,
        );
        let mut text = text;
        for note in &run.notes {
            text.push_str(&format!("  note: {note}\n"));
        }
        // With --json, standard output carries the JSON document alone.
        if args.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
        runs.push(run);
    }
    let median = medians(&runs);
    let report = Report {
        machine,
        enrollment,
        runs,
        median,
    };
    let summary = render_tables(
        &format!(
            "median of {} run(s), {n} modems (loads: {})",
            report.runs.len(),
            report
                .runs
                .iter()
                .map(|r| format!("{} -> {}", r.load_before, r.load_after))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        &|key| report.median.get(key).copied(),
        args.reference_broker.is_some() || args.spawn_mosquitto,
    );
    let caveat = "  Callhome: MQTT over mutual TLS (a full handshake per modem, no resumption, \
                  client certificate checked against the CA and CRL, device looked up and \
                  marked online in the database). Mosquitto: plain TCP, anonymous, no TLS.\n";
    if args.json {
        eprint!("{summary}{caveat}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{summary}{caveat}");
    }
    Ok(())
}

async fn one_run(
    args: &FleetArgs,
    p: &Prepared,
    k: usize,
    ticks: f64,
    mosquitto: Option<u32>,
) -> anyhow::Result<Run> {
    let mut run = Run {
        run: k,
        load_before: loadavg(),
        ..Run::default()
    };
    let log = args.cache_dir.join(format!("server-run{k}.log"));
    let server = ServerProcess::start(args, &p.data_dir, &p.admin_password, &log).await?;
    eprintln!(
        "bench:   server pid {} (http {}, mqtt {}); this process pid {}",
        server.pid,
        server.http,
        server.mqtt,
        std::process::id()
    );
    let outcome = callhome_phase(args, p, &server, ticks, &mut run).await;
    server.stop().await;
    outcome?;

    if let Some(broker) = args.reference_broker {
        reference_phase(args, broker, ticks, mosquitto, &mut run).await?;
    } else if args.spawn_mosquitto {
        let log = args.cache_dir.join(format!("mosquitto-run{k}.log"));
        let broker = PrivateMosquitto::start(&args.cache_dir, &log).await?;
        run.notes.push(format!(
            "reference: private mosquitto (pid {}) on {}, started for this run",
            broker.pid, broker.addr
        ));
        let outcome = reference_phase(args, broker.addr, ticks, Some(broker.pid), &mut run).await;
        broker.stop().await;
        outcome?;
    }
    run.load_after = loadavg();
    run.notes.push(format!("server log: {}", log.display()));
    Ok(run)
}

/// Waits until process `pid` uses no CPU for 200 ms, at most `max`.
async fn settle(pid: u32, ticks: f64, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = cpu_s(pid, ticks);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = cpu_s(pid, ticks);
        if now == last {
            return;
        }
        last = now;
    }
}

async fn callhome_phase(
    args: &FleetArgs,
    p: &Prepared,
    server: &ServerProcess,
    ticks: f64,
    run: &mut Run,
) -> anyhow::Result<()> {
    let n = args.modems;
    let me = std::process::id();
    let client = http_client()?;
    let base = server.base();
    let token = admin_token(&client, &base, &p.admin_password).await?;
    // Its first sweeper pass and the like.
    settle(server.pid, ticks, Duration::from_secs(3)).await;

    let host = server.mqtt.ip().to_string();
    let mut config = FleetConfig::new(
        &args.first_imei,
        n,
        modem_settings(&host, server.mqtt.port(), true, args),
    );
    config.connect_concurrency = args.connect_concurrency;
    let transport = FleetTransport::MutualTls {
        base: TlsBase::new(&p.ca_pem)?,
        credentials: p.credentials.clone(),
    };

    let server_rss0 = rss_kib(server.pid).unwrap_or(0);
    let server_cpu0 = cpu_s(server.pid, ticks).unwrap_or(0.0);
    let client_rss0 = rss_kib(me).unwrap_or(0);
    let client_cpu0 = cpu_s(me, ticks).unwrap_or(0.0);
    let t0 = Instant::now();
    let fleet = Fleet::start(config, transport)?;
    let counters = fleet.counters().clone();
    let deadline = t0 + Duration::from_secs(args.connect_timeout);
    let mut t_server = None;
    let mut online = 0.0;
    let mut progress = Progress::new("callhome", t0, ticks, Some(server.pid));
    loop {
        if t_server.is_none()
            && let Ok(text) = scrape(&client, &base).await
        {
            online = sample(&text, "callhome_mqtt_connections").unwrap_or(0.0);
            if online >= n as f64 {
                t_server = Some(t0.elapsed());
            }
        }
        let t_client = counters.time_to_all_connected();
        if t_server.is_some() && t_client.is_some() {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        progress.tick(online, n, counters.snapshot().connect_failures);
        tokio::time::sleep(POLL).await;
    }
    let server_rss1 = rss_kib(server.pid).unwrap_or(0);
    let server_cpu1 = cpu_s(server.pid, ticks).unwrap_or(0.0);
    let client_rss1 = rss_kib(me).unwrap_or(0);
    let client_cpu1 = cpu_s(me, ticks).unwrap_or(0.0);
    let snap = counters.snapshot();
    let t_client = counters.time_to_all_connected();

    let nf = n as f64;
    run.set("ch.modems", snap.ever_connected as f64);
    if let Some(t) = t_client {
        run.set("ch.t_client_s", t.as_secs_f64());
        run.set("ch.conn_per_s_client", nf / t.as_secs_f64());
    }
    if let Some(t) = t_server {
        run.set("ch.t_server_s", t.as_secs_f64());
        run.set("ch.conn_per_s_server", nf / t.as_secs_f64());
    }
    let connected = (snap.ever_connected as f64).max(1.0);
    run.set("ch.server_rss_before_mib", server_rss0 as f64 / 1024.0);
    run.set("ch.server_rss_after_mib", server_rss1 as f64 / 1024.0);
    run.set(
        "ch.server_rss_per_conn_kib",
        (server_rss1 as f64 - server_rss0 as f64) / connected,
    );
    run.set("ch.server_cpu_s", server_cpu1 - server_cpu0);
    run.set(
        "ch.server_cpu_per_conn_ms",
        (server_cpu1 - server_cpu0) * 1000.0 / connected,
    );
    // This process lives on across runs and its allocator reuses what an earlier fleet
    // freed: only the first run's growth says what a modem costs the simulator.
    if run.run == 1 {
        run.set(
            "ch.client_rss_per_conn_kib",
            (client_rss1 as f64 - client_rss0 as f64) / connected,
        );
    }
    run.set("ch.client_cpu_s", client_cpu1 - client_cpu0);
    if let Some(t) = t_client {
        run.set(
            "ch.cores_used",
            (server_cpu1 - server_cpu0 + client_cpu1 - client_cpu0) / t.as_secs_f64(),
        );
    }
    run.set("ch.connect_failures", snap.connect_failures as f64);
    run.timeline.insert("callhome", progress.rows);
    run.set("ch.reconnects", snap.reconnects as f64);
    if let Some(hwm) = status_kib(server.pid, "VmHWM") {
        run.set("ch.server_hwm_mib", hwm as f64 / 1024.0);
    }
    if t_server.is_none() || t_client.is_none() {
        run.notes.push(format!(
            "Callhome: not all {n} modems connected within {} s (server saw {online:.0}, \
             client {}); the command phase is skipped",
            args.connect_timeout, snap.ever_connected
        ));
    } else if args.commands > 0 {
        commands_phase(args, p, &client, &base, &token, run).await;
    }
    if let Ok(text) = scrape(&client, &base).await {
        for line in gateway_trouble(&text) {
            run.notes.push(format!("Callhome /metrics: {line}"));
        }
    }
    fleet.shutdown().await;
    // Let the server record every disconnection before it is stopped: it stops counting a
    // session before writing its disconnection, so a SIGTERM now would close the database
    // under those writes ("could not record disconnection ... closed pool").
    settle(server.pid, ticks, Duration::from_secs(60)).await;
    Ok(())
}

#[derive(Debug)]
struct CommandOutcome {
    client_ms: f64,
    server_ms: Option<f64>,
    /// `sent_at - created_at` and `completed_at - sent_at`.
    split_ms: Option<(f64, f64)>,
    failure: Option<String>,
}

async fn one_command(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    imei: &Imei,
) -> CommandOutcome {
    let started = Instant::now();
    let result = async {
        let resp = client
            .post(format!("{base}/api/v1/devices/{imei}/commands?wait_s=30"))
            .bearer_auth(token)
            .json(&serde_json::json!({"command": "AT", "timeout_s": 30}))
            .send()
            .await
            .map_err(|e| format!("POST: {e}"))?;
        let mut status = resp.status().as_u16();
        let mut body: serde_json::Value =
            resp.json().await.map_err(|e| format!("POST body: {e}"))?;
        if status == 202 {
            let id = body["id"].as_str().unwrap_or_default().to_owned();
            let resp = client
                .get(format!("{base}/api/v1/commands/{id}?wait_s=30"))
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| format!("GET: {e}"))?;
            status = resp.status().as_u16();
            body = resp.json().await.map_err(|e| format!("GET body: {e}"))?;
        }
        Ok::<_, String>((status, body))
    }
    .await;
    let client_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, body) = match result {
        Ok(r) => r,
        Err(e) => {
            return CommandOutcome {
                client_ms,
                server_ms: None,
                split_ms: None,
                failure: Some(e),
            };
        }
    };
    let ts = |k: &str| {
        body[k].as_str().and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    };
    let ms = |d: time::Duration| d.as_seconds_f64() * 1000.0;
    let (created, sent, completed) = (ts("created_at"), ts("sent_at"), ts("completed_at"));
    let server_ms = match (created, completed) {
        (Some(a), Some(b)) => Some(ms(b - a)),
        _ => None,
    };
    let split_ms = match (created, sent, completed) {
        (Some(a), Some(s), Some(b)) => Some((ms(s - a), ms(b - s))),
        _ => None,
    };
    let state = body["state"].as_str().unwrap_or("?");
    let failure = if status != 200 {
        Some(format!("HTTP {status} (state {state})"))
    } else if state != "succeeded" {
        Some(format!("state {state}"))
    } else {
        None
    };
    CommandOutcome {
        client_ms,
        server_ms,
        split_ms,
        failure,
    }
}

async fn commands_phase(
    args: &FleetArgs,
    p: &Prepared,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    run: &mut Run,
) {
    let m = args.commands;
    eprintln!(
        "bench:   {m} commands at {}/s to random modems",
        args.command_rate
    );
    let interval = Duration::from_secs_f64(1.0 / args.command_rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(m);
    for i in 0..m {
        tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        let imei = p.imeis[rand::rng().random_range(0..p.imeis.len())].clone();
        let (client, base, token) = (client.clone(), base.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            one_command(&client, &base, &token, &imei).await
        }));
    }
    let mut outcomes = Vec::with_capacity(m);
    for t in tasks {
        match t.await {
            Ok(o) => outcomes.push(o),
            Err(e) => outcomes.push(CommandOutcome {
                client_ms: 0.0,
                server_ms: None,
                split_ms: None,
                failure: Some(format!("task: {e}")),
            }),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    let mut client_ms = Vec::new();
    let mut server_ms = Vec::new();
    let mut queued_ms = Vec::new();
    let mut modem_ms = Vec::new();
    for o in &outcomes {
        match &o.failure {
            Some(f) => *failures.entry(f.clone()).or_default() += 1,
            None => {
                client_ms.push(o.client_ms);
                if let Some(s) = o.server_ms {
                    server_ms.push(s);
                }
                if let Some((q, m)) = o.split_ms {
                    queued_ms.push(q);
                    modem_ms.push(m);
                }
            }
        }
    }
    client_ms.sort_by(f64::total_cmp);
    server_ms.sort_by(f64::total_cmp);
    queued_ms.sort_by(f64::total_cmp);
    modem_ms.sort_by(f64::total_cmp);
    run.set("cmd.sent", m as f64);
    run.set("cmd.ok", client_ms.len() as f64);
    run.set("cmd.failures", (m - client_ms.len()) as f64);
    run.set("cmd.rate", m as f64 / elapsed.max(1e-9));
    for (key, v) in [
        ("cmd.client_p50_ms", percentile(&client_ms, 0.50)),
        ("cmd.client_p99_ms", percentile(&client_ms, 0.99)),
        ("cmd.client_max_ms", client_ms.last().copied()),
        ("cmd.server_p50_ms", percentile(&server_ms, 0.50)),
        ("cmd.server_p99_ms", percentile(&server_ms, 0.99)),
        ("cmd.server_max_ms", server_ms.last().copied()),
        ("cmd.sent_created_p50_ms", percentile(&queued_ms, 0.50)),
        ("cmd.sent_created_p99_ms", percentile(&queued_ms, 0.99)),
        ("cmd.completed_sent_p50_ms", percentile(&modem_ms, 0.50)),
        ("cmd.completed_sent_p99_ms", percentile(&modem_ms, 0.99)),
    ] {
        if let Some(v) = v {
            run.set(key, v);
        }
    }
    for (f, count) in failures {
        run.notes.push(format!("command failures: {count} x {f}"));
    }
}

async fn reference_phase(
    args: &FleetArgs,
    broker: SocketAddr,
    ticks: f64,
    pid: Option<u32>,
    run: &mut Run,
) -> anyhow::Result<()> {
    let me = std::process::id();
    let mut n = args.modems;
    if let Some(pid) = pid {
        if let (Some(limit), Some(open)) = (nofile_of(pid), open_fds(pid)) {
            // Room for our connections, less a few for the broker's own use.
            let room = limit.saturating_sub(open).saturating_sub(16) as usize;
            if room < n {
                run.notes.push(format!(
                    "Mosquitto's open-files limit ({limit}, {open} in use) caps the reference \
                     at {room} connections, not {n}: measured with {room}"
                ));
                n = room;
            }
        }
    } else {
        run.notes.push(
            "no process named mosquitto: the broker's memory and CPU are not measured".into(),
        );
    }
    if n == 0 {
        return Ok(());
    }
    let host = broker.ip().to_string();
    let mut config = FleetConfig::new(
        &args.first_imei,
        n,
        modem_settings(&host, broker.port(), false, args),
    );
    config.connect_concurrency = args.connect_concurrency;
    let rss0 = pid.and_then(rss_kib);
    let cpu0 = pid.and_then(|p| cpu_s(p, ticks));
    let client_cpu0 = cpu_s(me, ticks).unwrap_or(0.0);
    let t0 = Instant::now();
    let fleet = Fleet::start(config, FleetTransport::Plain)?;
    let counters = fleet.counters().clone();
    let deadline = t0 + Duration::from_secs(args.connect_timeout);
    let mut progress = Progress::new("reference", t0, ticks, pid);
    let done = loop {
        if counters.time_to_all_connected().is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        let c = counters.snapshot();
        progress.tick(c.ever_connected as f64, n, c.connect_failures);
        tokio::time::sleep(POLL).await;
    };
    let rss1 = pid.and_then(rss_kib);
    let cpu1 = pid.and_then(|p| cpu_s(p, ticks));
    let client_cpu1 = cpu_s(me, ticks).unwrap_or(0.0);
    let snap = fleet.counters().snapshot();
    let connected = (snap.ever_connected as f64).max(1.0);
    run.set("ref.modems", snap.ever_connected as f64);
    if let Some(t) = fleet.counters().time_to_all_connected() {
        run.set("ref.t_client_s", t.as_secs_f64());
        run.set("ref.conn_per_s_client", n as f64 / t.as_secs_f64());
    }
    if let (Some(a), Some(b)) = (rss0, rss1) {
        run.set("ref.broker_rss_before_mib", a as f64 / 1024.0);
        run.set("ref.broker_rss_after_mib", b as f64 / 1024.0);
        run.set(
            "ref.broker_rss_per_conn_kib",
            (b as f64 - a as f64) / connected,
        );
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        run.set("ref.broker_cpu_s", b - a);
        run.set("ref.broker_cpu_per_conn_ms", (b - a) * 1000.0 / connected);
    }
    run.set("ref.client_cpu_s", client_cpu1 - client_cpu0);
    if let (Some(t), Some(a), Some(b)) = (fleet.counters().time_to_all_connected(), cpu0, cpu1) {
        run.set(
            "ref.cores_used",
            (b - a + client_cpu1 - client_cpu0) / t.as_secs_f64(),
        );
    }
    run.set("ref.connect_failures", snap.connect_failures as f64);
    run.timeline.insert("reference", progress.rows);
    if !done {
        run.notes.push(format!(
            "reference: not all {n} modems connected within {} s ({} did)",
            args.connect_timeout, snap.ever_connected
        ));
    }
    fleet.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn reads_prometheus_samples() {
        let text = "# TYPE callhome_mqtt_connections gauge\ncallhome_mqtt_connections 1234\n\
                    callhome_mqtt_connections_total 9\n\
                    callhome_mqtt_rejected_total{reason=\"max_handshakes\"} 3\n\
                    callhome_mqtt_rejected_total{reason=\"other\"} 0\n";
        assert_eq!(sample(text, "callhome_mqtt_connections"), Some(1234.0));
        assert_eq!(sample(text, "callhome_mqtt_absent"), None);
        assert_eq!(
            gateway_trouble(text),
            vec!["callhome_mqtt_rejected_total{reason=\"max_handshakes\"} 3".to_owned()]
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(cpu_s(me, clock_ticks()).is_some());
        assert!(nofile_of(me).is_some());
        assert!(open_fds(me).is_some_and(|n| n > 0));
    }
}
