//! `callhome jobs ...`: bulk operations over the fleet (create, list, inspect, pause,
//! resume, cancel) and a live view of a job's progress.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::commands::api::{
    Api, ApiArgs, cell, paren, parse_key_value, print_items, print_json_lines, print_table,
};

/// How often a watched job is polled.
const POLL: Duration = Duration::from_millis(500);
/// Failed devices listed when a job ends badly.
const FAILED_SHOWN: usize = 20;
/// Job states after which nothing changes.
const FINAL_STATES: [&str; 4] = ["completed", "aborted", "cancelled", "expired"];

/// `callhome jobs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum JobsAction {
    /// Start a job on a set of devices.
    Create(Box<CreateArgs>),
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_parser = ["running", "paused", "completed", "aborted", "cancelled", "expired"])]
        state: Option<String>,
        /// Print each job as a line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job.
    Get {
        /// Job id.
        id: String,
        /// Print the job as the API returns it.
        #[arg(long)]
        json: bool,
    },
    /// List a job's devices and how each one went.
    Devices {
        /// Job id.
        id: String,
        /// Only devices in this state.
        #[arg(long, value_parser = ["pending", "in_progress", "succeeded", "failed", "cancelled", "expired", "skipped"])]
        state: Option<String>,
        /// Print each device as a line of JSON (with its per-key result).
        #[arg(long)]
        json: bool,
    },
    /// Stop starting new devices (the ones in flight finish).
    Pause {
        /// Job id.
        id: String,
    },
    /// Start devices again after a pause.
    Resume {
        /// Job id.
        id: String,
    },
    /// Cancel the devices not started yet and end the job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Follow a job until it ends: exits 0 if it completed without failures.
    Watch {
        /// Job id.
        id: String,
    },
}

/// What a job does on each device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Op {
    /// Apply each device's desired configuration.
    ApplyConfig,
    /// Set keys (--key, --unset) in each device's overrides, then apply.
    SetKeys,
    /// Set the caller whitelists (--csd, --sms) in each device's overrides, then apply.
    SetWhitelists,
    /// Send one AT command (--command).
    At,
    /// Restart the modem and wait until it is back.
    Reboot,
    /// Install a firmware from the repository (--firmware ID): a firmware campaign.
    FirmwareUpdate,
}

/// When a configuration change restarts the modem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// When a changed key needs it.
    Auto,
    /// After any change.
    Always,
    /// Never (changes wait for the next restart).
    Never,
}

impl Restart {
    /// The API's restart policy.
    pub fn policy(self) -> callhome_core::jobs::RestartPolicy {
        use callhome_core::jobs::RestartPolicy;
        match self {
            Restart::Auto => RestartPolicy::Auto,
            Restart::Always => RestartPolicy::Always,
            Restart::Never => RestartPolicy::Never,
        }
    }

    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Restart::Auto => "auto",
            Restart::Always => "always",
            Restart::Never => "never",
        }
    }
}

/// `callhome jobs create` arguments.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// What to do on each device.
    #[arg(long, value_enum)]
    pub op: Op,
    /// With set-keys: KEY=VALUE to set (repeatable).
    #[arg(long = "key", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub keys: Vec<(String, String)>,
    /// With set-keys: a key to remove from the desired configuration (repeatable).
    #[arg(long = "unset", value_name = "KEY")]
    pub unset: Vec<String>,
    /// With set-whitelists: a number allowed to make CSD calls (repeatable; a list not
    /// given is set empty).
    #[arg(long = "csd", value_name = "NUMBER")]
    pub csd: Vec<String>,
    /// With set-whitelists: a number allowed to send SMS commands (repeatable; a list
    /// not given is set empty).
    #[arg(long = "sms", value_name = "NUMBER")]
    pub sms: Vec<String>,
    /// With at: the AT command to send, e.g. 'AT+CSQ'.
    #[arg(long, value_name = "AT")]
    pub command: Option<String>,
    /// With firmware-update: the firmware's id (`callhome firmware list`).
    #[arg(long, value_name = "ID")]
    pub firmware: Option<String>,
    /// With firmware-update: install even on devices that already run its version.
    #[arg(long)]
    pub force: bool,
    /// With firmware-update: seconds a modem has to download, install, restart and come
    /// back (default 900).
    #[arg(long, value_name = "S")]
    pub install_timeout: Option<u32>,
    /// Which devices.
    #[command(flatten)]
    pub target: TargetArgs,
    /// How fast.
    #[command(flatten)]
    pub rollout: RolloutArgs,
    /// With configuration operations: when to restart the modem.
    #[arg(long, value_enum)]
    pub restart: Option<Restart>,
    /// A name for the job.
    #[arg(long)]
    pub name: Option<String>,
    /// Follow the job until it ends (as `callhome jobs watch`).
    #[arg(long)]
    pub watch: bool,
}

