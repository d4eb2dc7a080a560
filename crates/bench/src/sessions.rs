//! `callhome-bench sessions`: meter-reading session benchmarks (set-up latency in
//! rendezvous and direct mode, and bulk throughput through a rendezvous splice).
//!
//! What one run does (each run has its own server, data directory and fleet):
//!
//! 1. Starts a Callhome server in this process, on a runtime of its own (threads named
//!    `ch-server`, so the server's CPU time can be told from the bench's), with a
//!    temporary data directory and 127.0.0.1:0 listeners; creates a reader user and
//!    enrolls `--modems` simulated modems, plus one for the throughput phase, through the
//!    API, and connects them over mutual TLS. Their serial side is the built-in
//!    IEC 62056-21 meter; the throughput modem's is a TCP sink/source in the bench.
//! 2. Rendezvous: `--sessions` sessions, `--parallel` at a time, each on a modem that has
//!    no open session. Clock: from just before `POST /api/v1/devices/{imei}/sessions
//!    {"mode":"rendezvous"}` until the first byte of the meter's identification line
//!    reaches the reader, which connects the WebSocket with the one-time token right after
//!    the POST and sends the sign-on `/?!\r\n`. The reader then closes (`reader_closed`);
//!    the modem gets its next session once the server has recorded the close and the
//!    modem's tunnel has ended.
//! 3. Direct: the bench is the reading platform, a TLS server presenting the server's own
//!    certificate (`ca/server.crt.pem`, `ca/server.key.pem` in the data directory) and
//!    requiring client certificates from the CA. Clock: from just before the POST
//!    `{"mode":"direct","host":"127.0.0.1","port":P}` until the first identification byte
//!    after the sign-on is written on the accepted socket (whose first 15 bytes, the
//!    modem's ID, are read first). Then the socket is closed and the session deleted.
//! 4. Throughput: `--bytes` each way through one rendezvous session (reader WebSocket ->
//!    server -> modem TLS -> modem -> TCP sink, then back), through one direct session
//!    (bench TLS server -> modem -> TCP sink, and back), and over one plain mutual-TLS
//!    connection on loopback with the same rustls configurations (the modem's client
//!    configuration, the direct platform's server configuration).
//!
//! Everything stays on 127.0.0.0/8 and every wait is bounded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use callhome_ca::tls::ClientAuth;
use callhome_core::Imei;
use callhome_sim::config::MasterConfig;
use callhome_sim::{
    Counters, Credentials, Enroller, ModemSettings, SerialSide, SimModem, TlsBase, Transport,
    fleet_imeis,
};
use callhome_store::{SessionRecord, Store};
use futures::{SinkExt as _, StreamExt as _};
use rustls::pki_types::pem::PemObject as _;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_util::sync::CancellationToken;

use callhome::config::{Overrides, Settings};
use callhome::server::{self, RunningServer};

use crate::{procfs, stats};

/// `callhome bench-sessions ...`.
#[derive(Debug, clap::Args)]
pub struct BenchSessionsArgs {
    /// Sessions per mode and run.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Sessions in progress at once.
    #[arg(long, default_value_t = 50)]
    pub parallel: usize,
    /// Simulated modems (each with an IEC 62056-21 meter) the sessions are spread over;
    /// a modem has at most one open session.
    #[arg(long, default_value_t = 50)]
    pub modems: usize,
    /// Bytes moved each way in the throughput phase.
    #[arg(long, default_value_t = 64 << 20)]
    pub bytes: u64,
    /// Runs, each with a fresh server, data directory and fleet; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Rendezvous sessions before the measured phases, not counted.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// What to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "rendezvous,direct,throughput"
    )]
    pub phases: Vec<Phase>,
    /// A session not finished (first byte, close, modem free again) within this many
    /// seconds counts as failed.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub session_timeout: u64,
    /// Worker threads of the server's runtime (the modems, readers and the direct
    /// platform run on the process's main runtime).
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Give a modem its next session only once the server has recorded the modem's `OK`
    /// to the previous TEMPORALCLIENT. By default a modem gets its next session as soon
    /// as the previous one is closed and its tunnel has ended; the next command then waits
    /// in the device's queue (one command in flight per device) until that `OK` arrives.
    #[arg(long)]
    pub wait_reply: bool,
    /// First 14 IMEI digits; the modems count up from there (the throughput modem last).
    #[arg(long, value_name = "BODY14", default_value = "35693805000000")]
    pub first_imei: String,
    /// Also write every run's figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Rendezvous set-up latency.
    Rendezvous,
    /// Direct set-up latency.
    Direct,
    /// Bulk throughput.
    Throughput,
}

/// Thread name of the server's runtime.
const SERVER_THREAD: &str = "ch-server";
/// The IEC 62056-21 sign-on request.
const SIGN_ON: &[u8] = b"/?!\r\n";
/// Length of a modem's ID preamble (its IMEI).
const ID_LEN: usize = 15;
/// Write and read size of the throughput phase.
const CHUNK: usize = 64 * 1024;
/// Bound on one throughput transfer.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);
/// Full TLS handshakes timed in the throughput phase.
const HANDSHAKES: usize = 50;

pub async fn run(args: BenchSessionsArgs) -> anyhow::Result<()> {
    ensure!(args.sessions >= 1, "--sessions must be at least 1");
    ensure!(args.parallel >= 1, "--parallel must be at least 1");
    ensure!(args.modems >= 1, "--modems must be at least 1");
    ensure!(args.runs >= 1, "--runs must be at least 1");
    ensure!(args.bytes >= 1, "--bytes must be at least 1");
    ensure!(
        args.server_threads >= 1,
        "--server-threads must be at least 1"
    );
    callhome_sim::install_crypto_provider();
    let machine = Machine::read();
    println!("callhome bench-sessions");
    println!(
        "  machine: {} x {}, {}, Linux {}",
        machine.cpus, machine.cpu_model, machine.memory, machine.kernel
    );
    println!(
        "  sessions {} per mode, {} in parallel over {} modems, {} bytes each way, {} runs, warm-up {}{}",
        args.sessions,
        args.parallel,
        args.modems,
        args.bytes,
        args.runs,
        args.warmup,
        if args.wait_reply {
            ", --wait-reply"
        } else {
            ""
        }
    );
    let mut runs = Vec::with_capacity(args.runs);
    for n in 1..=args.runs {
        println!("\nrun {n}/{}  (load {})", args.runs, procfs::loadavg());
        let r = one_run(&args, n)
            .await
            .with_context(|| format!("run {n}"))?;
        runs.push(r);
    }
    let summary = summarize(&runs);
    print_summary(&args, &runs, &summary);
    if let Some(path) = &args.json {
        let doc = json!({
            "machine": machine,
            "args": {
                "sessions": args.sessions, "parallel": args.parallel, "modems": args.modems,
                "bytes": args.bytes, "runs": args.runs, "warmup": args.warmup,
                "phases": args.phases, "server_threads": args.server_threads,
                "wait_reply": args.wait_reply, "session_timeout": args.session_timeout,
            },
            "runs": runs,
            "medians": summary,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Results

/// Set-up latency of one mode in one run.
#[derive(Debug, Clone, Default, Serialize)]
struct LatencyPhase {
    ok: usize,
    failures: usize,
    failure_reasons: BTreeMap<String, usize>,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    /// Completed sessions (first byte, close, modem free) per second of the phase.
    sessions_per_s: f64,
    wall_s: f64,
    /// Time from the first byte until the modem is free again (close recorded, tunnel
    /// ended), p50.
    teardown_p50_ms: f64,
    /// CPU seconds over the phase: server runtime and SQLite threads / everything else.
    server_cpu_s: f64,
    bench_cpu_s: f64,
    load_before: String,
    load_after: String,
    /// Milestones after the clock started: (what, p50 ms, p99 ms, samples).
    timeline: Vec<(String, f64, f64, usize)>,
    /// The TEMPORALCLIENT commands in their devices' queues.
    queue: QueueStats,
}

/// Throughput of one run, MB/s (10^6 bytes per second).
#[derive(Debug, Clone, Default, Serialize)]
struct ThroughputPhase {
    /// Bytes each way.
    bytes: u64,
    rendezvous_down: f64,
    rendezvous_up: f64,
    direct_session_down: f64,
    direct_session_up: f64,
    tls_down: f64,
    tls_up: f64,
    /// Full mutual-TLS handshakes on loopback (modem client configuration, platform
    /// server configuration), p50 ms.
    handshake_p50_ms: f64,
    /// CPU seconds of the rendezvous transfer alone (both directions): server threads,
    /// and the rest (modem, reader WebSocket, TCP sink).
    rendezvous_server_cpu_s: f64,
    rendezvous_bench_cpu_s: f64,
    /// WebSocket messages the reader received in the meter -> reader transfer.
    rendezvous_up_messages: u64,
    server_cpu_s: f64,
    bench_cpu_s: f64,
    load_before: String,
    load_after: String,
}

#[derive(Debug, Clone, Default, Serialize)]
struct RunResult {
    run: usize,
    rendezvous: Option<LatencyPhase>,
    direct: Option<LatencyPhase>,
    throughput: Option<ThroughputPhase>,
}

/// Facts about the machine.
#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    memory: String,
    kernel: String,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| format!("{:.1} GiB RAM", kb / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown RAM".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory,
            kernel,
        }
    }
}

/// CPU seconds used so far by (server threads, the rest of the process). Threads named
/// `ch-server*` (the server's runtime) and `sqlx-sqlite*` (its database workers) are the
/// server's; threads that have exited count as the bench's.
fn cpu_split() -> (f64, f64) {
    const TICK: f64 = 100.0; // USER_HZ on Linux
    let ticks = |stat: &str| -> Option<(String, f64)> {
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((comm, utime + stime))
    };
    let total = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .map_or(0.0, |(_, t)| t);
    let mut server = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            if let Some((comm, t)) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
                && (comm.starts_with(SERVER_THREAD) || comm.starts_with("sqlx-sqlite"))
            {
                server += t;
            }
        }
    }
    (server / TICK, (total - server).max(0.0) / TICK)
}

