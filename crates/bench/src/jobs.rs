//! `callhome-bench jobs`: bulk-job throughput of a real server process on a simulated fleet,
//! against a reference measured in the same run: the same change driven by a client script
//! through the command API, with as many devices in parallel as the job has in flight.
//!
//! Each run changes `DNS_period` on every modem (a new value each run, so every modem has
//! something to write): `GETCONFIG`, one `SETPARAM`, the restart it needs (the simulated
//! modems drop their connection and come back after `--reboot-delay-ms`), and the
//! read-back `GETCONFIG`.
//!
//! - Job: `POST /api/v1/jobs` (`set_keys`, every registered device, `max_in_flight` =
//!   `--in-flight`), polled until it ends. Completion time from the POST to the end as the
//!   client sees it; per-device latency is the execution's `finished_at - started_at`.
//! - Reference: `--in-flight` workers, each taking the next device and sending the same four
//!   commands through `POST /api/v1/devices/{imei}/commands?wait_s=...`, polling the device
//!   until it has reconnected after the restart (as the engine does), with the same values.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use callhome_sim::{Fleet, FleetConfig, FleetTransport, TlsBase};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fleet::FleetArgs;
use crate::procfs::{clock_ticks, raise_nofile};
use crate::stats::{median, percentile};
use crate::sut::{ServerProcess, admin_token, check_limits, http_client, modem_settings, prepare};

/// `callhome-bench jobs ...`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Fleet, server and cache options (as for `bench fleet`; its command-phase and
    /// reference-broker options are not used here).
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Executions in flight (the job's `max_in_flight`, and the reference's workers).
    #[arg(long, default_value_t = 50)]
    pub in_flight: u32,
    /// Skip the client-script reference.
    #[arg(long)]
    pub no_reference: bool,
}

/// A row of the results table: its name and how to read it from a rollout.
type Figure = (&'static str, fn(&Rollout) -> f64);

/// One measured rollout.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Rollout {
    seconds: f64,
    per_s: f64,
    ok: usize,
    failed: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
}

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
    }
}

fn ts(v: &Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v.as_str()?, &Rfc3339).ok()
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

async fn post_json(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    let out: Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST {url}: HTTP {status} {out}");
    }
    Ok(out)
}

