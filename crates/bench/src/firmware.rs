//! `callhome-bench firmware`: firmware campaign throughput of a real server process on a
//! simulated fleet, against a reference measured in the same invocation: the same image
//! served by a plain static HTTPS file server ([`crate::staticfile`]) to the same number of
//! downloads with the same parallelism, fetched by one `curl --parallel` process.
//!
//! - Campaign: each run uploads a fresh image (`--image-mib` MiB; its first bytes name the
//!   run, so no upload is a duplicate) as a new version through `POST /api/v1/firmware`, then
//!   `POST /api/v1/jobs` with a `firmware_update` operation on every registered device and
//!   `max_in_flight` = `--in-flight`, polled every 100 ms until it ends. Per device the
//!   engine asks `VERSION`, sends the update command, serves the image on the device-facing
//!   HTTPS listener (client certificate, per-execution token), takes the install
//!   notification, waits for the restart and the reconnection, and asks `VERSION` again.
//!   Completion time from the POST to the end as the client sees it; per-device latency is
//!   the execution's `finished_at - started_at`; server CPU is `utime + stime` of the
//!   `callhome serve` child before and after; its peak RSS is `VmHWM` (and `VmRSS` sampled at
//!   each poll).
//! - Reference: `callhome-bench serve-static` (a child process) serves the same bytes; one
//!   `curl --parallel --parallel-immediate --parallel-max M -k -s` process fetches them N
//!   times (URLs in a `-K` config file), writing `%{http_code} %{size_download}
//!   %{time_total}` per transfer (curl takes at most 300 in parallel: a larger M is split
//!   evenly over several such processes, each with its share of the URLs). Wall time until
//!   the last curl ends; per-download latency from `time_total`; the static server's CPU
//!   and `VmHWM`. Without `--parallel` in the installed curl, M `curl` processes are started
//!   at a time, in waves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callhome_sim::{Fleet, FleetConfig, FleetTransport, TlsBase};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::fleet::FleetArgs;
use crate::procfs::{
    children_cpu_s, clock_ticks, cpu_s, loadavg, raise_nofile, rss_kib, status_kib,
};
use crate::staticfile::LISTENING;
use crate::stats::{median, percentile};
use crate::sut::{ServerProcess, admin_token, check_limits, http_client, modem_settings, prepare};

/// The model every simulated modem reports, and the one each firmware names.
const MODEL: &str = "BENCH";
/// How often the job is polled (and the server's RSS sampled).
const POLL: Duration = Duration::from_millis(100);

/// `callhome-bench firmware ...`.
#[derive(Debug, clap::Args)]
pub struct FirmwareArgs {
    /// Fleet, server and cache options (as for `bench fleet`; its command-phase and
    /// reference-broker options are not used here).
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Executions in flight (the campaign's `max_in_flight`, and the reference's
    /// `--parallel-max`).
    #[arg(long, default_value_t = 50)]
    pub in_flight: u32,
    /// Size of the firmware image, MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1)]
    pub image_mib: u32,
    /// Skip the static-server reference.
    #[arg(long)]
    pub no_reference: bool,
    /// Let the static server keep connections open (HTTP keep-alive), so curl reuses them;
    /// by default every reference download is a new TCP connection and TLS handshake, as
    /// every modem's download is.
    #[arg(long)]
    pub reference_keep_alive: bool,
    /// Executions per run whose event log is read after the run, for the breakdown of
    /// where a device's time goes (0: none).
    #[arg(long, value_name = "K", default_value_t = 100)]
    pub breakdown_sample: usize,
    /// Give up on a campaign, or on the reference's downloads, after this many seconds.
    #[arg(long, value_name = "S", default_value_t = 3600)]
    pub run_timeout: u64,
    /// The `curl` executable of the reference.
    #[arg(long, value_name = "PATH", default_value = "curl")]
    pub curl: PathBuf,
}

/// One measured rollout: a campaign or the reference's downloads.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Rollout {
    seconds: f64,
    per_s: f64,
    ok: usize,
    failed: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    /// Server CPU (user + system) during the rollout, seconds.
    server_cpu_s: f64,
    /// The same per device (download), milliseconds.
    server_cpu_ms_per_device: f64,
    /// CPU of the client side during the rollout, per device (download), milliseconds: the
    /// simulated fleet (this process) for a campaign, the curl processes for the reference.
    client_cpu_ms_per_device: f64,
    /// Server `VmRSS` when the rollout started, MiB.
    server_rss_before_mib: f64,
    /// Largest `VmRSS` sampled during the rollout, MiB.
    server_rss_sampled_peak_mib: f64,
    /// Server `VmHWM` (peak RSS over the process's life) after the rollout, MiB.
    server_hwm_mib: f64,
    /// Outcome of every execution (campaign) or HTTP status of every download (reference).
    outcomes: BTreeMap<String, usize>,
    /// Simulated modems reporting the new version after the run (campaign).
    #[serde(skip_serializing_if = "Option::is_none")]
    modems_on_new_version: Option<usize>,
    /// Simulator counters during the run (campaign): downloads started, bytes, resumes,
    /// refusals, installs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    sim: BTreeMap<&'static str, u64>,
}