/// CPU and load over a phase.
struct Meter {
    cpu: (f64, f64),
    load: String,
}

impl Meter {
    fn start() -> Self {
        Self {
            cpu: cpu_split(),
            load: procfs::loadavg(),
        }
    }

    /// (server CPU s, bench CPU s, load before, load after)
    fn stop(self) -> (f64, f64, String, String) {
        let (s, b) = cpu_split();
        (s - self.cpu.0, b - self.cpu.1, self.load, procfs::loadavg())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    if d.is_zero() {
        f64::NAN
    } else {
        bytes as f64 / 1e6 / d.as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------
// The server, its own runtime, a temporary data directory

/// Removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(run: usize) -> anyhow::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "callhome-bench-sessions-{}-{run}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's runtime; shut down in the background when dropped (allowed from async
/// code, unlike dropping a runtime).
struct ServerRuntime(Option<tokio::runtime::Runtime>);

impl ServerRuntime {
    fn new(threads: usize) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .context("building the server's runtime")?;
        Ok(Self(Some(rt)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .expect("runtime present until dropped")
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Modems

/// One simulated modem with counters of its own.
struct BenchModem {
    imei: Imei,
    counters: Arc<Counters>,
}

impl BenchModem {
    /// TEMPORALCLIENT commands the modem is done with: tunnels closed, tunnels that
    /// failed to open, commands refused because a tunnel was in progress.
    fn tunnels_done(&self) -> u64 {
        let c = self.counters.snapshot();
        c.tunnels_closed() + c.tunnel_failures + c.tunnels_busy
    }

    /// Waits until [`Self::tunnels_done`] exceeds `before`; `false` on timeout.
    async fn wait_tunnel_done(&self, before: u64, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while self.tunnels_done() <= before {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}

// ---------------------------------------------------------------------------------------
// Context of one run

/// The reading platform's end of a direct session, handed over by the acceptor.
struct Accepted {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    tcp_at: Instant,
    tls_at: Instant,
    id_at: Instant,
}

type Waiters<T> = Arc<Mutex<HashMap<String, oneshot::Sender<T>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Ctx {
    http: reqwest::Client,
    base: String,
    ws_base: String,
    reader: String,
    /// Session id -> close reason, command id -> final event type (see
    /// [`spawn_close_router`]).
    closed: Waiters<String>,
    wait_reply: bool,
    /// IMEI -> the next direct connection from that modem.
    direct: Waiters<Accepted>,
    platform_port: u16,
    timeout: Duration,
    store: Arc<dyn Store>,
    server_rt: tokio::runtime::Handle,
}

/// One measured session.
#[derive(Debug, Clone)]
struct Sample {
    id: String,
    imei: Imei,
    t0_wall: OffsetDateTime,
    /// Clock start to the first identification byte.
    latency: Duration,
    /// Clock start to these client-side milestones.
    marks: Vec<(&'static str, Duration)>,
    /// First byte to the modem being free again.
    teardown: Duration,
}

#[derive(Debug)]
struct Failure {
    reason: String,
    id: Option<String>,
}

impl Failure {
    fn new(reason: impl Into<String>, id: Option<&str>) -> Self {
        Self {
            reason: reason.into(),
            id: id.map(str::to_owned),
        }
    }
}

impl Ctx {
    async fn post_session(&self, imei: &Imei, body: Value) -> Result<Value, Failure> {
        let resp = self
            .http
            .post(format!("{}/api/v1/devices/{imei}/sessions", self.base))
            .bearer_auth(&self.reader)
            .json(&body)
            .send()
            .await
            .map_err(|e| Failure::new(format!("POST: {e}"), None))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != reqwest::StatusCode::CREATED {
            return Err(Failure::new(
                format!(
                    "POST {}: {}",
                    status.as_u16(),
                    body["type"].as_str().unwrap_or("")
                ),
                None,
            ));
        }
        Ok(body)
    }

    async fn delete_session(&self, id: &str) -> Result<Value, String> {
        let resp = self
            .http
            .delete(format!("{}/api/v1/sessions/{id}", self.base))
            .bearer_auth(&self.reader)
            .send()
            .await
            .map_err(|e| format!("DELETE: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status != reqwest::StatusCode::OK {
            return Err(format!("DELETE {}", status.as_u16()));
        }
        Ok(body)
    }

    fn expect_close(&self, id: &str) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        lock(&self.closed).insert(id.to_owned(), tx);
        rx
    }

    /// Runs `f` on the server's runtime (the store's connections live there).
    async fn on_server<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.server_rt
            .spawn(f)
            .await
            .context("server-side task failed")
    }

    /// After a failure: closes the session if there is one and waits (bounded) until the
    /// modem is free again.
    async fn clean_up(&self, modem: &BenchModem, before: u64, id: Option<&str>) {
        if let Some(id) = id {
            let _ = self.delete_session(id).await;
        }
        let _ = modem.wait_tunnel_done(before, Duration::from_secs(5)).await;
        for _ in 0..50 {
            let store = self.store.clone();
            let imei = modem.imei.clone();
            match self
                .on_server(async move { store.open_session_of(&imei).await })
                .await
            {
                Ok(Ok(Some(open))) => {
                    let id = open.id.to_string();
                    let _ = self.delete_session(&id).await;
                }
                Ok(Ok(None)) => return,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Routes the server's `session.closed` events (value: the close reason) and final
/// command events (value: the event type) to whoever waits for that session or command
/// id.
fn spawn_close_router(
    mut events: tokio::sync::broadcast::Receiver<callhome_gateway::Event>,
    waiters: Waiters<String>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut lagged = 0;
        loop {
            let ev = tokio::select! {
                () = stop.cancelled() => return lagged,
                e = events.recv() => e,
            };
            match ev {
                Ok(e) => {
                    use callhome_gateway::events::EventPayload;
                    let routed = match &e.payload {
                        EventPayload::SessionClosed(c) => Some((c.id, c.reason.to_string())),
                        EventPayload::CommandSucceeded(c)
                        | EventPayload::CommandFailed(c)
                        | EventPayload::CommandTimedOut(c)
                        | EventPayload::CommandExpired(c)
                        | EventPayload::CommandCancelled(c) => Some((c.id, e.kind().to_owned())),
                        _ => None,
                    };
                    if let Some((id, value)) = routed
                        && let Some(tx) = lock(&waiters).remove(&id.to_string())
                    {
                        let _ = tx.send(value);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => lagged += n,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return lagged,
            }
        }
    })
}

/// With `--wait-reply`: waits (bounded) until the device's latest TEMPORALCLIENT has a
/// final state: its event, or the store.
async fn wait_reply(ctx: &Ctx, imei: &Imei, rx: Option<oneshot::Receiver<String>>) {
    let Some(mut rx) = rx else { return };
    let deadline = Instant::now() + Duration::from_secs(35);
    loop {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), &mut rx).await {
            let _ = r;
            return;
        }
        let store = ctx.store.clone();
        let imei = imei.clone();
        let done = ctx
            .on_server(async move {
                let page = store.list_sessions(&imei, None, 1).await.ok()?;
                let cmd = page.items.first()?.command_id?;
                Some(store.get_command(cmd).await.ok()?.state.is_final())
            })
            .await;
        if matches!(done, Ok(Some(true))) || Instant::now() >= deadline {
            return;
        }
    }
}

/// Registers for the final event of the command of a just-created session.
fn expect_reply(ctx: &Ctx, created: &Value) -> Option<oneshot::Receiver<String>> {
    if !ctx.wait_reply {
        return None;
    }
    let id = created["command_id"].as_str()?;
    let (tx, rx) = oneshot::channel();
    lock(&ctx.closed).insert(id.to_owned(), tx);
    Some(rx)
}

/// Waits for the close event of a session; falls back to reading the store (events can
/// be missed by a lagging subscriber). Returns the reason.
async fn wait_closed(
    ctx: &Ctx,
    id: &str,
    imei: &Imei,
    mut rx: oneshot::Receiver<String>,
    max: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + max;
    loop {
        match tokio::time::timeout(Duration::from_millis(500), &mut rx).await {
            Ok(Ok(reason)) => return Ok(reason),
            Ok(Err(_)) => return Err("close router stopped".to_owned()),
            Err(_) => {
                let store = ctx.store.clone();
                let imei = imei.clone();
                if let Ok(Ok(None)) = ctx
                    .on_server(async move { store.open_session_of(&imei).await })
                    .await
                {
                    lock(&ctx.closed).remove(id);
                    return Ok("(closed, event missed)".to_owned());
                }
                if Instant::now() >= deadline {
                    lock(&ctx.closed).remove(id);
                    return Err("the server did not record the close in time".to_owned());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One rendezvous session

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn ws_connect(ctx: &Ctx, created: &Value, id: &str) -> Result<Ws, Failure> {
    let url = format!(
        "{}{}?token={}",
        ctx.ws_base,
        created["reader"]["stream_path"]
            .as_str()
            .unwrap_or_default(),
        created["reader"]["token"].as_str().unwrap_or_default()
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| Failure::new(format!("WebSocket: {e}"), Some(id)))?;
    Ok(ws)
}

/// Closes the WebSocket and reads until the server has closed it too (bounded).
async fn ws_close(ws: &mut Ws) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

async fn rendezvous_session(ctx: &Ctx, modem: &BenchModem, before: u64) -> Result<Sample, Failure> {
    let t0_wall = OffsetDateTime::now_utc();
    let t0 = Instant::now();
    let created = ctx
        .post_session(&modem.imei, json!({"mode": "rendezvous"}))
        .await?;
    let t_post = t0.elapsed();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let closed = ctx.expect_close(&id);
    let reply = expect_reply(ctx, &created);
    let mut ws = ws_connect(ctx, &created, &id).await?;
    let t_ws = t0.elapsed();
    ws.send(Message::Binary(Bytes::from_static(SIGN_ON)))
        .await
        .map_err(|e| Failure::new(format!("WebSocket send: {e}"), Some(&id)))?;
    let t_sent = t0.elapsed();
    let first = loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) if !b.is_empty() => break b,
            Some(Ok(Message::Close(_))) | None => {
                return Err(Failure::new("closed before the meter answered", Some(&id)));
            }
            Some(Err(e)) => return Err(Failure::new(format!("WebSocket: {e}"), Some(&id))),
            Some(Ok(_)) => {}
        }
    };
    let latency = t0.elapsed();
    if first[0] != b'/' {
        return Err(Failure::new(
            format!("unexpected first byte {:#04x}", first[0]),
            Some(&id),
        ));
    }
    ws_close(&mut ws).await;
    let reason = wait_closed(ctx, &id, &modem.imei, closed, Duration::from_secs(10))
        .await
        .map_err(|e| Failure::new(e, Some(&id)))?;
    if reason != "reader_closed" {
        return Err(Failure::new(format!("closed: {reason}"), Some(&id)));
    }
    if !modem
        .wait_tunnel_done(before, Duration::from_secs(10))
        .await
    {
        return Err(Failure::new("the modem's tunnel did not end", Some(&id)));
    }
    wait_reply(ctx, &modem.imei, reply).await;
    Ok(Sample {
        id,
        imei: modem.imei.clone(),
        t0_wall,
        latency,
        marks: vec![
            ("POST answered (client)", t_post),
            ("reader WebSocket upgraded (client)", t_ws),
            ("sign-on sent (client)", t_sent),
        ],
        teardown: t0.elapsed().saturating_sub(latency),
    })
}

// ---------------------------------------------------------------------------------------
// One direct session

/// Allows `127.0.0.1:port` (the bench's reading platform) as a direct-session target.
async fn allow_platform_target(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    port: u16,
) -> anyhow::Result<reqwest::StatusCode> {
    Ok(http
        .post(format!("{base}/api/v1/session-targets"))
        .bearer_auth(admin)
        .json(&json!({"network": "127.0.0.1/32", "ports": port.to_string(), "note": "bench platform"}))
        .send()
        .await?
        .status())
}

async fn direct_session(ctx: &Ctx, modem: &BenchModem, before: u64) -> Result<Sample, Failure> {
    let (tx, rx) = oneshot::channel();
    lock(&ctx.direct).insert(modem.imei.to_string(), tx);
    let t0_wall = OffsetDateTime::now_utc();
    let t0 = Instant::now();
    let created = ctx
        .post_session(
            &modem.imei,
            json!({"mode": "direct", "host": "127.0.0.1", "port": ctx.platform_port}),
        )
        .await
        .inspect_err(|_| {
            lock(&ctx.direct).remove(modem.imei.as_str());
        })?;
    let t_post = t0.elapsed();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let reply = expect_reply(ctx, &created);
    let accepted = match tokio::time::timeout(ctx.timeout, rx).await {
        Ok(Ok(a)) => a,
        _ => {
            lock(&ctx.direct).remove(modem.imei.as_str());
            return Err(Failure::new("the modem did not connect", Some(&id)));
        }
    };
    let Accepted {
        mut stream,
        tcp_at,
        tls_at,
        id_at,
    } = accepted;
    let io = |e: std::io::Error| Failure::new(format!("platform socket: {e}"), Some(&id));
    stream.write_all(SIGN_ON).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let t_sent = t0.elapsed();
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await.map_err(io)?;
    let latency = t0.elapsed();
    if first[0] != b'/' {
        return Err(Failure::new(
            format!("unexpected first byte {:#04x}", first[0]),
            Some(&id),
        ));
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
    drop(stream);
    let deleted = ctx
        .delete_session(&id)
        .await
        .map_err(|e| Failure::new(e, Some(&id)))?;
    if deleted["state"] != "closed" {
        return Err(Failure::new(
            format!("DELETE left the session {}", deleted["state"]),
            Some(&id),
        ));
    }
    if !modem
        .wait_tunnel_done(before, Duration::from_secs(10))
        .await
    {
        return Err(Failure::new("the modem's tunnel did not end", Some(&id)));
    }
    wait_reply(ctx, &modem.imei, reply).await;
    let since = |t: Instant| t.saturating_duration_since(t0);
    Ok(Sample {
        id,
        imei: modem.imei.clone(),
        t0_wall,
        latency,
        marks: vec![
            ("POST answered (client)", t_post),
            ("platform: TCP accepted", since(tcp_at)),
            ("platform: TLS handshake done", since(tls_at)),
            ("platform: modem ID read", since(id_at)),
            ("sign-on sent (client)", t_sent),
        ],
        teardown: t0.elapsed().saturating_sub(latency),
    })
}

/// Accepts modems on the direct platform's port: TLS with a client certificate, the
/// 15-byte ID, then the connection goes to whoever waits for that IMEI.
fn spawn_platform(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    waiters: Waiters<Accepted>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let tcp_at = Instant::now();
            let acceptor = acceptor.clone();
            let waiters = waiters.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(Ok(mut stream)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let tls_at = Instant::now();
                let mut id = [0u8; ID_LEN];
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut id)).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
                let id_at = Instant::now();
                let imei = String::from_utf8_lossy(&id).into_owned();
                if let Some(tx) = lock(&waiters).remove(&imei) {
                    let _ = tx.send(Accepted {
                        stream,
                        tcp_at,
                        tls_at,
                        id_at,
                    });
                }
            });
        }
    });
}

// ---------------------------------------------------------------------------------------
// A latency phase

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Rendezvous,
    Direct,
}

/// Runs `n` sessions, `parallel` at a time, each on a free modem. Returns the samples
/// and the failures, and the phase's wall time.
async fn run_sessions(
    ctx: &Arc<Ctx>,
    modems: &Arc<Vec<BenchModem>>,
    mode: Mode,
    n: usize,
    parallel: usize,
) -> (Vec<Sample>, Vec<Failure>, Duration) {
    let (free_tx, free_rx) = mpsc::channel::<usize>(modems.len());
    for i in 0..modems.len() {
        let _ = free_tx.try_send(i);
    }
    let free_rx = Arc::new(tokio::sync::Mutex::new(free_rx));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(parallel);
    for _ in 0..parallel.min(n) {
        let (ctx, modems, free_tx, free_rx, next) = (
            ctx.clone(),
            modems.clone(),
            free_tx.clone(),
            free_rx.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut failures = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let Some(i) = free_rx.lock().await.recv().await else {
                    break;
                };
                let modem = &modems[i];
                let before = modem.tunnels_done();
                let once = async {
                    match mode {
                        Mode::Rendezvous => rendezvous_session(&ctx, modem, before).await,
                        Mode::Direct => direct_session(&ctx, modem, before).await,
                    }
                };
                match tokio::time::timeout(ctx.timeout, once).await {
                    Ok(Ok(s)) => samples.push(s),
                    Ok(Err(f)) => {
                        ctx.clean_up(modem, before, f.id.as_deref()).await;
                        failures.push(f);
                    }
                    Err(_) => {
                        ctx.clean_up(modem, before, None).await;
                        failures.push(Failure::new("timed out", None));
                    }
                }
                let _ = free_tx.send(i).await;
            }
            (samples, failures)
        }));
    }
    let mut samples = Vec::with_capacity(n);
    let mut failures = Vec::new();
    for w in workers {
        if let Ok((s, f)) = w.await {
            samples.extend(s);
            failures.extend(f);
        }
    }
    (samples, failures, started.elapsed())
}

/// How the sessions' TEMPORALCLIENT commands waited in their device's queue.
#[derive(Debug, Clone, Default, Serialize)]
struct QueueStats {
    commands: usize,
    /// Queued while the device's previous command was still in flight (awaiting the
    /// modem's `OK`): the dispatcher sends one command per device at a time.
    behind_previous: usize,
    /// Queued -> sent, p50 ms, for those...
    wait_behind_p50_ms: f64,
    /// ...and for the others.
    wait_other_p50_ms: f64,
    /// Sent -> sent for those, minus the previous command's reply time: how long after
    /// the previous `OK` was recorded the command went out, p50 ms.
    sent_after_previous_ok_p50_ms: f64,
    /// The modem's reply time (sent -> `OK` recorded), p50 and p99 ms.
    reply_p50_ms: f64,
    reply_p99_ms: f64,
}

/// The server-side milestones of each sample's session, and the command queue figures,
/// read from the store.
async fn server_timeline(
    ctx: &Ctx,
    samples: &[Sample],
) -> anyhow::Result<(Vec<(String, Vec<f64>)>, QueueStats)> {
    let mut by_imei: BTreeMap<String, Imei> = BTreeMap::new();
    for s in samples {
        by_imei.insert(s.imei.to_string(), s.imei.clone());
    }
    let store = ctx.store.clone();
    let imeis: Vec<Imei> = by_imei.into_values().collect();
    let records = ctx
        .on_server(async move {
            let mut out: HashMap<String, (SessionRecord, Option<callhome_store::CommandRecord>)> =
                HashMap::new();
            for imei in imeis {
                let mut before = None;
                loop {
                    let page = store.list_sessions(&imei, before, 1000).await?;
                    let last = page.items.last().map(|s| s.id);
                    for s in page.items {
                        let cmd = match s.command_id {
                            Some(c) => store.get_command(c).await.ok(),
                            None => None,
                        };
                        out.insert(s.id.to_string(), (s, cmd));
                    }
                    if page.next.is_none() {
                        break;
                    }
                    before = last;
                }
            }
            anyhow::Ok(out)
        })
        .await??;
    let names = [
        "session row created (server)",
        "TEMPORALCLIENT sent to the modem (server)",
        "modem on the tunnel listener, ID checked (server)",
        "reader attached (server)",
        "session active (server; rendezvous: splice started)",
        "TEMPORALCLIENT OK recorded (server)",
    ];
    // Every command of each device, in the order queued.
    let mut per_device: HashMap<callhome_core::Imei, Vec<callhome_store::CommandRecord>> =
        HashMap::new();
    for (_, cmd) in records.values() {
        if let Some(c) = cmd {
            per_device
                .entry(c.imei.clone())
                .or_default()
                .push(c.clone());
        }
    }
    for v in per_device.values_mut() {
        v.sort_by_key(|c| c.created_at);
    }
    let span_ms = |a: OffsetDateTime, b: OffsetDateTime| (b - a).as_seconds_f64() * 1000.0;
    let mut q = QueueStats::default();
    let (mut behind, mut other, mut after_ok, mut reply) = (vec![], vec![], vec![], vec![]);
    for s in samples {
        let Some((_, Some(cmd))) = records.get(&s.id) else {
            continue;
        };
        let Some(sent) = cmd.sent_at else { continue };
        q.commands += 1;
        if let Some(done) = cmd.completed_at {
            reply.push(span_ms(sent, done));
        }
        let list = &per_device[&cmd.imei];
        let pos = list.iter().position(|c| c.id == cmd.id).unwrap_or(0);
        let prev_done = pos.checked_sub(1).and_then(|p| list[p].completed_at);
        let wait = span_ms(cmd.created_at, sent);
        match prev_done {
            Some(d) if d > cmd.created_at => {
                q.behind_previous += 1;
                behind.push(wait);
                after_ok.push(span_ms(d, sent));
            }
            _ => other.push(wait),
        }
    }
    for v in [&mut behind, &mut other, &mut after_ok, &mut reply] {
        v.sort_by(f64::total_cmp);
    }
    q.wait_behind_p50_ms = stats::percentile(&behind, 0.5).unwrap_or(f64::NAN);
    q.wait_other_p50_ms = stats::percentile(&other, 0.5).unwrap_or(f64::NAN);
    q.sent_after_previous_ok_p50_ms = stats::percentile(&after_ok, 0.5).unwrap_or(f64::NAN);
    q.reply_p50_ms = stats::percentile(&reply, 0.5).unwrap_or(f64::NAN);
    q.reply_p99_ms = stats::percentile(&reply, 0.99).unwrap_or(f64::NAN);

    let mut cols: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for s in samples {
        let Some((rec, cmd)) = records.get(&s.id) else {
            continue;
        };
        let rel = |t: Option<OffsetDateTime>| t.map(|t| (t - s.t0_wall).as_seconds_f64() * 1000.0);
        let values = [
            rel(Some(rec.created_at)),
            rel(cmd.as_ref().and_then(|c| c.sent_at)),
            rel(rec.modem_connected_at),
            rel(rec.reader_connected_at),
            rel(rec.active_at),
            rel(cmd.as_ref().and_then(|c| c.completed_at)),
        ];
        for (col, v) in cols.iter_mut().zip(values) {
            if let Some(v) = v {
                col.push(v);
            }
        }
    }
    Ok((
        names
            .iter()
            .map(|n| (*n).to_owned())
            .zip(cols)
            .filter(|(_, v)| !v.is_empty())
            .collect(),
        q,
    ))
}

async fn latency_phase(
    ctx: &Arc<Ctx>,
    modems: &Arc<Vec<BenchModem>>,
    mode: Mode,
    args: &BenchSessionsArgs,
) -> anyhow::Result<LatencyPhase> {
    let meter = Meter::start();
    let (samples, failures, wall) =
        run_sessions(ctx, modems, mode, args.sessions, args.parallel).await;
    let (server_cpu_s, bench_cpu_s, load_before, load_after) = meter.stop();
    let mut lat: Vec<f64> = samples.iter().map(|s| ms(s.latency)).collect();
    lat.sort_by(f64::total_cmp);
    let mut teardown: Vec<f64> = samples.iter().map(|s| ms(s.teardown)).collect();
    teardown.sort_by(f64::total_cmp);
    let mut failure_reasons = BTreeMap::new();
    for f in &failures {
        *failure_reasons.entry(f.reason.clone()).or_insert(0) += 1;
    }

    // Timeline: client-side marks, server-side milestones, the first byte.
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    if let Some(first) = samples.first() {
        for (k, (name, _)) in first.marks.iter().enumerate() {
            columns.push((
                (*name).to_owned(),
                samples
                    .iter()
                    .filter_map(|s| s.marks.get(k).map(|m| ms(m.1)))
                    .collect(),
            ));
        }
    }
    let mut queue = QueueStats::default();
    match server_timeline(ctx, &samples).await {
        Ok((cols, q)) => {
            columns.extend(cols);
            queue = q;
        }
        Err(e) => println!("  (server timeline unavailable: {e:#})"),
    }
    columns.push(("first identification byte (client)".to_owned(), lat.clone()));
    let mut timeline: Vec<(String, f64, f64, usize)> = columns
        .into_iter()
        .map(|(name, mut v)| {
            v.sort_by(f64::total_cmp);
            (
                name,
                stats::percentile(&v, 0.5).unwrap_or(f64::NAN),
                stats::percentile(&v, 0.99).unwrap_or(f64::NAN),
                v.len(),
            )
        })
        .collect();
    timeline.sort_by(|a, b| a.1.total_cmp(&b.1));

    Ok(LatencyPhase {
        ok: samples.len(),
        failures: failures.len(),
        failure_reasons,
        p50_ms: stats::percentile(&lat, 0.5).unwrap_or(f64::NAN),
        p90_ms: stats::percentile(&lat, 0.9).unwrap_or(f64::NAN),
        p99_ms: stats::percentile(&lat, 0.99).unwrap_or(f64::NAN),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        mean_ms: lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        sessions_per_s: samples.len() as f64 / wall.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        teardown_p50_ms: stats::percentile(&teardown, 0.5).unwrap_or(f64::NAN),
        server_cpu_s,
        bench_cpu_s,
        load_before,
        load_after,
        timeline,
        queue,
    })
}

// ---------------------------------------------------------------------------------------
// Throughput

/// What the serial-side sink saw of one bulk session.
struct SinkReport {
    down_end: Instant,
    down_bytes: u64,
    up_start: Instant,
}

/// Writes `n` bytes in [`CHUNK`] pieces and flushes.
async fn write_n<W: AsyncWrite + Unpin>(w: &mut W, n: u64) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let k = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        w.write_all(&chunk[..k]).await?;
        left -= k as u64;
    }
    w.flush().await
}

/// Reads until `n` bytes have come (or EOF); returns the count and when the last came.
async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> std::io::Result<(u64, Instant)> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < n {
        let want = usize::try_from((n - got).min(CHUNK as u64)).unwrap_or(CHUNK);
        let k = r.read(&mut buf[..want]).await?;
        if k == 0 {
            break;
        }
        got += k as u64;
    }
    Ok((got, Instant::now()))
}