/// A job's target, as flags (exactly one kind).
#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    /// Target (device-list filter): devices of this model.
    #[arg(long, value_name = "MODEL")]
    pub filter_model: Option<String>,
    /// Target (device-list filter): devices reporting this firmware version.
    #[arg(long, value_name = "VERSION")]
    pub filter_firmware: Option<String>,
    /// Target: devices matching a tag expression, e.g. 'region:north and not pilot'.
    #[arg(long, value_name = "EXPR")]
    pub tag_expr: Option<String>,
    /// Target: this device (repeatable).
    #[arg(long = "imei", value_name = "IMEI")]
    pub imeis: Vec<String>,
    /// Target: the IMEIs in this file, one per line (blank lines and # comments skipped).
    #[arg(long, value_name = "FILE")]
    pub imeis_file: Option<PathBuf>,
    /// Target (device-list filter): devices with this tag.
    #[arg(long, value_name = "TAG")]
    pub filter_tag: Option<String>,
    /// Target (device-list filter): devices online (true) or offline (false) now.
    #[arg(long, value_name = "BOOL")]
    pub filter_online: Option<bool>,
    /// Target (device-list filter): devices in this drift state.
    #[arg(long, value_parser = ["in_sync", "drifted", "unknown"])]
    pub filter_drift: Option<String>,
    /// Target (device-list filter): devices with this text in the IMEI or the name.
    #[arg(long, value_name = "TEXT")]
    pub filter_q: Option<String>,
}

/// A job's rollout controls, as flags.
#[derive(Debug, clap::Args)]
pub struct RolloutArgs {
    /// Most devices in progress at once.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Most devices started in any minute.
    #[arg(long, value_name = "N")]
    pub max_per_minute: Option<u32>,
    /// Ramp-up: devices started per minute at first.
    #[arg(long, value_name = "N", requires_all = ["ramp_factor", "ramp_every"])]
    pub ramp_base: Option<u32>,
    /// Ramp-up: growth factor of the start rate.
    #[arg(long, value_name = "F", requires_all = ["ramp_base", "ramp_every"])]
    pub ramp_factor: Option<f64>,
    /// Ramp-up: successes between two increases of the start rate.
    #[arg(long, value_name = "N", requires_all = ["ramp_base", "ramp_factor"])]
    pub ramp_every: Option<u32>,
    /// Waves as cumulative percentages of the devices, ending at 100, e.g. 10,50,100.
    #[arg(long, value_name = "P,P,...", value_delimiter = ',')]
    pub waves: Vec<f64>,
    /// Abort when this percentage of the finished devices has failed...
    #[arg(long, value_name = "P", requires = "abort_min_executed")]
    pub abort_failure_percent: Option<f64>,
    /// ...once at least this many devices have finished.
    #[arg(long, value_name = "N", requires = "abort_failure_percent")]
    pub abort_min_executed: Option<u32>,
    /// Devices not done by then end expired: 3600, 90s, 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_s)]
    pub expires_in: Option<u64>,
    /// Reply timeout of each command the job sends, in seconds.
    #[arg(long, value_name = "S")]
    pub command_timeout: Option<u32>,
}