async fn job_rollout(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    in_flight: u32,
    value: u32,
    n: usize,
) -> anyhow::Result<Rollout> {
    let t0 = Instant::now();
    let job = post_json(
        client,
        &format!("{base}/api/v1/jobs"),
        token,
        &json!({"name": format!("bench DNS_period {value}"),
                "operation": {"type": "set_keys", "keys": {"DNS_period": value.to_string()}},
                "target": {"filter": {}},
                "rollout": {"max_in_flight": in_flight, "expires_in_s": 3600}}),
    )
    .await?;
    let id = job["id"].as_str().context("job id")?.to_owned();
    let total = job["progress"]["total"].as_u64().unwrap_or(0);
    if total != n as u64 {
        bail!("the job targets {total} devices, the fleet has {n}: use a fresh --cache-dir");
    }
    loop {
        let j = get_json(client, &format!("{base}/api/v1/jobs/{id}"), token).await?;
        let state = j["state"].as_str().unwrap_or("");
        if state != "running" && state != "paused" && j["progress"]["in_progress"] == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(3600) {
            bail!("job {id} did not finish within an hour: {j}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(n);
    let mut failed = 0;
    let mut cursor = String::new();
    loop {
        let page = get_json(
            client,
            &format!("{base}/api/v1/jobs/{id}/devices?limit=1000&cursor={cursor}"),
            token,
        )
        .await?;
        for e in page["items"].as_array().into_iter().flatten() {
            match (
                e["state"].as_str(),
                ts(&e["started_at"]),
                ts(&e["finished_at"]),
            ) {
                (Some("succeeded"), Some(a), Some(b)) => {
                    latencies.push((b - a).as_seconds_f64() * 1000.0)
                }
                _ => failed += 1,
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    Ok(summarize(seconds, latencies, failed))
}

/// The four commands of one device, sent by a client through the command API.
async fn script_device(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    imei: &str,
    value: u32,
) -> anyhow::Result<()> {
    let url = format!("{base}/api/v1/devices/{imei}/commands?wait_s=60");
    let send = |command: String| {
        let url = url.clone();
        async move {
            let c = post_json(
                client,
                &url,
                token,
                &json!({"command": command, "timeout_s": 30}),
            )
            .await?;
            if c["state"] != "succeeded" {
                bail!("{imei}: {command}: {c}");
            }
            anyhow::Ok(c)
        }
    };
    send("AT^MTXTUNNEL=GETCONFIG".to_owned()).await?;
    send(format!("AT^MTXTUNNEL=SETPARAM,DNS_period,{value}")).await?;
    let ack = send("AT^MTXTUNNEL=REBOOT".to_owned()).await?;
    let since = ts(&ack["completed_at"]).context("completed_at")?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let d = get_json(client, &format!("{base}/api/v1/devices/{imei}"), token).await?;
        if d["online"] == true && ts(&d["connected_at"]).is_some_and(|c| c > since) {
            break;
        }
        if Instant::now() > deadline {
            bail!("{imei} did not come back after the restart");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let back = send("AT^MTXTUNNEL=GETCONFIG".to_owned()).await?;
    let want = format!("DNS_period: {value}");
    if !back["reply"].as_str().unwrap_or("").contains(&want) {
        bail!("{imei}: read-back lacks {want}");
    }
    Ok(())
}

async fn script_rollout(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    workers: u32,
    value: u32,
    imeis: &[String],
) -> Rollout {
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let imeis = Arc::new(imeis.to_vec());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (client, base, token, next, imeis) = (
            client.clone(),
            base.to_owned(),
            token.to_owned(),
            next.clone(),
            imeis.clone(),
        );
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(imei) = imeis.get(i) else { break };
                let t = Instant::now();
                match script_device(&client, &base, &token, imei, value).await {
                    Ok(()) => lat.push(t.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => {
                        failed += 1;
                        eprintln!("bench: reference: {e:#}");
                    }
                }
            }
            (lat, failed)
        });
    }
    let mut lat = Vec::with_capacity(imeis.len());
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((l, f)) = r {
            lat.extend(l);
            failed += f;
        }
    }
    summarize(t0.elapsed().as_secs_f64(), lat, failed)
}

pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    callhome_sim::install_crypto_provider();
    let fa = &args.fleet;
    check_limits(fa)?;
    if !(1..=10_000).contains(&args.in_flight) {
        bail!("--in-flight must be between 1 and 10000");
    }
    let n = fa.modems;
    raise_nofile(n as u64 + 4096);
    let mut enrollment = std::collections::BTreeMap::new();
    let p = prepare(fa, &mut enrollment).await?;
    let cache_dir = fa.cache_dir.canonicalize()?;
    let server = ServerProcess::start(
        fa,
        &p.data_dir,
        &p.admin_password,
        &cache_dir.join("server-jobs.log"),
    )
    .await?;
    let _ = clock_ticks();
    let result = async {
        let client = http_client()?;
        let base = server.base();
        let token = admin_token(&client, &base, &p.admin_password).await?;
        let host = server.mqtt.ip().to_string();
        let mut config = FleetConfig::new(&fa.first_imei, n, modem_settings(&host, server.mqtt.port(), true, fa));
        config.connect_concurrency = fa.connect_concurrency;
        let fleet = Fleet::start(
            config,
            FleetTransport::MutualTls {
                base: TlsBase::new(&p.ca_pem)?,
                credentials: p.credentials.clone(),
            },
        )?;
        if !fleet.wait_all_connected(Duration::from_secs(fa.connect_timeout)).await {
            bail!("the fleet did not connect within {} s", fa.connect_timeout);
        }
        eprintln!("bench: {n} modems connected; {} runs, {} in flight", fa.runs, args.in_flight);
        let imeis: Vec<String> = p.imeis.iter().map(ToString::to_string).collect();
        let mut jobs = Vec::new();
        let mut scripts = Vec::new();
        for run in 0..fa.runs {
            let value = 300 + 10 * u32::try_from(run).unwrap_or(0) * 2;
            let j = job_rollout(&client, &base, &token, args.in_flight, value, n).await?;
            eprintln!(
                "bench: run {}: job {:.1} s ({:.0}/s), p50 {:.0} ms, p99 {:.0} ms, {} failed",
                run + 1, j.seconds, j.per_s, j.p50_ms, j.p99_ms, j.failed
            );
            jobs.push(j);
            if !args.no_reference {
                let s = script_rollout(&client, &base, &token, args.in_flight, value + 10, &imeis).await;
                eprintln!(
                    "bench: run {}: client script {:.1} s ({:.0}/s), p50 {:.0} ms, p99 {:.0} ms, {} failed",
                    run + 1, s.seconds, s.per_s, s.p50_ms, s.p99_ms, s.failed
                );
                scripts.push(s);
            }
        }
        fleet.shutdown().await;
        anyhow::Ok((jobs, scripts))
    }
    .await;
    server.stop().await;
    let (jobs, scripts) = result?;
    let med = |v: &[Rollout], f: fn(&Rollout) -> f64| median(v.iter().map(f));
    let rows: [Figure; 7] = [
        ("completion time, s", |r| r.seconds),
        ("devices per second", |r| r.per_s),
        ("per-device latency p50, ms", |r| r.p50_ms),
        ("per-device latency p95, ms", |r| r.p95_ms),
        ("per-device latency p99, ms", |r| r.p99_ms),
        ("devices done", |r| r.ok as f64),
        ("devices failed", |r| r.failed as f64),
    ];
    println!(
        "\nbench jobs: {n} modems, {} in flight, reboot delay {} ms, medians of {} runs",
        args.in_flight, fa.reboot_delay_ms, fa.runs
    );
    println!("| figure | job engine | client script (reference) | job / reference |");
    println!("|---|---:|---:|---:|");
    for (name, f) in rows {
        let a = med(&jobs, f);
        let b = med(&scripts, f);
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        let show = |v: Option<f64>| {
            v.map_or("-".to_owned(), |v| {
                if v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
        };
        println!("| {name} | {} | {} | {ratio} |", show(a), show(b));
    }
    if fa.json {
        println!(
            "{}",
            serde_json::to_string(&json!({"jobs": jobs, "reference": scripts}))?
        );
    }
    Ok(())
}