/// The throughput modem's serial side: receives `bytes`, reports, sends `bytes` back,
/// then waits for the tunnel to close.
fn spawn_sink(listener: TcpListener, bytes: u64, reports: mpsc::Sender<SinkReport>) {
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let reports = reports.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(Ok((down_bytes, down_end))) =
                    tokio::time::timeout(TRANSFER_TIMEOUT, read_n(&mut tcp, bytes)).await
                else {
                    return;
                };
                let up_start = Instant::now();
                let _ = reports
                    .send(SinkReport {
                        down_end,
                        down_bytes,
                        up_start,
                    })
                    .await;
                if down_bytes < bytes {
                    return;
                }
                let _ = tokio::time::timeout(TRANSFER_TIMEOUT, write_n(&mut tcp, bytes)).await;
                let mut rest = vec![0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Ok(k) = tcp.read(&mut rest).await {
                        if k == 0 {
                            break;
                        }
                    }
                })
                .await;
            });
        }
    });
}

async fn next_report(
    reports: &mut mpsc::Receiver<SinkReport>,
    bytes: u64,
) -> anyhow::Result<SinkReport> {
    let r = tokio::time::timeout(TRANSFER_TIMEOUT, reports.recv())
        .await
        .context("the sink received nothing in time")?
        .context("the sink stopped")?;
    ensure!(
        r.down_bytes == bytes,
        "the sink received {} of {bytes} bytes",
        r.down_bytes
    );
    Ok(r)
}