/// Runs `callhome jobs ...`.
pub async fn run(api: &ApiArgs, action: JobsAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        JobsAction::Create(args) => create(&api, &args).await,
        JobsAction::List { state, json } => {
            let query: Vec<(&str, String)> = state.into_iter().map(|s| ("state", s)).collect();
            let jobs = api.list_all("/api/v1/jobs", &query, None).await?;
            if json {
                print_json_lines(&jobs);
            } else {
                print_jobs(&jobs);
            }
            Ok(())
        }
        JobsAction::Get { id, json } => {
            let job = api.get(&job_path(&id, "")?, &[]).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
            Ok(())
        }
        JobsAction::Devices { id, state, json } => {
            let query: Vec<(&str, String)> = state.into_iter().map(|s| ("state", s)).collect();
            let path = job_path(&id, "/devices")?;
            if json {
                return api
                    .each_page(&path, &query, None, |items| {
                        print_json_lines(&items);
                        Ok(())
                    })
                    .await;
            }
            let devices = api.list_all(&path, &query, None).await?;
            print_job_devices(&devices);
            Ok(())
        }
        JobsAction::Pause { id } => control(&api, &id, "pause").await,
        JobsAction::Resume { id } => control(&api, &id, "resume").await,
        JobsAction::Cancel { id } => control(&api, &id, "cancel").await,
        JobsAction::Watch { id } => {
            let job = watch(&api, &id).await?;
            check_outcome(&api, &job).await
        }
    }
}

/// `/api/v1/jobs/{id}{suffix}`, the id checked so it cannot change the path.
pub(crate) fn job_path(id: &str, suffix: &str) -> anyhow::Result<String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        bail!("{id:?} is not a job id");
    }
    Ok(format!("/api/v1/jobs/{id}{suffix}"))
}

async fn control(api: &Api, id: &str, verb: &str) -> anyhow::Result<()> {
    let job = api.post(&job_path(id, &format!("/{verb}"))?, None).await?;
    println!(
        "job {}: {}{}",
        cell(&job["id"]),
        cell(&job["state"]),
        paren(&job["state_reason"])
    );
    Ok(())
}

async fn create(api: &Api, args: &CreateArgs) -> anyhow::Result<()> {
    submit(api, &create_body(args)?, args.watch).await
}

/// Creates the job `body` describes and, with `watch`, follows it to its end (an error if
/// any device failed).
pub(crate) async fn submit(api: &Api, body: &Value, watch_it: bool) -> anyhow::Result<()> {
    let job = api.post("/api/v1/jobs", Some(body)).await?;
    let id = job["id"]
        .as_str()
        .context("the server answered without a job id")?
        .to_owned();
    println!(
        "created job {id}: {} on {} devices, {}",
        describe_operation(&job["operation"]),
        progress(&job).total,
        cell(&job["state"])
    );
    if !watch_it {
        println!("follow it with: callhome jobs watch {id}");
        return Ok(());
    }
    let job = watch(api, &id).await?;
    check_outcome(api, &job).await
}

/// The `POST /api/v1/jobs` body for `args`.
fn create_body(args: &CreateArgs) -> anyhow::Result<Value> {
    let only = |given: bool, flag: &str, op: &str| -> anyhow::Result<()> {
        if given {
            bail!("{flag} goes only with --op {op}");
        }
        Ok(())
    };
    if args.op != Op::SetKeys {
        only(
            !args.keys.is_empty() || !args.unset.is_empty(),
            "--key/--unset",
            "set-keys",
        )?;
    }
    if args.op != Op::SetWhitelists {
        only(
            !args.csd.is_empty() || !args.sms.is_empty(),
            "--csd/--sms",
            "set-whitelists",
        )?;
    }
    if args.op != Op::At {
        only(args.command.is_some(), "--command", "at")?;
    }
    if args.op != Op::FirmwareUpdate {
        only(
            args.firmware.is_some() || args.force || args.install_timeout.is_some(),
            "--firmware/--force/--install-timeout",
            "firmware-update",
        )?;
    }
    let operation = match args.op {
        Op::ApplyConfig => json!({"type": "apply_config"}),
        Op::Reboot => json!({"type": "reboot"}),
        Op::SetKeys => {
            if args.keys.is_empty() && args.unset.is_empty() {
                bail!("--op set-keys needs at least one --key KEY=VALUE or --unset KEY");
            }
            let mut keys = Map::new();
            for (k, v) in &args.keys {
                keys.insert(k.clone(), json!(v));
            }
            for k in &args.unset {
                keys.insert(k.clone(), Value::Null);
            }
            json!({"type": "set_keys", "keys": keys})
        }
        Op::SetWhitelists => {
            if args.csd.is_empty() && args.sms.is_empty() {
                bail!("--op set-whitelists needs --csd and/or --sms numbers");
            }
            json!({"type": "set_whitelists", "csd": args.csd, "sms": args.sms})
        }
        Op::At => {
            let command = args
                .command
                .as_deref()
                .context("--op at needs --command 'AT...'")?;
            json!({"type": "at_command", "command": command})
        }
        Op::FirmwareUpdate => {
            let id = args
                .firmware
                .as_deref()
                .context("--op firmware-update needs --firmware ID (see callhome firmware list)")?;
            let mut op = json!({"type": "firmware_update", "firmware_id": id, "force": args.force});
            if let Some(t) = args.install_timeout {
                op["install_timeout_s"] = json!(t);
            }
            op
        }
    };
    let mut body = json!({
        "operation": operation,
        "target": target(&args.target)?,
        "rollout": rollout(&args.rollout),
    });
    if let Some(r) = args.restart {
        body["restart"] = json!(r.as_str());
    }
    if let Some(n) = &args.name {
        body["name"] = json!(n);
    }
    Ok(body)
}