/// A row of the results table: its name and how to read it from a rollout.
type Figure = (&'static str, fn(&Rollout) -> f64);

const ROWS: [Figure; 13] = [
    ("completion time, s", |r| r.seconds),
    ("devices (downloads) per second", |r| r.per_s),
    ("per-device latency p50, ms", |r| r.p50_ms),
    ("per-device latency p95, ms", |r| r.p95_ms),
    ("per-device latency p99, ms", |r| r.p99_ms),
    ("devices done", |r| r.ok as f64),
    ("devices failed", |r| r.failed as f64),
    ("server CPU per device, ms", |r| r.server_cpu_ms_per_device),
    ("server CPU, s", |r| r.server_cpu_s),
    ("client CPU per device, ms", |r| r.client_cpu_ms_per_device),
    ("server RSS before the run, MiB", |r| {
        r.server_rss_before_mib
    }),
    ("server RSS sampled peak, MiB", |r| {
        r.server_rss_sampled_peak_mib
    }),
    ("server peak RSS (VmHWM), MiB", |r| r.server_hwm_mib),
];

/// The steps of one device's update, in order, by event kind (`start` and `finish` are the
/// execution's `started_at` and `finished_at`).
const STEPS: [&str; 9] = [
    "start",
    "version_before",
    "command_acknowledged",
    "download_started",
    "download_completed",
    "install_notified",
    "reconnected",
    "version_seen",
    "finish",
];

fn summarize(seconds: f64, mut latencies_ms: Vec<f64>, failed: usize) -> Rollout {
    latencies_ms.sort_by(f64::total_cmp);
    let ok = latencies_ms.len();
    Rollout {
        seconds,
        per_s: ok as f64 / seconds.max(1e-9),
        ok,
        failed,
        p50_ms: percentile(&latencies_ms, 0.50).unwrap_or(f64::NAN),
        p95_ms: percentile(&latencies_ms, 0.95).unwrap_or(f64::NAN),
        p99_ms: percentile(&latencies_ms, 0.99).unwrap_or(f64::NAN),
        ..Rollout::default()
    }
}

fn ts(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &Rfc3339).ok()
}

fn mib(kib: Option<u64>) -> f64 {
    kib.map_or(f64::NAN, |k| k as f64 / 1024.0)
}

async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).bearer_auth(token).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status} {body}");
    }
    Ok(body)
}