/// Reader -> meter and meter -> reader through one rendezvous session: (down, up).
async fn bulk_rendezvous(
    ctx: &Ctx,
    modem: &BenchModem,
    reports: &mut mpsc::Receiver<SinkReport>,
    bytes: u64,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let before = modem.tunnels_done();
    let created = ctx
        .post_session(&modem.imei, json!({"mode": "rendezvous", "timeout_s": 600}))
        .await
        .map_err(|f| anyhow::anyhow!(f.reason))?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let closed = ctx.expect_close(&id);
    let mut ws = ws_connect(ctx, &created, &id)
        .await
        .map_err(|f| anyhow::anyhow!(f.reason))?;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let k = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
        ws.feed(Message::Binary(chunk.slice(..k))).await?;
        left -= k as u64;
    }
    ws.flush().await?;
    let report = next_report(reports, bytes).await?;
    let down = report.down_end.saturating_duration_since(started);
    let mut got = 0u64;
    let mut messages = 0u64;
    let up_end = tokio::time::timeout(TRANSFER_TIMEOUT, async {
        while got < bytes {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => {
                    got += b.len() as u64;
                    messages += 1;
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
        Instant::now()
    })
    .await
    .context("meter -> reader transfer timed out")?;
    ensure!(got == bytes, "the reader received {got} of {bytes} bytes");
    let up = up_end.saturating_duration_since(report.up_start);
    ws_close(&mut ws).await;
    let reason = wait_closed(ctx, &id, &modem.imei, closed, Duration::from_secs(10))
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    ensure!(reason == "reader_closed", "bulk session closed: {reason}");
    modem
        .wait_tunnel_done(before, Duration::from_secs(10))
        .await;
    // The server's own byte counts agree.
    let store = ctx.store.clone();
    let imei = modem.imei.clone();
    let rec = ctx
        .on_server(async move { store.list_sessions(&imei, None, 1).await })
        .await??;
    if let Some(s) = rec.items.first() {
        ensure!(
            s.bytes_to_modem as u64 == bytes && s.bytes_from_modem as u64 == bytes,
            "the server counted {} bytes to and {} from the modem",
            s.bytes_to_modem,
            s.bytes_from_modem
        );
    }
    Ok((down, up, messages))
}

/// The same through one direct session: the bench's platform writes to the modem, which
/// relays to the sink, and back.
async fn bulk_direct(
    ctx: &Ctx,
    modem: &BenchModem,
    reports: &mut mpsc::Receiver<SinkReport>,
    bytes: u64,
) -> anyhow::Result<(Duration, Duration)> {
    let before = modem.tunnels_done();
    let (tx, rx) = oneshot::channel();
    lock(&ctx.direct).insert(modem.imei.to_string(), tx);
    let created = ctx
        .post_session(
            &modem.imei,
            json!({"mode": "direct", "host": "127.0.0.1", "port": ctx.platform_port, "timeout_s": 600}),
        )
        .await
        .map_err(|f| anyhow::anyhow!(f.reason))?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let mut stream = tokio::time::timeout(ctx.timeout, rx)
        .await
        .context("the modem did not connect")?
        .context("the platform stopped")?
        .stream;
    let started = Instant::now();
    tokio::time::timeout(TRANSFER_TIMEOUT, write_n(&mut stream, bytes))
        .await
        .context("reader -> meter transfer timed out")??;
    let report = next_report(reports, bytes).await?;
    let down = report.down_end.saturating_duration_since(started);
    let (got, up_end) = tokio::time::timeout(TRANSFER_TIMEOUT, read_n(&mut stream, bytes))
        .await
        .context("meter -> reader transfer timed out")??;
    ensure!(got == bytes, "the platform received {got} of {bytes} bytes");
    let up = up_end.saturating_duration_since(report.up_start);
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
    drop(stream);
    ctx.delete_session(&id)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    modem
        .wait_tunnel_done(before, Duration::from_secs(10))
        .await;
    Ok((down, up))
}

/// One mutual-TLS connection on loopback, each end in a task of its own: (server
/// stream, client stream).
async fn tls_pair(
    acceptor: &TlsAcceptor,
    connector: &TlsConnector,
    listener: &Arc<TcpListener>,
) -> anyhow::Result<(
    tokio_rustls::server::TlsStream<TcpStream>,
    tokio_rustls::client::TlsStream<TcpStream>,
)> {
    let addr = listener.local_addr()?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let connector = connector.clone();
    let client = async move {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        anyhow::Ok(connector.connect(name, tcp).await?)
    };
    let (acceptor, listener) = (acceptor.clone(), listener.clone());
    let server = async move {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        anyhow::Ok(acceptor.accept(tcp).await?)
    };
    let (s, c) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(tokio::spawn(server), tokio::spawn(client))
    })
    .await
    .context("TLS handshake timed out")?;
    Ok((s??, c??))
}