pub(crate) fn target(args: &TargetArgs) -> anyhow::Result<Value> {
    let mut imeis = args.imeis.clone();
    if let Some(path) = &args.imeis_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        imeis.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        if imeis.is_empty() {
            bail!("{} lists no IMEI", path.display());
        }
    }
    let mut filter = Map::new();
    if let Some(t) = &args.filter_tag {
        filter.insert("tag".into(), json!(t));
    }
    if let Some(o) = args.filter_online {
        filter.insert("online".into(), json!(o));
    }
    if let Some(d) = &args.filter_drift {
        filter.insert("drift".into(), json!(d));
    }
    if let Some(q) = &args.filter_q {
        filter.insert("q".into(), json!(q));
    }
    if let Some(m) = &args.filter_model {
        filter.insert("model".into(), json!(m));
    }
    if let Some(f) = &args.filter_firmware {
        filter.insert("firmware".into(), json!(f));
    }
    let mut targets = Vec::new();
    if let Some(e) = &args.tag_expr {
        targets.push(json!({"tag_expr": e}));
    }
    if !imeis.is_empty() {
        targets.push(json!({"imeis": imeis}));
    }
    if !filter.is_empty() {
        targets.push(json!({"filter": filter}));
    }
    match targets.len() {
        1 => Ok(targets.remove(0)),
        0 => bail!(
            "choose the devices: --tag-expr EXPR, --imei IMEI... / --imeis-file FILE, or \
             --filter-tag/--filter-online/--filter-drift/--filter-q"
        ),
        _ => bail!("give only one kind of target: --tag-expr, --imei/--imeis-file, or --filter-*"),
    }
}

pub(crate) fn rollout(args: &RolloutArgs) -> Value {
    let mut r = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            r.insert(k.into(), v);
        }
    };
    put("max_in_flight", args.max_in_flight.map(|n| json!(n)));
    put("max_per_minute", args.max_per_minute.map(|n| json!(n)));
    if let (Some(base), Some(factor), Some(every)) =
        (args.ramp_base, args.ramp_factor, args.ramp_every)
    {
        put(
            "ramp",
            Some(
                json!({"base_per_minute": base, "increment_factor": factor, "every_succeeded": every}),
            ),
        );
    }
    put("waves", (!args.waves.is_empty()).then(|| json!(args.waves)));
    if let (Some(p), Some(n)) = (args.abort_failure_percent, args.abort_min_executed) {
        put(
            "abort",
            Some(json!({"failure_percent": p, "min_executed": n})),
        );
    }
    put("expires_in_s", args.expires_in.map(|s| json!(s)));
    put("command_timeout_s", args.command_timeout.map(|s| json!(s)));
    Value::Object(r)
}

/// Seconds from `3600`, `90s`, `30m`, `24h` or `7d`.
fn parse_duration_s(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 3600, 90s, 30m, 24h or 7d, got {s:?}"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use s, m, h or d)")),
    };
    n.checked_mul(factor)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// A job's `progress` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    total: u64,
    pending: u64,
    in_progress: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    expired: u64,
    skipped: u64,
}