/// A firmware image of `len` bytes: a header naming the run (so no two runs upload the
/// same bytes, which the repository would refuse as a duplicate), then pseudo-random bytes.
fn image(len: usize, stamp: u64, run: usize) -> Vec<u8> {
    let mut v =
        format!("callhome-bench firmware image, invocation {stamp}, run {run}\n").into_bytes();
    let mut x = stamp ^ ((run as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
    while v.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

async fn upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    version: &str,
    file: Vec<u8>,
) -> anyhow::Result<String> {
    let metadata = json!({"version": version, "models": [MODEL], "kind": "image",
                          "notes": "callhome-bench firmware"});
    let form = reqwest::multipart::Form::new()
        .text("metadata", metadata.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(file).file_name("bench.bin"),
        );
    let resp = client
        .post(format!("{base}/api/v1/firmware"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .context("POST /api/v1/firmware")?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("uploading firmware {version}: HTTP {status} {body}");
    }
    body["id"]
        .as_str()
        .map(str::to_owned)
        .context("no id in the upload answer")
}

/// Waits until the server's distribution counts `n` devices of [`MODEL`] (each modem
/// reports its model in the status it sends on connecting; a device whose model is not
/// known would be skipped as incompatible).
async fn wait_models(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let d = get_json(
            client,
            &format!("{base}/api/v1/firmware/distribution"),
            token,
        )
        .await?;
        let reported: u64 = d["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["model"]
                    .as_str()
                    .is_some_and(|m| m.eq_ignore_ascii_case(MODEL))
            })
            .filter_map(|r| r["devices"].as_u64())
            .sum();
        if reported >= n as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {reported} of {n} devices reported model {MODEL} within {} s: {d}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The client side's CPU so far, seconds: this process (the simulated fleet) plus the
/// children it has waited for (the reference's curl processes; the static server is waited
/// for only after its figures are read).
fn client_cpu(ticks: f64) -> f64 {
    let me = std::process::id();
    cpu_s(me, ticks).unwrap_or(f64::NAN) + children_cpu_s(me, ticks).unwrap_or(f64::NAN)
}

/// Reads `/proc` of the server while a rollout runs.
struct Probe {
    pid: u32,
    ticks: f64,
    cpu0: f64,
    /// This process's CPU, or its waited-for children's, at the start.
    client0: f64,
    rss_before_kib: Option<u64>,
    rss_peak_kib: u64,
}

impl Probe {
    fn start(pid: u32, ticks: f64) -> Self {
        let rss = rss_kib(pid);
        Self {
            pid,
            ticks,
            cpu0: cpu_s(pid, ticks).unwrap_or(f64::NAN),
            client0: client_cpu(ticks),
            rss_before_kib: rss,
            rss_peak_kib: rss.unwrap_or(0),
        }
    }

    fn sample(&mut self) {
        if let Some(r) = rss_kib(self.pid) {
            self.rss_peak_kib = self.rss_peak_kib.max(r);
        }
    }

    /// Reads the figures at the rollout's end (before anything else asks the server for
    /// work, such as listing the executions).
    fn finish(mut self) -> Probed {
        self.sample();
        Probed {
            server_cpu_s: cpu_s(self.pid, self.ticks).unwrap_or(f64::NAN) - self.cpu0,
            client_cpu_s: client_cpu(self.ticks) - self.client0,
            rss_before_kib: self.rss_before_kib,
            rss_peak_kib: self.rss_peak_kib,
            hwm_kib: status_kib(self.pid, "VmHWM"),
        }
    }
}

/// What a [`Probe`] read at the rollout's end.
struct Probed {
    server_cpu_s: f64,
    client_cpu_s: f64,
    rss_before_kib: Option<u64>,
    rss_peak_kib: u64,
    hwm_kib: Option<u64>,
}

impl Probed {
    /// Fills the server and client figures of `r`, `n` devices or downloads.
    fn fill(&self, r: &mut Rollout, n: usize) {
        let per = |s: f64| s * 1000.0 / n.max(1) as f64;
        r.server_cpu_s = self.server_cpu_s;
        r.server_cpu_ms_per_device = per(self.server_cpu_s);
        r.client_cpu_ms_per_device = per(self.client_cpu_s);
        r.server_rss_before_mib = mib(self.rss_before_kib);
        r.server_rss_sampled_peak_mib = mib(Some(self.rss_peak_kib));
        r.server_hwm_mib = mib(self.hwm_kib);
    }
}

/// One device's step times, milliseconds between consecutive [`STEPS`] (`NaN` where a step
/// is missing from its log).
type Steps = Vec<f64>;

async fn device_steps(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    job: &str,
    imei: &str,
) -> anyhow::Result<Steps> {
    let d = get_json(
        client,
        &format!("{base}/api/v1/jobs/{job}/devices/{imei}"),
        token,
    )
    .await?;
    let mut at: BTreeMap<&str, OffsetDateTime> = BTreeMap::new();
    if let Some(t) = ts(&d["started_at"]) {
        at.insert("start", t);
    }
    if let Some(t) = ts(&d["finished_at"]) {
        at.insert("finish", t);
    }
    for e in d["events"].as_array().into_iter().flatten() {
        if let (Some(kind), Some(t)) = (e["kind"].as_str(), ts(&e["at"]))
            && let Some(step) = STEPS.iter().find(|s| **s == kind)
        {
            at.entry(step).or_insert(t);
        }
    }
    Ok(STEPS
        .windows(2)
        .map(|w| match (at.get(w[0]), at.get(w[1])) {
            (Some(a), Some(b)) => (*b - *a).as_seconds_f64() * 1000.0,
            _ => f64::NAN,
        })
        .collect())
}

struct Campaign<'a> {
    client: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
    pid: u32,
    ticks: f64,
    in_flight: u32,
    n: usize,
    timeout: Duration,
    sample: usize,
}

impl Campaign<'_> {
    async fn run(
        &self,
        version: &str,
        firmware_id: &str,
        fleet: &Fleet,
        steps: &mut Vec<Steps>,
    ) -> anyhow::Result<Rollout> {
        let (client, base, token) = (self.client, self.base, self.token);
        let before = fleet.counters().snapshot();
        let mut probe = Probe::start(self.pid, self.ticks);
        let t0 = Instant::now();
        let resp = client
            .post(format!("{base}/api/v1/jobs"))
            .bearer_auth(token)
            .json(&json!({"name": format!("bench firmware {version}"),
                          "operation": {"type": "firmware_update", "firmware_id": firmware_id},
                          "target": {"filter": {}},
                          "rollout": {"max_in_flight": self.in_flight, "expires_in_s": self.timeout.as_secs()}}))
            .send()
            .await
            .context("POST /api/v1/jobs")?;
        let status = resp.status();
        let job: Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("creating the campaign: HTTP {status} {job}");
        }
        let id = job["id"].as_str().context("job id")?.to_owned();
        let total = job["progress"]["total"].as_u64().unwrap_or(0);
        if total != self.n as u64 {
            bail!(
                "the campaign targets {total} devices, the fleet has {}: use a fresh --cache-dir",
                self.n
            );
        }
        let last = loop {
            let j = get_json(client, &format!("{base}/api/v1/jobs/{id}"), token).await?;
            probe.sample();
            let state = j["state"].as_str().unwrap_or("");
            if state != "running" && state != "paused" && j["progress"]["in_progress"] == 0 {
                break j;
            }
            if t0.elapsed() > self.timeout {
                bail!(
                    "campaign {id} did not finish within {} s: {j}",
                    self.timeout.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        let seconds = t0.elapsed().as_secs_f64();
        let probed = probe.finish();
        let after = fleet.counters().snapshot();
        let mut latencies = Vec::with_capacity(self.n);
        let mut failed = 0;
        let mut outcomes = BTreeMap::new();
        let mut succeeded = Vec::with_capacity(self.n);
        let mut cursor = String::new();
        loop {
            let page = get_json(
                client,
                &format!("{base}/api/v1/jobs/{id}/devices?limit=1000&cursor={cursor}"),
                token,
            )
            .await?;
            for e in page["items"].as_array().into_iter().flatten() {
                let outcome = e["outcome"]
                    .as_str()
                    .or(e["state"].as_str())
                    .unwrap_or("none");
                *outcomes.entry(outcome.to_owned()).or_insert(0) += 1;
                match (
                    e["state"].as_str(),
                    e["outcome"].as_str(),
                    ts(&e["started_at"]),
                    ts(&e["finished_at"]),
                ) {
                    (Some("succeeded"), Some("updated"), Some(a), Some(b)) => {
                        latencies.push((b - a).as_seconds_f64() * 1000.0);
                        if let Some(imei) = e["imei"].as_str() {
                            succeeded.push(imei.to_owned());
                        }
                    }
                    _ => {
                        failed += 1;
                        if failed <= 5 {
                            eprintln!("bench: campaign {id}: not updated: {e}");
                        }
                    }
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        if last["state"] != "completed" {
            eprintln!("bench: campaign {id} ended {}: {last}", last["state"]);
        }
        let mut r = summarize(seconds, latencies, failed);
        probed.fill(&mut r, self.n);
        r.outcomes = outcomes;
        r.modems_on_new_version = Some(
            fleet
                .handles()
                .iter()
                .filter(|h| h.firmware_version() == version)
                .count(),
        );
        r.sim = BTreeMap::from([
            (
                "downloads_started",
                after.downloads_started - before.downloads_started,
            ),
            (
                "download_bytes",
                after.download_bytes - before.download_bytes,
            ),
            (
                "download_resumes",
                after.download_resumes - before.download_resumes,
            ),
            (
                "downloads_refused",
                after.downloads_refused - before.downloads_refused,
            ),
            ("installs", after.installs - before.installs),
            ("reconnects", after.reconnects - before.reconnects),
        ]);
        // Where a device's time goes: the event logs of a sample spread over the rollout.
        let k = self.sample.min(succeeded.len());
        for i in 0..k {
            let imei = &succeeded[i * succeeded.len() / k];
            match device_steps(client, base, token, &id, imei).await {
                Ok(s) => steps.push(s),
                Err(e) => eprintln!("bench: event log of {imei}: {e:#}"),
            }
        }
        Ok(r)
    }
}

/// The static server of the reference, a child process.
struct StaticServer {
    child: Child,
    pid: u32,
    port: u16,
}

impl StaticServer {
    async fn start(file: &Path, keep_alive: bool, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating this executable")?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the static server's log {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve-static").arg("--file").arg(file);
        if keep_alive {
            cmd.arg("--keep-alive");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .context("starting callhome-bench serve-static")?;
        let pid = child.id().context("the static server exited at once")?;
        let stdout = child.stdout.take().context("static server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix(LISTENING) {
                    return Ok::<_, anyhow::Error>(Some(rest.to_owned()));
                }
            }
            Ok(None)
        })
        .await;
        let addr: std::net::SocketAddr = match line {
            Ok(Ok(Some(a))) => a.parse().with_context(|| format!("address {a:?}"))?,
            Ok(Ok(None)) => bail!(
                "the static server exited before listening; see {}",
                log.display()
            ),
            Ok(Err(e)) => return Err(e.context("reading the static server's output")),
            Err(_) => bail!("the static server did not listen within 30 s"),
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            port: addr.port(),
        })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Whether the installed curl has `--parallel` (7.66 and later).
fn curl_parallel(curl: &Path) -> anyhow::Result<bool> {
    let out = std::process::Command::new(curl)
        .args(["--help", "all"])
        .output()
        .with_context(|| format!("running {} --help all", curl.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--parallel-max"))
}

/// The largest `--parallel-max` curl takes: curl 7.88 (Debian 12) turns more into 300, as
/// measured (500 gave 300 connections at once).
const CURL_PARALLEL_MAX: usize = 300;

const WRITE_OUT: &str = "%{http_code} %{size_download} %{time_total}\\n";

/// Runs `cmd` to its end within `timeout` (killed past it); its standard output.
async fn run_bounded(mut cmd: Command, timeout: Duration) -> anyhow::Result<(String, i32)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting curl")?;
    let mut stdout = child.stdout.take().context("curl stdout")?;
    let mut out = String::new();
    let waited = tokio::time::timeout(timeout, async {
        stdout.read_to_string(&mut out).await?;
        child.wait().await
    })
    .await;
    match waited {
        Ok(Ok(status)) => Ok((out, status.code().unwrap_or(-1))),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("waiting for curl")),
        Err(_) => {
            let _ = child.kill().await;
            bail!("curl did not finish within {} s", timeout.as_secs())
        }
    }
}

struct Reference<'a> {
    curl: &'a Path,
    parallel: bool,
    keep_alive: bool,
    in_flight: u32,
    n: usize,
    timeout: Duration,
    ticks: f64,
    dir: &'a Path,
}

impl Reference<'_> {
    async fn run(&self, file: &Path, size: usize) -> anyhow::Result<Rollout> {
        let server =
            StaticServer::start(file, self.keep_alive, &self.dir.join("static-server.log")).await?;
        let url = format!("https://127.0.0.1:{}/img", server.port);
        let result = async {
            let mut probe = Probe::start(server.pid, self.ticks);
            let t0 = Instant::now();
            let mut out = String::new();
            let mut codes = Vec::new();
            if self.parallel {
                // curl caps --parallel-max at CURL_PARALLEL_MAX: more in flight is split
                // evenly over several curl processes, each with its share of the URLs.
                let procs = (self.in_flight as usize)
                    .div_ceil(CURL_PARALLEL_MAX)
                    .min(self.n);
                let mut set = tokio::task::JoinSet::new();
                for k in 0..procs {
                    let urls = self.n / procs + usize::from(k < self.n % procs);
                    let max = self.in_flight as usize / procs
                        + usize::from(k < self.in_flight as usize % procs);
                    let conf = self.dir.join(format!("curl-reference-{k}.conf"));
                    let mut text = String::with_capacity(urls * 64);
                    for _ in 0..urls {
                        text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
                    }
                    std::fs::write(&conf, text)
                        .with_context(|| format!("writing {}", conf.display()))?;
                    let mut cmd = Command::new(self.curl);
                    cmd.args(["--parallel", "--parallel-immediate", "--parallel-max"])
                        .arg(max.to_string())
                        .args(["-k", "-s", "--connect-timeout", "30", "--max-time", "600"])
                        .args(["-w", WRITE_OUT, "-K"])
                        .arg(&conf);
                    set.spawn(run_bounded(cmd, self.timeout));
                }
                while let Some(r) = set.join_next().await {
                    let (o, code) = r??;
                    out.push_str(&o);
                    codes.push(code);
                }
            } else {
                let mut left = self.n;
                while left > 0 {
                    let wave = left.min(self.in_flight as usize);
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..wave {
                        let mut cmd = Command::new(self.curl);
                        cmd.args(["-k", "-s", "-o", "/dev/null"])
                            .args(["--connect-timeout", "30", "--max-time", "600"])
                            .args(["-w", WRITE_OUT])
                            .arg(&url);
                        let timeout = self.timeout;
                        set.spawn(run_bounded(cmd, timeout));
                    }
                    while let Some(r) = set.join_next().await {
                        let (o, code) = r??;
                        out.push_str(&o);
                        codes.push(code);
                    }
                    probe.sample();
                    left -= wave;
                }
            }
            let seconds = t0.elapsed().as_secs_f64();
            let probed = probe.finish();
            let mut latencies = Vec::with_capacity(self.n);
            let mut failed = 0;
            let mut outcomes = BTreeMap::new();
            for line in out.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let code = f.first().copied().unwrap_or("?");
                *outcomes.entry(format!("http_{code}")).or_insert(0) += 1;
                match (f.get(1).and_then(|s| s.parse::<usize>().ok()), f.get(2)) {
                    (Some(got), Some(t)) if code == "200" && got == size => {
                        latencies.push(t.parse::<f64>().unwrap_or(f64::NAN) * 1000.0);
                    }
                    _ => failed += 1,
                }
            }
            let reported = latencies.len() + failed;
            if reported < self.n {
                failed += self.n - reported;
                outcomes.insert("missing".to_owned(), self.n - reported);
            }
            if let Some(c) = codes.iter().find(|c| **c != 0) {
                eprintln!("bench: reference: curl exited with status {c}");
            }
            let mut r = summarize(seconds, latencies, failed);
            probed.fill(&mut r, self.n);
            r.outcomes = outcomes;
            anyhow::Ok(r)
        }
        .await;
        server.stop().await;
        result
    }
}

pub async fn run(args: FirmwareArgs) -> anyhow::Result<()> {
    callhome_sim::install_crypto_provider();
    let fa = &args.fleet;
    check_limits(fa)?;
    if !(1..=10_000).contains(&args.in_flight) {
        bail!("--in-flight must be between 1 and 10000");
    }
    if !(1..=64).contains(&args.image_mib) {
        bail!("--image-mib must be between 1 and 64 (the server's default upload limit)");
    }
    if fa.no_connect_status {
        bail!(
            "--no-connect-status cannot be used here: the modems report their model in the \
             status they send on connecting, and a device of unknown model is skipped"
        );
    }
    if !(1..=86_400).contains(&args.run_timeout) {
        bail!("--run-timeout must be between 1 and 86400 seconds");
    }
    let parallel = if args.no_reference {
        true
    } else {
        let p = curl_parallel(&args.curl)?;
        if !p {
            eprintln!(
                "bench: {} has no --parallel: the reference starts {} curl processes at a \
                 time, in waves",
                args.curl.display(),
                args.in_flight
            );
        }
        p
    };
    let n = fa.modems;
    let size = args.image_mib as usize * 1024 * 1024;
    let timeout = Duration::from_secs(args.run_timeout);
    raise_nofile(n as u64 + 2 * u64::from(args.in_flight) + 4096);
    let mut enrollment = BTreeMap::new();
    let p = prepare(fa, &mut enrollment).await?;
    let cache_dir = fa.cache_dir.canonicalize()?;
    let server = ServerProcess::start_with(
        fa,
        &p.data_dir,
        &p.admin_password,
        &cache_dir.join("server-firmware.log"),
        &format!("[firmware]\nmodels = [\"{MODEL}\"]\n"),
    )
    .await?;
    let ticks = clock_ticks();
    let stamp = OffsetDateTime::now_utc().unix_timestamp().unsigned_abs();
    let result = async {
        let client = http_client()?;
        let base = server.base();
        let token = admin_token(&client, &base, &p.admin_password).await?;
        let host = server.mqtt.ip().to_string();
        let mut config = FleetConfig::new(
            &fa.first_imei,
            n,
            modem_settings(&host, server.mqtt.port(), true, fa),
        );
        config.connect_concurrency = fa.connect_concurrency;
        config.models = vec![MODEL.to_owned()];
        let fleet = Fleet::start(
            config,
            FleetTransport::MutualTls {
                base: TlsBase::new(&p.ca_pem)?,
                credentials: p.credentials.clone(),
            },
        )?;
        if !fleet
            .wait_all_connected(Duration::from_secs(fa.connect_timeout))
            .await
        {
            bail!("the fleet did not connect within {} s", fa.connect_timeout);
        }
        wait_models(
            &client,
            &base,
            &token,
            n,
            Duration::from_secs(fa.connect_timeout),
        )
        .await?;
        eprintln!(
            "bench: {n} modems connected and reporting model {MODEL}; {} runs, {} in flight, \
             {} MiB image",
            fa.runs, args.in_flight, args.image_mib
        );
        let campaign = Campaign {
            client: &client,
            base: &base,
            token: &token,
            pid: server.pid,
            ticks,
            in_flight: args.in_flight,
            n,
            timeout,
            sample: args.breakdown_sample,
        };
        let reference = Reference {
            curl: &args.curl,
            parallel,
            keep_alive: args.reference_keep_alive,
            in_flight: args.in_flight,
            n,
            timeout,
            ticks,
            dir: &cache_dir,
        };
        let image_file = cache_dir.join("firmware-bench-image.bin");
        let mut campaigns = Vec::new();
        let mut references = Vec::new();
        let mut steps = Vec::new();
        for run in 0..fa.runs {
            let version = format!("9.{stamp}.{}", run + 1);
            let bytes = image(size, stamp, run + 1);
            std::fs::write(&image_file, &bytes)
                .with_context(|| format!("writing {}", image_file.display()))?;
            let t = Instant::now();
            let firmware_id = upload(&client, &base, &token, &version, bytes).await?;
            eprintln!(
                "bench: run {}: uploaded {version} ({} MiB) in {:.2} s; load {}",
                run + 1,
                args.image_mib,
                t.elapsed().as_secs_f64(),
                loadavg()
            );
            let c = campaign
                .run(&version, &firmware_id, &fleet, &mut steps)
                .await?;
            eprintln!(
                "bench: run {}: campaign {:.1} s ({:.1}/s), p50 {:.0} ms, p99 {:.0} ms, \
                 {} failed {:?}, server CPU {:.2} ms/device, VmHWM {:.0} MiB, sim {:?}",
                run + 1,
                c.seconds,
                c.per_s,
                c.p50_ms,
                c.p99_ms,
                c.failed,
                c.outcomes,
                c.server_cpu_ms_per_device,
                c.server_hwm_mib,
                c.sim
            );
            campaigns.push(c);
            if !args.no_reference {
                let r = reference.run(&image_file, size).await?;
                eprintln!(
                    "bench: run {}: static server + curl {:.2} s ({:.0}/s), p50 {:.1} ms, \
                     p99 {:.1} ms, {} failed {:?}, server CPU {:.3} ms/download, VmHWM {:.0} MiB",
                    run + 1,
                    r.seconds,
                    r.per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.failed,
                    r.outcomes,
                    r.server_cpu_ms_per_device,
                    r.server_hwm_mib
                );
                references.push(r);
            }
        }
        let _ = std::fs::remove_file(&image_file);
        fleet.shutdown().await;
        anyhow::Ok((campaigns, references, steps))
    }
    .await;
    server.stop().await;
    let (campaigns, references, steps) = result?;
    report(&args, &campaigns, &references, &steps, parallel)
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| {
        if v.abs() >= 100.0 || v == v.trunc() {
            format!("{v:.0}")
        } else if v.abs() >= 1.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.3}")
        }
    })
}