/// `bytes` each way over one direct mutual-TLS connection, each end in a task of its
/// own: (down = server -> client, up = client -> server). Also times full handshakes.
async fn bulk_tls(
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    bytes: u64,
) -> anyhow::Result<(Duration, Duration, f64)> {
    let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await?);
    let mut hs = Vec::with_capacity(HANDSHAKES);
    for _ in 0..HANDSHAKES {
        let t = Instant::now();
        let (s, c) = tls_pair(&acceptor, &connector, &listener).await?;
        hs.push(ms(t.elapsed()));
        drop((s, c));
    }
    hs.sort_by(f64::total_cmp);
    let (mut s, mut c) = tls_pair(&acceptor, &connector, &listener).await?;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        write_n(&mut s, bytes).await?;
        std::io::Result::Ok(s)
    });
    let reader = tokio::spawn(async move {
        let r = read_n(&mut c, bytes).await?;
        std::io::Result::Ok((c, r))
    });
    let (w, r) = tokio::time::timeout(TRANSFER_TIMEOUT, async { tokio::join!(writer, reader) })
        .await
        .context("TLS transfer timed out")?;
    let mut s = w??;
    let (mut c, (got, end)) = r??;
    ensure!(got == bytes, "TLS: received {got} of {bytes} bytes");
    let down = end.saturating_duration_since(started);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        write_n(&mut c, bytes).await?;
        std::io::Result::Ok(c)
    });
    let reader = tokio::spawn(async move { read_n(&mut s, bytes).await });
    let (w, r) = tokio::time::timeout(TRANSFER_TIMEOUT, async { tokio::join!(writer, reader) })
        .await
        .context("TLS transfer timed out")?;
    let _c = w??;
    let (got, end) = r??;
    ensure!(got == bytes, "TLS: received {got} of {bytes} bytes");
    let up = end.saturating_duration_since(started);
    Ok((down, up, stats::percentile(&hs, 0.5).unwrap_or(f64::NAN)))
}