impl Progress {
    fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled + self.expired + self.skipped
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "succeeded {}  failed {}  in progress {}  pending {}",
            self.succeeded, self.failed, self.in_progress, self.pending
        );
        if self.cancelled > 0 {
            s.push_str(&format!("  cancelled {}", self.cancelled));
        }
        if self.expired > 0 {
            s.push_str(&format!("  expired {}", self.expired));
        }
        if self.skipped > 0 {
            s.push_str(&format!("  skipped {}", self.skipped));
        }
        s
    }
}

fn progress(job: &Value) -> Progress {
    let p = &job["progress"];
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    Progress {
        total: n("total"),
        pending: n("pending"),
        in_progress: n("in_progress"),
        succeeded: n("succeeded"),
        failed: n("failed"),
        cancelled: n("cancelled"),
        expired: n("expired"),
        skipped: n("skipped"),
    }
}

/// The job's state, with its wave when it has several.
fn state_label(job: &Value) -> String {
    let state = cell(&job["state"]);
    match (job["current_wave"].as_u64(), job["waves"].as_array()) {
        (Some(w), Some(waves)) if waves.len() > 1 => {
            format!("{state}, wave {w}/{}", waves.len())
        }
        _ => state,
    }
}

/// Follows a job until it reaches a final state: a progress bar on a terminal, a line
/// per change otherwise. Returns the final job.
pub async fn watch(api: &Api, id: &str) -> anyhow::Result<Value> {
    let path = job_path(id, "")?;
    let bar = std::io::stdout().is_terminal().then(|| {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout()).with_style(
            ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        )
    });
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut tick = tokio::time::interval(POLL);
    let mut last_line = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut interrupted => {
                if let Some(b) = &bar {
                    b.abandon();
                    println!();
                }
                bail!("stopped watching; job {id} goes on (callhome jobs watch {id})");
            }
        }
        let job = api.get(&path, &[]).await?;
        let p = progress(&job);
        let state = cell(&job["state"]);
        let done = FINAL_STATES.contains(&state.as_str());
        match &bar {
            Some(b) => {
                b.set_length(p.total);
                b.set_position(p.finished());
                b.set_message(format!("{}  [{}]", p.summary(), state_label(&job)));
                if done {
                    b.finish();
                    // The bar stays; what follows goes below it.
                    println!();
                }
            }
            None => {
                let line = format!(
                    "job {id}: {}  {}/{} finished  {}",
                    state_label(&job),
                    p.finished(),
                    p.total,
                    p.summary()
                );
                if line != last_line {
                    println!("{line}");
                    last_line = line;
                }
            }
        }
        if done {
            return Ok(job);
        }
    }
}

/// `Ok` for a job that completed without failures; otherwise prints the failed devices
/// (the first [`FAILED_SHOWN`]) and returns why the job did not succeed.
pub async fn check_outcome(api: &Api, job: &Value) -> anyhow::Result<()> {
    let p = progress(job);
    let state = cell(&job["state"]);
    if state == "completed" && p.failed == 0 {
        println!(
            "job {}: completed, {} devices succeeded",
            cell(&job["id"]),
            p.succeeded
        );
        return Ok(());
    }
    let id = cell(&job["id"]);
    if p.failed > 0 {
        let failed = api
            .list_all(
                &job_path(&id, "/devices")?,
                &[("state", "failed".to_owned())],
                Some(FAILED_SHOWN),
            )
            .await?;
        eprintln!("failed devices (first {}):", failed.len());
        for d in &failed {
            eprintln!("  {}  {}", cell(&d["imei"]), cell(&d["error"]));
        }
    }
    bail!(
        "job {id} ended {state}{}: {} of {} devices failed ({})",
        paren(&job["state_reason"]),
        p.failed,
        p.total,
        p.summary()
    )
}