fn report(
    args: &FirmwareArgs,
    campaigns: &[Rollout],
    references: &[Rollout],
    steps: &[Steps],
    parallel: bool,
) -> anyhow::Result<()> {
    let fa = &args.fleet;
    let med = |v: &[Rollout], f: fn(&Rollout) -> f64| median(v.iter().map(f));
    println!(
        "\nbench firmware: {} modems, {} in flight, {} MiB image, reboot delay {} ms, medians of {} runs",
        fa.modems, args.in_flight, args.image_mib, fa.reboot_delay_ms, fa.runs
    );
    println!(
        "reference: static HTTPS server (hyper + rustls, {}) and {}",
        if args.reference_keep_alive {
            "keep-alive"
        } else {
            "one connection per download"
        },
        if parallel {
            let procs = (args.in_flight as usize).div_ceil(CURL_PARALLEL_MAX);
            if procs == 1 {
                format!("one `curl --parallel --parallel-max {}`", args.in_flight)
            } else {
                format!(
                    "{procs} `curl --parallel` processes sharing {} in flight and the URLs \
                     (curl takes at most --parallel-max {CURL_PARALLEL_MAX})",
                    args.in_flight
                )
            }
        } else {
            format!(
                "{} `curl` processes at a time (no --parallel)",
                args.in_flight
            )
        }
    );
    println!(
        "| figure | firmware campaign | static server + curl (reference) | campaign / reference |"
    );
    println!("|---|---:|---:|---:|");
    for (name, f) in ROWS {
        let a = med(campaigns, f);
        let b = med(references, f);
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        println!("| {name} | {} | {} | {ratio} |", show(a), show(b));
    }
    println!(
        "\nruns: campaign {} s; reference {} s",
        campaigns
            .iter()
            .map(|r| format!("{:.1}", r.seconds))
            .collect::<Vec<_>>()
            .join(" / "),
        references
            .iter()
            .map(|r| format!("{:.2}", r.seconds))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    if !steps.is_empty() {
        println!(
            "\nwhere a device's time goes ({} executions sampled over the runs), ms",
            steps.len()
        );
        println!("| step | p50 | p95 | max |");
        println!("|---|---:|---:|---:|");
        for (i, w) in STEPS.windows(2).enumerate() {
            let mut v: Vec<f64> = steps
                .iter()
                .filter_map(|s| s.get(i).copied())
                .filter(|x| x.is_finite())
                .collect();
            v.sort_by(f64::total_cmp);
            println!(
                "| {} -> {} | {} | {} | {} |",
                w[0],
                w[1],
                show(percentile(&v, 0.50)),
                show(percentile(&v, 0.95)),
                show(v.last().copied())
            );
        }
    }
    if fa.json {
        println!(
            "{}",
            serde_json::to_string(&json!({
                "modems": fa.modems, "in_flight": args.in_flight, "image_mib": args.image_mib,
                "campaign": campaigns, "reference": references,
                "steps": STEPS, "step_samples_ms": steps,
            }))?
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_differ_per_run_and_have_their_size() {
        let a = image(1 << 20, 7, 1);
        let b = image(1 << 20, 7, 2);
        assert_eq!(a.len(), 1 << 20);
        assert_eq!(b.len(), 1 << 20);
        assert_ne!(a, b);
        assert_eq!(a, image(1 << 20, 7, 1));
        assert!(a.starts_with(b"callhome-bench firmware image"));
    }
}