// ---------------------------------------------------------------------------------------
// One run

async fn api_token(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    ensure!(status.is_success(), "login as {user}: {status} {body}");
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access_token in the login answer")
}

/// The direct platform's TLS server configuration: the server's certificate and key from
/// the data directory, client certificates required and verified against the CA.
fn platform_config(data_dir: &Path, ca_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let ca_dir = data_dir.join(server::CA_DIR);
    let chain_pem = std::fs::read_to_string(ca_dir.join(callhome_ca::SERVER_CERT_FILE))
        .context("reading the server certificate")?;
    let key_pem = std::fs::read_to_string(ca_dir.join(callhome_ca::SERVER_KEY_FILE))
        .context("reading the server key")?;
    let cert_chain = rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the server certificate")?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("parsing the server key")?;
    let not_after = callhome_ca::inspect_certificate(&chain_pem)?.not_after;
    let identity = callhome_ca::ServerIdentity {
        cert_chain_pem: chain_pem,
        cert_chain,
        key,
        not_after,
    };
    let roots = rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the CA certificate")?;
    Ok(callhome_ca::tls::server_config(
        &identity,
        &roots,
        vec![],
        ClientAuth::Required,
    )?)
}

async fn one_run(args: &BenchSessionsArgs, run: usize) -> anyhow::Result<RunResult> {
    let dir = TempDir::new(run)?;
    let data_dir = dir.0.join("data");
    let admin_password = server::generate_password();
    let mut settings = Settings::resolve(&Overrides {
        data_dir: Some(data_dir.clone()),
        http: Some("127.0.0.1:0".parse()?),
        mqtt: Some("127.0.0.1:0".parse()?),
        tunnel: Some("127.0.0.1:0".parse()?),
        device_http: Some("127.0.0.1:0".parse()?),
        ..Default::default()
    })?;
    settings.admin_password = Some(SecretString::from(admin_password.clone()));
    // Every simulated modem and reader is on 127.0.0.1: lift the per-address caps (meant
    // for real fleets, one address per modem) to the global ones.
    settings.gateway.max_connections_per_address = settings.gateway.max_connections;
    settings.gateway.max_handshakes_per_address = settings.gateway.max_handshakes;
    settings.tunnel_max_connections_per_address = 10_000_000;
    settings.tunnel_max_handshakes_per_address = 100_000;
    settings.http_limits.max_connections_per_address = settings.http_limits.max_connections;
    let server_rt = ServerRuntime::new(args.server_threads)?;
    let handle = server_rt.handle();
    let srv: RunningServer = handle
        .spawn(async move { server::start(&settings).await })
        .await
        .context("server start panicked")??;
    let base = format!("http://{}", srv.http_addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.parallel.max(8) * 2)
        .timeout(Duration::from_secs(60))
        .build()?;

    // Users: admin enrolls, the reader opens sessions.
    let admin = api_token(&http, &base, "admin", &admin_password).await?;
    let reader_password = server::generate_password();
    let resp = http
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"username": "bench-reader", "password": reader_password, "role": "reader"}))
        .send()
        .await?;
    ensure!(
        resp.status() == reqwest::StatusCode::CREATED,
        "creating the reader: {}",
        resp.status()
    );
    let reader = api_token(&http, &base, "bench-reader", &reader_password).await?;

    // Modems: enroll, connect.
    let imeis = fleet_imeis(&args.first_imei, args.modems + 1)?;
    let enroller = Enroller::new(&base, &admin, &dir.0.join("modems"), None)?;
    let ca = enroller.ca_certificate().await?;
    let t = Instant::now();
    let credentials = enroller.enroll_all(&imeis, 16, |_| {}).await?;
    println!(
        "  enrolled {} modems in {:.1} s",
        imeis.len(),
        t.elapsed().as_secs_f64()
    );
    let sink = TcpListener::bind("127.0.0.1:0").await?;
    let sink_addr = sink.local_addr()?;
    let (report_tx, mut reports) = mpsc::channel(4);
    spawn_sink(sink, args.bytes, report_tx);

    let base_tls = TlsBase::new(&ca)?;
    let mqtt_port = srv.mqtt_addr.port();
    let mut modem_settings = ModemSettings::new("127.0.0.1", mqtt_port, true);
    modem_settings.master = Arc::new(MasterConfig::for_platform(
        "127.0.0.1",
        mqtt_port,
        true,
        Some(600),
    ));
    let modem_settings = Arc::new(modem_settings);
    let gate = Arc::new(Semaphore::new(32));
    let fleet_cancel = CancellationToken::new();
    let _fleet_guard = fleet_cancel.clone().drop_guard();
    let mut modems = Vec::with_capacity(imeis.len());
    let mut tasks = Vec::with_capacity(imeis.len());
    let bulk_credentials: Credentials =
        credentials.last().cloned().context("no throughput modem")?;
    for (i, (imei, cred)) in imeis.iter().zip(credentials).enumerate() {
        let counters = Arc::new(Counters::new(1));
        let mut m = SimModem::new(
            imei.clone(),
            Transport::MutualTls {
                base: base_tls.clone(),
                credentials: cred,
            },
            modem_settings.clone(),
        )
        .with_counters(counters.clone())
        .with_connect_gate(gate.clone());
        if i == args.modems {
            m = m.with_serial_side(SerialSide::Tcp(sink_addr.to_string()));
        }
        let (_handle, task) = m.spawn(fleet_cancel.child_token());
        tasks.push(task);
        modems.push(BenchModem {
            imei: imei.clone(),
            counters,
        });
    }
    let t = Instant::now();
    while modems
        .iter()
        .any(|m| m.counters.snapshot().ever_connected == 0)
    {
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the modems did not all connect within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "  {} modems connected in {:.2} s",
        modems.len(),
        t.elapsed().as_secs_f64()
    );
    let bulk = modems.pop().context("no throughput modem")?;
    let modems = Arc::new(modems);

    // The direct platform.
    let platform_cfg = platform_config(&data_dir, &ca)?;
    let platform = TcpListener::bind("127.0.0.1:0").await?;
    let platform_port = platform.local_addr()?.port();
    // Direct sessions go only to listed targets; loopback only when listed explicitly.
    let resp = allow_platform_target(&http, &base, &admin, platform_port).await?;
    ensure!(
        resp == reqwest::StatusCode::CREATED,
        "allowing the bench platform as a session target: {resp}"
    );
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let direct_waiters: Waiters<Accepted> = Arc::default();
    spawn_platform(
        platform,
        TlsAcceptor::from(platform_cfg.clone()),
        direct_waiters.clone(),
        stop.clone(),
    );

    let closed: Waiters<String> = Arc::default();
    let router = spawn_close_router(
        srv.gateway.events().subscribe(),
        closed.clone(),
        stop.clone(),
    );
    let ctx = Arc::new(Ctx {
        http,
        ws_base: base.replacen("http", "ws", 1),
        base,
        reader,
        closed,
        wait_reply: args.wait_reply,
        direct: direct_waiters,
        platform_port,
        timeout: Duration::from_secs(args.session_timeout),
        store: srv.store.clone(),
        server_rt: handle.clone(),
    });

    let mut result = RunResult {
        run,
        ..Default::default()
    };
    if args.warmup > 0 {
        let (s, f, wall) =
            run_sessions(&ctx, &modems, Mode::Rendezvous, args.warmup, args.parallel).await;
        println!(
            "  warm-up: {} rendezvous sessions ({} failed) in {:.1} s",
            s.len(),
            f.len(),
            wall.as_secs_f64()
        );
    }
    for (phase, mode) in [
        (Phase::Rendezvous, Mode::Rendezvous),
        (Phase::Direct, Mode::Direct),
    ] {
        if !args.phases.contains(&phase) {
            continue;
        }
        let p = latency_phase(&ctx, &modems, mode, args).await?;
        print_latency(
            if mode == Mode::Rendezvous {
                "rendezvous"
            } else {
                "direct"
            },
            &p,
        );
        match mode {
            Mode::Rendezvous => result.rendezvous = Some(p),
            Mode::Direct => result.direct = Some(p),
        }
    }
    if args.phases.contains(&Phase::Throughput) {
        let meter = Meter::start();
        let mut t = ThroughputPhase {
            bytes: args.bytes,
            ..Default::default()
        };
        let cpu = cpu_split();
        let (down, up, messages) = bulk_rendezvous(&ctx, &bulk, &mut reports, args.bytes)
            .await
            .context("rendezvous transfer")?;
        let cpu_after = cpu_split();
        t.rendezvous_server_cpu_s = cpu_after.0 - cpu.0;
        t.rendezvous_bench_cpu_s = cpu_after.1 - cpu.1;
        t.rendezvous_up_messages = messages;
        t.rendezvous_down = mb_per_s(args.bytes, down);
        t.rendezvous_up = mb_per_s(args.bytes, up);
        let (down, up) = bulk_direct(&ctx, &bulk, &mut reports, args.bytes)
            .await
            .context("direct-session transfer")?;
        t.direct_session_down = mb_per_s(args.bytes, down);
        t.direct_session_up = mb_per_s(args.bytes, up);
        let connector = TlsConnector::from(base_tls.for_device(&bulk_credentials)?);
        let (down, up, hs) = bulk_tls(TlsAcceptor::from(platform_cfg), connector, args.bytes)
            .await
            .context("direct TLS transfer")?;
        t.tls_down = mb_per_s(args.bytes, down);
        t.tls_up = mb_per_s(args.bytes, up);
        t.handshake_p50_ms = hs;
        (t.server_cpu_s, t.bench_cpu_s, t.load_before, t.load_after) = meter.stop();
        print_throughput(&t);
        result.throughput = Some(t);
    }

    // Tear down: modems, then the server.
    stop.cancel();
    let lagged = router.await.unwrap_or(0);
    if lagged > 0 {
        println!(
            "  (the close-event router lagged by {lagged} events; the store was read instead)"
        );
    }
    fleet_cancel.cancel();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let stopped = handle.spawn(async move { srv.shutdown().await });
    match tokio::time::timeout(Duration::from_secs(30), stopped).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => println!("  (server shutdown: {e:#})"),
        _ => println!("  (server shutdown did not finish in time)"),
    }
    drop(server_rt);
    drop(dir);
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// Printing