/// `set_keys DNS_period=300,OLD_key=null`, `at_command AT+CSQ`, ...
fn describe_operation(op: &Value) -> String {
    let kind = cell(&op["type"]);
    let detail = match kind.as_str() {
        "set_keys" => op["keys"]
            .as_object()
            .map(|keys| {
                keys.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("null")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
        "set_whitelists" => format!("csd={} sms={}", cell(&op["csd"]), cell(&op["sms"])),
        "at_command" => cell(&op["command"]),
        "rotate_certificate" => format!(
            "{} (revoke old: {})",
            cell(&op["mode"]),
            cell(&op["revoke_old_after"])
        ),
        "firmware_update" => format!(
            "{}{}",
            cell(&op["firmware_id"]),
            if op["force"] == json!(true) {
                " (forced)"
            } else {
                ""
            }
        ),
        _ => String::new(),
    };
    if detail.is_empty() {
        kind
    } else {
        format!("{kind} {detail}")
    }
}

fn describe_target(t: &Value) -> String {
    if let Some(e) = t["tag_expr"].as_str() {
        return format!("tag expression {e:?}");
    }
    if let Some(list) = t["imeis"].as_array() {
        return format!("{} listed IMEIs", list.len());
    }
    match t["filter"].as_object() {
        Some(f) => {
            let parts: Vec<String> = f.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect();
            format!("devices with {}", parts.join(" "))
        }
        None => t.to_string(),
    }
}

fn print_jobs(jobs: &[Value]) {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let p = progress(j);
            vec![
                cell(&j["id"]),
                cell(&j["name"]),
                cell(&j["operation"]["type"]),
                cell(&j["state"]),
                format!("{}/{}", p.finished(), p.total),
                p.failed.to_string(),
                cell(&j["created_at"]),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "OPERATION",
            "STATE",
            "DONE",
            "FAILED",
            "CREATED",
        ],
        &rows,
    );
}

fn print_job(job: &Value) {
    let p = progress(job);
    let line = |label: &str, value: String| println!("{label:<12} {value}");
    line("id:", cell(&job["id"]));
    line("name:", cell(&job["name"]));
    line("operation:", describe_operation(&job["operation"]));
    line("target:", describe_target(&job["target"]));
    if !job["restart"].is_null() {
        line("restart:", cell(&job["restart"]));
    }
    line(
        "state:",
        format!("{}{}", state_label(job), paren(&job["state_reason"])),
    );
    line(
        "created:",
        format!(
            "{} by {}",
            cell(&job["created_at"]),
            cell(&job["created_by"])
        ),
    );
    line("started:", cell(&job["started_at"]));
    line("finished:", cell(&job["finished_at"]));
    line("expires:", cell(&job["expires_at"]));
    line(
        "progress:",
        format!("{}/{} finished  {}", p.finished(), p.total, p.summary()),
    );
    line("rollout:", job["rollout"].to_string());
}

fn print_job_devices(devices: &[Value]) {
    print_items(
        devices,
        &[
            ("IMEI", "imei"),
            ("STATE", "state"),
            ("WAVE", "wave"),
            ("ATTEMPTS", "attempts"),
            ("OUTCOME", "outcome"),
            ("FINISHED", "finished_at"),
            ("ERROR", "error"),
        ],
    );
}

/// Prints one device's result in a job: per-key outcome, restart, command reply.
pub fn print_device_result(device: &Value) {
    println!(
        "{}: {}{}",
        cell(&device["imei"]),
        cell(&device["state"]),
        paren(&device["error"])
    );
    let result = &device["result"];
    if let Some(keys) = result["keys"].as_array().filter(|k| !k.is_empty()) {
        print_items(
            keys,
            &[
                ("KEY", "key"),
                ("DESIRED", "desired"),
                ("BEFORE", "before"),
                ("AFTER", "after"),
                ("STATUS", "status"),
                ("ERROR", "error"),
            ],
        );
    } else if result.is_object() && result["keys"].is_array() {
        println!("no key to change");
    }
    if let Some(r) = result["restarted"].as_bool() {
        println!("restarted: {}", if r { "yes" } else { "no" });
    }
    if let Some(reply) = result["reply"].as_str() {
        println!("reply:\n{}", reply.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn body(argv: &[&str]) -> anyhow::Result<Value> {
        let cli = Cli::try_parse_from(std::iter::once("jobs").chain(argv.iter().copied()))?;
        create_body(&cli.args)
    }

    #[test]
    fn create_bodies_follow_the_contract() {
        let b = body(&[
            "--op",
            "set-keys",
            "--key",
            "DNS_period=300",
            "--unset",
            "OLD_key",
            "--tag-expr",
            "region:north and not pilot",
            "--max-in-flight",
            "5",
            "--ramp-base",
            "10",
            "--ramp-factor",
            "2",
            "--ramp-every",
            "20",
            "--waves",
            "10,50,100",
            "--abort-failure-percent",
            "10",
            "--abort-min-executed",
            "50",
            "--expires-in",
            "24h",
            "--restart",
            "never",
            "--name",
            "period",
        ])
        .unwrap();
        assert_eq!(
            b,
            json!({
                "operation": {"type": "set_keys", "keys": {"DNS_period": "300", "OLD_key": null}},
                "target": {"tag_expr": "region:north and not pilot"},
                "rollout": {"max_in_flight": 5,
                    "ramp": {"base_per_minute": 10, "increment_factor": 2.0, "every_succeeded": 20},
                    "waves": [10.0, 50.0, 100.0],
                    "abort": {"failure_percent": 10.0, "min_executed": 50},
                    "expires_in_s": 86400},
                "restart": "never",
                "name": "period",
            })
        );
        let b = body(&[
            "--op",
            "at",
            "--command",
            "AT+CSQ",
            "--filter-tag",
            "x",
            "--filter-online",
            "true",
            "--filter-drift",
            "drifted",
        ])
        .unwrap();
        assert_eq!(
            b["operation"],
            json!({"type": "at_command", "command": "AT+CSQ"})
        );
        assert_eq!(
            b["target"],
            json!({"filter": {"tag": "x", "online": true, "drift": "drifted"}})
        );
        assert_eq!(b["rollout"], json!({}));
        let b = body(&[
            "--op",
            "set-whitelists",
            "--csd",
            "666333444",
            "--imei",
            "490154203237518",
        ])
        .unwrap();
        assert_eq!(
            b["operation"],
            json!({"type": "set_whitelists", "csd": ["666333444"], "sms": []})
        );
        assert_eq!(b["target"], json!({"imeis": ["490154203237518"]}));
        assert_eq!(
            body(&[
                "--op",
                "firmware-update",
                "--firmware",
                "0190d5c6-0000-7000-8000-000000000001",
                "--install-timeout",
                "600",
                "--filter-model",
                "EHS6",
                "--waves",
                "10,50,100",
            ])
            .unwrap()["operation"],
            json!({"type": "firmware_update", "firmware_id": "0190d5c6-0000-7000-8000-000000000001",
                   "force": false, "install_timeout_s": 600})
        );
        assert_eq!(
            body(&["--op", "reboot", "--imei", "1"]).unwrap()["operation"],
            json!({"type": "reboot"})
        );
    }

    #[test]
    fn create_refuses_what_does_not_fit() {
        let err = |argv: &[&str]| body(argv).unwrap_err().to_string();
        assert!(err(&["--op", "reboot"]).contains("choose the devices"));
        assert!(
            err(&["--op", "reboot", "--imei", "1", "--tag-expr", "a"]).contains("only one kind")
        );
        assert!(err(&["--op", "reboot", "--imei", "1", "--key", "A=1"]).contains("set-keys"));
        assert!(err(&["--op", "set-keys", "--imei", "1"]).contains("at least one"));
        assert!(err(&["--op", "at", "--imei", "1"]).contains("--command"));
        assert!(err(&["--op", "firmware-update", "--imei", "1"]).contains("--firmware"));
        assert!(err(&["--op", "reboot", "--imei", "1", "--force"]).contains("firmware-update"));
        assert!(err(&["--op", "apply-config", "--imei", "1", "--ramp-base", "3"]).contains("ramp"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("3600"), Ok(3600));
        assert_eq!(parse_duration_s("90s"), Ok(90));
        assert_eq!(parse_duration_s("30m"), Ok(1800));
        assert_eq!(parse_duration_s("24h"), Ok(86_400));
        assert_eq!(parse_duration_s("7d"), Ok(604_800));
        assert!(parse_duration_s("0").is_err());
        assert!(parse_duration_s("1w").is_err());
        assert!(parse_duration_s("h").is_err());
        assert!(parse_duration_s("99999999999999999999d").is_err());
    }

    #[test]
    fn job_paths_cannot_escape() {
        assert_eq!(
            job_path("0190-ab", "/devices").unwrap(),
            "/api/v1/jobs/0190-ab/devices"
        );
        assert!(job_path("0190-ab/../../x?y", "").is_err());
        assert!(job_path("", "").is_err());
    }
}