fn print_latency(name: &str, p: &LatencyPhase) {
    println!(
        "  {name}: {} ok, {} failed; p50 {:.1} ms, p90 {:.1}, p99 {:.1}, max {:.1}; {:.1} sessions/s over {:.1} s",
        p.ok, p.failures, p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms, p.sessions_per_s, p.wall_s
    );
    println!(
        "    CPU: server {:.2} s, bench (modems, readers, platform) {:.2} s; teardown p50 {:.1} ms; load {} -> {}",
        p.server_cpu_s, p.bench_cpu_s, p.teardown_p50_ms, p.load_before, p.load_after
    );
    for (reason, n) in &p.failure_reasons {
        println!("    failure x{n}: {reason}");
    }
    let q = &p.queue;
    println!(
        "    TEMPORALCLIENT: {} of {} queued while the device's previous one awaited its OK (queued->sent p50 {:.1} ms, sent {:.1} ms after that OK); others queued->sent p50 {:.1} ms; modem reply (sent->OK) p50 {:.1} ms, p99 {:.1} ms",
        q.behind_previous,
        q.commands,
        q.wait_behind_p50_ms,
        q.sent_after_previous_ok_p50_ms,
        q.wait_other_p50_ms,
        q.reply_p50_ms,
        q.reply_p99_ms
    );
    println!("    timeline after the clock starts (p50 / p99 ms):");
    for (what, p50, p99, n) in &p.timeline {
        println!("      {p50:>8.1} {p99:>8.1}  {what} (n={n})");
    }
}

fn print_throughput(t: &ThroughputPhase) {
    println!(
        "  throughput MB/s (reader->meter / meter->reader): rendezvous {:.1} / {:.1}, direct session {:.1} / {:.1}, plain mutual TLS {:.1} / {:.1}; ratio rendezvous/TLS {:.2} / {:.2}",
        t.rendezvous_down,
        t.rendezvous_up,
        t.direct_session_down,
        t.direct_session_up,
        t.tls_down,
        t.tls_up,
        t.rendezvous_down / t.tls_down,
        t.rendezvous_up / t.tls_up
    );
    println!(
        "    meter->reader arrived in {} WebSocket messages ({:.0} bytes each); rendezvous transfer CPU: server {:.2} s, bench (modem, reader, sink) {:.2} s; full mutual-TLS handshake p50 {:.2} ms; phase CPU: server {:.2} s, bench {:.2} s; load {} -> {}",
        t.rendezvous_up_messages,
        t.bytes as f64 / t.rendezvous_up_messages.max(1) as f64,
        t.rendezvous_server_cpu_s,
        t.rendezvous_bench_cpu_s,
        t.handshake_p50_ms,
        t.server_cpu_s,
        t.bench_cpu_s,
        t.load_before,
        t.load_after
    );
}

/// Medians over the runs, by figure.
fn summarize(runs: &[RunResult]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let mut put = |k: &str, v: Vec<f64>| {
        if !v.is_empty() {
            out.insert(k.to_owned(), stats::median(v).unwrap_or(f64::NAN));
        }
    };
    for (name, get) in [
        (
            "rendezvous",
            (|r: &RunResult| r.rendezvous.clone()) as fn(&RunResult) -> Option<LatencyPhase>,
        ),
        ("direct", |r: &RunResult| r.direct.clone()),
    ] {
        let phases: Vec<LatencyPhase> = runs.iter().filter_map(get).collect();
        let col = |f: fn(&LatencyPhase) -> f64| phases.iter().map(f).collect::<Vec<_>>();
        put(&format!("{name}.p50_ms"), col(|p| p.p50_ms));
        put(&format!("{name}.p90_ms"), col(|p| p.p90_ms));
        put(&format!("{name}.p99_ms"), col(|p| p.p99_ms));
        put(&format!("{name}.max_ms"), col(|p| p.max_ms));
        put(&format!("{name}.sessions_per_s"), col(|p| p.sessions_per_s));
        put(&format!("{name}.failures"), col(|p| p.failures as f64));
        put(
            &format!("{name}.teardown_p50_ms"),
            col(|p| p.teardown_p50_ms),
        );
        put(
            &format!("{name}.server_cpu_ms_per_session"),
            col(|p| p.server_cpu_s * 1000.0 / p.ok.max(1) as f64),
        );
        put(
            &format!("{name}.bench_cpu_ms_per_session"),
            col(|p| p.bench_cpu_s * 1000.0 / p.ok.max(1) as f64),
        );
        put(
            &format!("{name}.queued_behind_previous"),
            col(|p| p.queue.behind_previous as f64),
        );
        put(
            &format!("{name}.modem_reply_p50_ms"),
            col(|p| p.queue.reply_p50_ms),
        );
        // Timeline: the median over runs of each milestone's p50 and p99.
        let mut names: Vec<String> = Vec::new();
        for p in &phases {
            for (what, ..) in &p.timeline {
                if !names.contains(what) {
                    names.push(what.clone());
                }
            }
        }
        for what in names {
            let find = |p: &LatencyPhase| p.timeline.iter().find(|t| t.0 == what).cloned();
            put(
                &format!("{name}.timeline.p50_ms.{what}"),
                phases.iter().filter_map(find).map(|t| t.1).collect(),
            );
            put(
                &format!("{name}.timeline.p99_ms.{what}"),
                phases.iter().filter_map(find).map(|t| t.2).collect(),
            );
        }
    }
    let tp: Vec<&ThroughputPhase> = runs.iter().filter_map(|r| r.throughput.as_ref()).collect();
    let col = |f: fn(&ThroughputPhase) -> f64| tp.iter().map(|t| f(t)).collect::<Vec<_>>();
    put(
        "throughput.rendezvous_down_mb_s",
        col(|t| t.rendezvous_down),
    );
    put("throughput.rendezvous_up_mb_s", col(|t| t.rendezvous_up));
    put(
        "throughput.direct_session_down_mb_s",
        col(|t| t.direct_session_down),
    );
    put(
        "throughput.direct_session_up_mb_s",
        col(|t| t.direct_session_up),
    );
    put("throughput.tls_down_mb_s", col(|t| t.tls_down));
    put("throughput.tls_up_mb_s", col(|t| t.tls_up));
    put(
        "throughput.ratio_down",
        col(|t| t.rendezvous_down / t.tls_down),
    );
    put("throughput.ratio_up", col(|t| t.rendezvous_up / t.tls_up));
    put(
        "throughput.ratio_direct_session_down",
        col(|t| t.rendezvous_down / t.direct_session_down),
    );
    put(
        "throughput.ratio_direct_session_up",
        col(|t| t.rendezvous_up / t.direct_session_up),
    );
    put("throughput.handshake_p50_ms", col(|t| t.handshake_p50_ms));
    put(
        "throughput.rendezvous_server_cpu_ms_per_mb",
        col(|t| t.rendezvous_server_cpu_s * 1000.0 / (2.0 * t.bytes as f64 / 1e6)),
    );
    put(
        "throughput.rendezvous_bench_cpu_ms_per_mb",
        col(|t| t.rendezvous_bench_cpu_s * 1000.0 / (2.0 * t.bytes as f64 / 1e6)),
    );
    out
}

fn print_summary(args: &BenchSessionsArgs, runs: &[RunResult], m: &BTreeMap<String, f64>) {
    println!(
        "\nmedians of {} runs ({} sessions per mode, {} in parallel, {} modems):",
        runs.len(),
        args.sessions,
        args.parallel,
        args.modems
    );
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    for name in ["rendezvous", "direct"] {
        if !m.contains_key(&format!("{name}.p50_ms")) {
            continue;
        }
        println!(
            "  {name:<10} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  failures {:>3}  {:>6.1} sessions/s  CPU/session: server {:.2} ms, bench {:.2} ms",
            get(&format!("{name}.p50_ms")),
            get(&format!("{name}.p99_ms")),
            get(&format!("{name}.max_ms")),
            get(&format!("{name}.failures")),
            get(&format!("{name}.sessions_per_s")),
            get(&format!("{name}.server_cpu_ms_per_session")),
            get(&format!("{name}.bench_cpu_ms_per_session")),
        );
        let prefix = format!("{name}.timeline.p50_ms.");
        let mut rows: Vec<(f64, f64, &str)> = m
            .iter()
            .filter_map(|(k, v)| {
                let what = k.strip_prefix(&prefix)?;
                Some((*v, get(&format!("{name}.timeline.p99_ms.{what}")), what))
            })
            .collect();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        println!("    timeline (medians over runs of p50 / p99 ms after the clock starts):");
        for (p50, p99, what) in rows {
            println!("      {p50:>8.1} {p99:>8.1}  {what}");
        }
    }
    if m.contains_key("throughput.tls_down_mb_s") {
        println!(
            "  throughput MB/s reader->meter: rendezvous {:.1}, direct session {:.1}, plain TLS {:.1}; rendezvous/TLS {:.2}, rendezvous/direct session {:.2}",
            get("throughput.rendezvous_down_mb_s"),
            get("throughput.direct_session_down_mb_s"),
            get("throughput.tls_down_mb_s"),
            get("throughput.ratio_down"),
            get("throughput.ratio_direct_session_down"),
        );
        println!(
            "  throughput MB/s meter->reader: rendezvous {:.1}, direct session {:.1}, plain TLS {:.1}; rendezvous/TLS {:.2}, rendezvous/direct session {:.2}",
            get("throughput.rendezvous_up_mb_s"),
            get("throughput.direct_session_up_mb_s"),
            get("throughput.tls_up_mb_s"),
            get("throughput.ratio_up"),
            get("throughput.ratio_direct_session_up"),
        );
        println!(
            "  rendezvous transfer CPU per MB moved: server {:.2} ms, bench (modem, reader, sink) {:.2} ms",
            get("throughput.rendezvous_server_cpu_ms_per_mb"),
            get("throughput.rendezvous_bench_cpu_ms_per_mb"),
        );
        println!(
            "  full mutual-TLS handshake on loopback: p50 {:.2} ms",
            get("throughput.handshake_p50_ms")
        );
    }
    println!("  load at the end: {}", procfs::loadavg());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_and_medians() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(stats::percentile(&v, 0.5).unwrap_or(f64::NAN), 50.0);
        assert_eq!(stats::percentile(&v, 0.99).unwrap_or(f64::NAN), 99.0);
        assert_eq!(stats::percentile(&v, 1.0).unwrap_or(f64::NAN), 100.0);
        assert_eq!(stats::percentile(&[7.0], 0.99).unwrap_or(f64::NAN), 7.0);
        assert!(stats::percentile(&[], 0.5).unwrap_or(f64::NAN).is_nan());
        assert_eq!(stats::median([3.0, 1.0, 2.0]).unwrap_or(f64::NAN), 2.0);
        assert_eq!(stats::median([4.0, 1.0, 2.0, 3.0]).unwrap_or(f64::NAN), 2.5);
        assert_eq!(stats::median([f64::NAN, 1.0]).unwrap_or(f64::NAN), 1.0);
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchSessionsArgs,
    }

    fn parse(argv: &[&str]) -> Result<BenchSessionsArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("bench-sessions").chain(argv.iter().copied()))
            .map(|c| c.bench)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.sessions, a.parallel, a.modems, a.bytes, a.runs),
            (1000, 50, 50, 64 << 20, 3)
        );
        assert_eq!(
            a.phases,
            vec![Phase::Rendezvous, Phase::Direct, Phase::Throughput]
        );
        let a = parse(&["--phases", "direct,throughput"]).unwrap();
        assert_eq!(a.phases, vec![Phase::Direct, Phase::Throughput]);
        assert!(parse(&["--phases", "fleet"]).is_err());
    }

    /// The whole benchmark, tiny: every phase runs and nothing fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_run_measures_every_phase() {
        let mut args = parse(&[
            "--sessions",
            "6",
            "--parallel",
            "2",
            "--modems",
            "3",
            "--bytes",
            "300000",
            "--runs",
            "1",
            "--warmup",
            "2",
            "--server-threads",
            "1",
        ])
        .unwrap();
        args.session_timeout = 20;
        callhome_sim::install_crypto_provider();
        let r = one_run(&args, 1).await.unwrap();
        for p in [r.rendezvous.unwrap(), r.direct.unwrap()] {
            assert_eq!((p.ok, p.failures), (6, 0), "{:?}", p.failure_reasons);
            assert!(p.p50_ms > 0.0 && p.p50_ms <= p.max_ms);
            assert!(
                p.timeline
                    .iter()
                    .any(|t| t.0.contains("TEMPORALCLIENT sent")),
                "{:?}",
                p.timeline
            );
        }
        let t = r.throughput.unwrap();
        for v in [
            t.rendezvous_down,
            t.rendezvous_up,
            t.direct_session_down,
            t.direct_session_up,
            t.tls_down,
            t.tls_up,
        ] {
            assert!(v.is_finite() && v > 0.0, "{t:?}");
        }
    }
}
