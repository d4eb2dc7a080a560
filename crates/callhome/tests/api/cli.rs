//! The operator CLI (`callhome login`, `devices`, `config`, `jobs`, `certs`, `claims`): the built binary run
//! against the real server, with its credentials in a temporary directory.
//!
//! The `jobs_*` tests and `config_apply_*` need the jobs API (`/api/v1/jobs`,
//! `/api/v1/devices/{imei}/config/apply`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;

use crate::helpers::{ADMIN_PASSWORD, TestApp, imei};

/// What one run of the binary did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok: {}\n--- stdout\n{}--- stderr\n{}",
            self.ok, self.stdout, self.stderr
        )
    }
}

/// The `callhome` binary with its own configuration directory.
struct Cli {
    config_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            // Not created yet: login creates it (0700).
            config_dir: dir.path().join("config").join("callhome"),
            _dir: dir,
        }
    }

    fn credentials(&self) -> PathBuf {
        self.config_dir.join("credentials.json")
    }

    /// Runs `callhome` with the arguments of `line` (split at spaces; '...' quotes).
    async fn run_with(&self, line: &str, stdin: Option<&str>, env: &[(&str, &str)]) -> Run {
        let args = split_args(line);
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_callhome"));
        cmd.args(&args)
            .env("CALLHOME_CONFIG_DIR", &self.config_dir)
            .env_remove("CALLHOME_SERVER")
            .env_remove("CALLHOME_TOKEN")
            .env_remove("CALLHOME_CONFIG")
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("callhome binary runs");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("callhome {line} did not end"))
            .unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `line` and expects success.
    async fn ok(&self, line: &str) -> Run {
        let r = self.run_with(line, None, &[]).await;
        assert!(r.ok, "callhome {line}:\n{r}");
        r
    }

    /// Runs `line` and expects failure.
    async fn fails(&self, line: &str) -> Run {
        let r = self.run_with(line, None, &[]).await;
        assert!(!r.ok, "callhome {line} should fail:\n{r}");
        r
    }

    async fn login(&self, app: &TestApp) -> Run {
        let r = self
            .run_with(
                &format!("login --server {} --password-stdin", app.base),
                Some(&format!("{ADMIN_PASSWORD}\n")),
                &[],
            )
            .await;
        assert!(r.ok, "login:\n{r}");
        r
    }
}

/// Splits a command line at spaces, keeping '...' together.
fn split_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                current.get_or_insert_with(String::new);
            }
            ' ' if !quoted => args.extend(current.take()),
            c => current.get_or_insert_with(String::new).push(c),
        }
    }
    args.extend(current);
    args
}

/// A server, an operator token, `count` simulated modems online, and a logged-in CLI.
struct WithFleet {
    app: TestApp,
    ops: String,
    fleet: callhome_sim::Fleet,
    ids: Vec<String>,
    cli: Cli,
    _cache: tempfile::TempDir,
}

impl WithFleet {
    async fn start(first_body: &str, count: usize) -> Self {
        let app = TestApp::spawn().await;
        let ops = app.user_token("ops", "operator").await;
        let (fleet, imeis, cache) =
            crate::sim_sessions::start_fleet(&app, &ops, first_body, count).await;
        let cli = Cli::new();
        cli.login(&app).await;
        Self {
            ids: imeis.iter().map(ToString::to_string).collect(),
            app,
            ops,
            fleet,
            cli,
            _cache: cache,
        }
    }

    async fn stop(self) {
        self.fleet.shutdown().await;
        self.app.stop().await;
    }
}

async fn register(app: &TestApp, token: &str, imei: &str, name: &str, tags: &[&str]) {
    let (status, body) = app
        .post(
            "/api/v1/devices",
            token,
            json!({"imei": imei, "name": name, "tags": tags}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn cli_login_devices_config_and_logout() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let cli = Cli::new();

    // Before login: a clear message.
    let r = cli.fails("devices list").await;
    assert!(r.stderr.contains("callhome login"), "{r}");

    // A wrong password is the API's problem document, and nothing is saved.
    let r = cli
        .run_with(
            &format!("login --server {} --password-stdin", app.base),
            Some("wrong-password\n"),
            &[],
        )
        .await;
    assert!(!r.ok, "{r}");
    assert!(r.stderr.contains("wrong user name or password"), "{r}");
    assert!(!cli.credentials().exists());

    let r = cli.login(&app).await;
    assert!(r.stdout.contains("logged in to"), "{r}");
    assert!(r.stdout.contains("as admin (admin)"), "{r}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(cli.credentials()).unwrap()).unwrap();
    assert_eq!(saved["server"], app.base.as_str());
    assert!(saved["token"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(saved["expires"].is_string());
    assert_eq!(mode(&cli.credentials()), 0o600);
    assert_eq!(mode(&cli.config_dir), 0o700);

    // The registry.
    let north = imei(1);
    let south = imei(2);
    register(
        &app,
        &admin,
        &north,
        "Substation 4 meter 12",
        &["region:north", "pilot"],
    )
    .await;
    register(&app, &admin, &south, "Pole 7", &["region:south"]).await;
    let r = cli.ok("devices list").await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{r}");
    assert!(lines[0].starts_with("IMEI "), "{r}");
    assert!(lines[0].contains("NAME") && lines[0].contains("ONLINE") && lines[0].contains("TAGS"));
    assert!(lines[1].starts_with(&north) && lines[1].contains("Substation 4 meter 12"));
    assert!(
        lines[1].contains("region:north,pilot") && lines[1].contains(" no "),
        "{r}"
    );
    assert!(lines[2].starts_with(&south) && lines[2].contains("Pole 7"));
    // Columns are aligned: the NAME column starts at the same place on every line.
    let col = lines[0].find("NAME").unwrap();
    assert_eq!(lines[1].find("Substation"), Some(col));
    assert_eq!(lines[2].find("Pole 7"), Some(col));

    let r = cli.ok("devices list --tag region:south").await;
    assert!(
        r.stdout.contains(&south) && !r.stdout.contains(&north),
        "{r}"
    );
    let r = cli.ok("devices list --online true").await;
    assert_eq!(r.stdout.lines().count(), 1, "only the header: {r}");
    let r = cli.ok("devices list --q pole --json").await;
    let items: Vec<Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 1, "{r}");
    assert_eq!(items[0]["imei"], south.as_str());

    // Configuration: set, get (overrides, effective, file), diff.
    let r = cli
        .ok(&format!(
            "config set {north} DNS_period=300 GPRS_apn=meters.apn"
        ))
        .await;
    assert!(
        r.stdout.contains("DNS_period") && r.stdout.contains("300"),
        "{r}"
    );
    assert!(r.stderr.contains("callhome config apply"), "{r}");
    // Merged into the current overrides, keys matched ignoring case.
    cli.ok(&format!(
        "config set {north} dns_period=900 --unset MTX_PIN"
    ))
    .await;
    let r = cli
        .ok(&format!("config get {north} --overrides --json"))
        .await;
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        v["overrides"],
        json!({"DNS_period": "900", "GPRS_apn": "meters.apn", "MTX_PIN": null}),
        "{r}"
    );
    let r = cli.ok(&format!("config get {north} --overrides")).await;
    assert!(
        r.stdout.contains("MTX_PIN") && r.stdout.contains("(removed)"),
        "{r}"
    );
    let r = cli.ok(&format!("config get {north} --txt")).await;
    assert!(r.stdout.contains("DNS_period: 900"), "{r}");
    assert!(r.stdout.contains("GPRS_apn: meters.apn"), "{r}");
    let r = cli.ok(&format!("config get {north}")).await;
    assert!(r.stdout.contains("DNS_period: 900"), "{r}");
    let r = cli.ok(&format!("config get {north} --reported")).await;
    assert!(r.stderr.contains("never read"), "{r}");
    let r = cli.ok(&format!("config diff {north}")).await;
    assert!(r.stdout.contains("drift: unknown"), "{r}");
    cli.ok(&format!("config set {north} --reset MTX_PIN")).await;
    let (_, c) = app
        .get(&format!("/api/v1/devices/{north}/config"), &admin)
        .await;
    assert_eq!(
        c["overrides"],
        json!({"DNS_period": "900", "GPRS_apn": "meters.apn"})
    );

    // A validation error names the key and exits non-zero; nothing is stored.
    let r = cli.fails(&format!("config set {north} MTX_PIN=12")).await;
    assert!(r.stderr.contains("MTX_PIN"), "{r}");
    assert!(r.stderr.contains("HTTP 422"), "{r}");
    let (_, c) = app
        .get(&format!("/api/v1/devices/{north}/config"), &admin)
        .await;
    assert!(c["overrides"].get("MTX_PIN").is_none(), "{c}");
    // A bad IMEI is refused before any request.
    let r = cli.fails("config get 490154203237519").await;
    assert!(r.stderr.contains("check digit"), "{r}");
    // An unknown device is the API's 404.
    let r = cli.fails(&format!("config get {}", imei(3))).await;
    assert!(r.stderr.contains("HTTP 404"), "{r}");

    // Logout removes the file; the commands then ask for a login again.
    let r = cli.ok("logout").await;
    assert!(r.stdout.contains("removed"), "{r}");
    assert!(!cli.credentials().exists());
    let r = cli.ok("logout").await;
    assert!(r.stdout.contains("not logged in"), "{r}");
    let r = cli.fails("devices list").await;
    assert!(r.stderr.contains("callhome login"), "{r}");
    app.stop().await;
}

#[tokio::test]
async fn cli_credentials_from_flags_environment_and_expiry() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    register(&app, &admin, &imei(10), "one", &[]).await;
    let cli = Cli::new();

    // An API key works as the token, from the flag or the environment.
    let (status, created) = app
        .post(
            "/api/v1/api-keys",
            &admin,
            json!({"name": "cli", "role": "reader"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap();
    let r = cli
        .ok(&format!("devices list --server {} --token {key}", app.base))
        .await;
    assert!(r.stdout.contains(&imei(10)), "{r}");
    let r = cli
        .run_with(
            "devices list",
            None,
            &[("CALLHOME_SERVER", &app.base), ("CALLHOME_TOKEN", key)],
        )
        .await;
    assert!(r.ok && r.stdout.contains(&imei(10)), "{r}");
    // From a file: nothing on the command line but its name.
    let token_file = cli._dir.path().join("token");
    std::fs::write(&token_file, format!("{key}\n")).unwrap();
    let r = cli
        .ok(&format!(
            "devices list --server {} --token-file {}",
            app.base,
            token_file.display()
        ))
        .await;
    assert!(r.stdout.contains(&imei(10)), "{r}");
    std::fs::write(&token_file, "\n").unwrap();
    let r = cli
        .fails(&format!(
            "devices list --server {} --token-file {}",
            app.base,
            token_file.display()
        ))
        .await;
    assert!(r.stderr.contains("no token"), "{r}");
    // The reader role cannot change configuration: the 403 is shown.
    let r = cli
        .fails(&format!(
            "config set {} DNS_period=300 --server {} --token {key}",
            imei(10),
            app.base
        ))
        .await;
    assert!(r.stderr.contains("HTTP 403"), "{r}");

    // A refused token says to log in again.
    let r = cli
        .fails(&format!(
            "devices list --server {} --token nonsense",
            app.base
        ))
        .await;
    assert!(r.stderr.contains("HTTP 401"), "{r}");
    assert!(r.stderr.contains("callhome login"), "{r}");

    // An expired saved token is not sent: a clear message instead.
    std::fs::create_dir_all(&cli.config_dir).unwrap();
    std::fs::write(
        cli.credentials(),
        json!({"server": app.base, "token": admin, "expires": "2020-01-01T00:00:00Z"}).to_string(),
    )
    .unwrap();
    let r = cli.fails("devices list").await;
    assert!(r.stderr.contains("expired"), "{r}");
    assert!(r.stderr.contains("callhome login"), "{r}");
    // --token overrides the saved one.
    let r = cli.ok(&format!("devices list --token {admin}")).await;
    assert!(r.stdout.contains(&imei(10)), "{r}");
    // The saved token is for its own server only.
    let r = cli.fails("devices list --server http://127.0.0.1:9").await;
    assert!(
        r.stderr.contains("not logged in to http://127.0.0.1:9"),
        "{r}"
    );
    app.stop().await;
}

#[tokio::test]
async fn cli_config_diff_reads_a_simulated_modem() {
    let w = WithFleet::start("35693803400000", 1).await;
    let (app, ops, cli, id) = (&w.app, &w.ops, &w.cli, &w.ids[0]);
    let r = cli.ok("devices list --online true").await;
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with(id.as_str()) && l.split_whitespace().any(|c| c == "yes")),
        "{r}"
    );

    // Someone changes a key on the modem; the desired value differs.
    cli.ok(&format!("config set {id} DNS_period=600")).await;
    let (status, c) = app
        .post(
            &format!("/api/v1/devices/{id}/commands?wait_s=10"),
            ops,
            json!({"command": "AT^MTXTUNNEL=SETPARAM,DNS_period,120"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let r = cli.ok(&format!("config diff {id} --read")).await;
    assert!(r.stderr.contains("read from the modem"), "{r}");
    assert!(r.stdout.contains("drift: drifted"), "{r}");
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("DNS_period"))
        .unwrap_or_else(|| panic!("a DNS_period row: {r}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["DNS_period", "600", "120"], "{r}");
    let r = cli.ok(&format!("config get {id} --reported")).await;
    assert!(r.stdout.contains("DNS_period: 120"), "{r}");
    assert!(r.stderr.contains("drift: drifted"), "{r}");
    w.stop().await;
}

// ---- Below: the jobs API (`/api/v1/jobs`, `.../config/apply`). ----

/// The job id in `created job <id>: ...` / `apply job <id>: ...`.
fn job_id(r: &Run) -> String {
    r.stdout
        .split_whitespace()
        .skip_while(|w| *w != "job")
        .nth(1)
        .map(|w| w.trim_end_matches(':').to_owned())
        .unwrap_or_else(|| panic!("a job id: {r}"))
}

#[tokio::test]
async fn jobs_create_watch_list_and_inspect() {
    let w = WithFleet::start("35693803500000", 3).await;
    let (app, ops, cli, ids) = (&w.app, &w.ops, &w.cli, &w.ids);
    for id in &ids[..2] {
        app.call(
            Method::PATCH,
            &format!("/api/v1/devices/{id}"),
            Some(ops),
            Some(json!({"tags": ["region:north"]})),
        )
        .await;
    }

    // An AT command on a tag expression, followed to the end (plain lines: no terminal).
    let r = cli
        .ok("jobs create --op at --command AT+CSQ --tag-expr region:north --name signal --watch")
        .await;
    let at_job = job_id(&r);
    assert!(r.stdout.contains("on 2 devices"), "{r}");
    assert!(r.stdout.contains("completed, 2 devices succeeded"), "{r}");
    assert!(r.stdout.contains("2/2 finished"), "{r}");

    // Its devices and their replies.
    let r = cli.ok(&format!("jobs devices {at_job}")).await;
    assert!(
        r.stdout.contains(&ids[0]) && r.stdout.contains(&ids[1]),
        "{r}"
    );
    assert!(!r.stdout.contains(&ids[2]), "{r}");
    assert!(r.stdout.contains("succeeded"), "{r}");
    let r = cli.ok(&format!("jobs devices {at_job} --json")).await;
    let first: Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    assert!(
        first["result"]["reply"].as_str().unwrap().contains("+CSQ:"),
        "{r}"
    );

    // A reboot from a file of IMEIs: the simulated modems come back.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!("# all of them\n{}\n\n", ids.join("\n")),
    )
    .unwrap();
    let r = cli
        .ok(&format!(
            "jobs create --op reboot --imeis-file {} --max-in-flight 2 --watch",
            file.path().to_str().unwrap()
        ))
        .await;
    let reboot_job = job_id(&r);
    assert!(r.stdout.contains("completed, 3 devices succeeded"), "{r}");
    assert_eq!(w.fleet.counters().snapshot().reboots, 3);

    // A command the modems refuse: the job ends with failures, listed, non-zero exit.
    let r = cli
        .fails(&format!(
            "jobs create --op at --command AT+BOGUS --imei {} --watch",
            ids[2]
        ))
        .await;
    assert!(r.stderr.contains("failed devices"), "{r}");
    assert!(r.stderr.contains(&ids[2]), "{r}");
    assert!(r.stderr.contains("1 of 1 devices failed"), "{r}");
    let failed_job = job_id(&r);
    let r = cli
        .ok(&format!("jobs devices {failed_job} --state failed"))
        .await;
    assert!(r.stdout.contains(&ids[2]), "{r}");

    // The list and one job.
    let r = cli.ok("jobs list").await;
    for id in [&at_job, &reboot_job, &failed_job] {
        assert!(r.stdout.contains(id.as_str()), "{id}: {r}");
    }
    let r = cli.ok("jobs list --state running").await;
    assert_eq!(r.stdout.lines().count(), 1, "only the header: {r}");
    let r = cli.ok(&format!("jobs get {at_job}")).await;
    assert!(r.stdout.contains("at_command AT+CSQ"), "{r}");
    assert!(r.stdout.contains("tag expression \"region:north\""), "{r}");
    assert!(r.stdout.contains("completed"), "{r}");
    let r = cli.ok(&format!("jobs get {at_job} --json")).await;
    let job: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(job["name"], "signal");
    // `jobs watch` on a finished job returns at once, with its outcome.
    cli.ok(&format!("jobs watch {at_job}")).await;
    cli.fails(&format!("jobs watch {failed_job}")).await;

    // Bad input is the API's 422 naming the field.
    let r = cli
        .fails(&format!(
            "jobs create --op set-keys --key MTX_PIN=12 --imei {}",
            ids[0]
        ))
        .await;
    assert!(
        r.stderr.contains("MTX_PIN") && r.stderr.contains("HTTP 422"),
        "{r}"
    );
    let r = cli
        .fails("jobs create --op reboot --tag-expr 'region:north and'")
        .await;
    assert!(
        r.stderr.contains("tag_expr") && r.stderr.contains("HTTP 422"),
        "{r}"
    );
    w.stop().await;
}

#[tokio::test]
async fn jobs_pause_resume_cancel() {
    let app = TestApp::spawn().await;
    let ops = app.user_token("ops", "operator").await;
    let admin = app.admin_token().await;
    // Offline devices: their executions wait, so the job stays running.
    for n in 20..23 {
        register(&app, &admin, &imei(n), "offline", &["batch"]).await;
    }
    let cli = Cli::new();
    cli.login(&app).await;
    let r = cli
        .ok("jobs create --op reboot --filter-tag batch --filter-online false --expires-in 1h")
        .await;
    let id = job_id(&r);
    assert!(r.stdout.contains("on 3 devices"), "{r}");
    assert!(r.stdout.contains("callhome jobs watch"), "{r}");
    let r = cli.ok(&format!("jobs pause {id}")).await;
    assert!(r.stdout.contains("paused"), "{r}");
    let r = cli.ok(&format!("jobs resume {id}")).await;
    assert!(r.stdout.contains("running"), "{r}");
    let r = cli.ok(&format!("jobs cancel {id}")).await;
    assert!(r.stdout.contains("cancelled"), "{r}");
    let r = cli.fails(&format!("jobs watch {id}")).await;
    assert!(r.stderr.contains("ended cancelled"), "{r}");
    let (_, job) = app.get(&format!("/api/v1/jobs/{id}"), &ops).await;
    assert_eq!(job["state"], "cancelled");
    app.stop().await;
}

#[tokio::test]
async fn config_apply_shows_each_key() {
    let w = WithFleet::start("35693803600000", 1).await;
    let (app, ops, cli, id) = (&w.app, &w.ops, &w.cli, &w.ids[0]);
    // Read what the modem has, then want one key changed.
    cli.ok(&format!("config diff {id} --read")).await;
    cli.ok(&format!("config set {id} DNS_period=300")).await;
    let r = cli.ok(&format!("config apply {id} --restart never")).await;
    assert!(r.stdout.contains("apply job"), "{r}");
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("DNS_period"))
        .unwrap_or_else(|| panic!("a DNS_period row: {r}"));
    assert!(row.contains("300") && row.contains("applied"), "{r}");
    assert!(r.stdout.contains("completed, 1 devices succeeded"), "{r}");
    // The modem has it now.
    let (_, c) = app
        .post(
            &format!("/api/v1/devices/{id}/commands?wait_s=10"),
            ops,
            json!({"command": "AT^MTXTUNNEL=GETPARAM,DNS_period"}),
        )
        .await;
    assert!(
        c["reply"].as_str().unwrap().contains("DNS_period: 300"),
        "{c}"
    );
    // --no-wait returns the job at once.
    let r = cli.ok(&format!("config apply {id} --no-wait")).await;
    let job = job_id(&r);
    assert!(r.stdout.contains("callhome jobs watch"), "{r}");
    cli.ok(&format!("jobs watch {job}")).await;
    w.stop().await;
}

/// `--help` of the built binary for `args`.
fn help(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhome"))
        .args(args)
        .arg("--help")
        .output()
        .expect("callhome binary runs");
    assert!(out.status.success(), "callhome {args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn client_commands_show_no_server_flags() {
    const SERVER_FLAGS: [&str; 12] = [
        "--data-dir",
        "--device-http",
        "--database-url",
        "--http ",
        "--mqtt",
        "--tunnel",
        "--public-host",
        "--node-id",
        "--drift-check-interval",
        "--config ",
        "--log ",
        "--log-format",
    ];
    for cmd in [
        &["sim"][..],
        &["connect"],
        &["login"],
        &["logout"],
        &["devices"],
        &["devices", "list"],
        &["config"],
        &["config", "get"],
        &["jobs"],
        &["jobs", "create"],
        &["certs"],
        &["certs", "expiring"],
        &["certs", "audit"],
    ] {
        let text = help(cmd);
        for flag in SERVER_FLAGS {
            assert!(
                !text.contains(flag),
                "callhome {cmd:?} --help shows {flag}:\n{text}"
            );
        }
    }
    for cmd in [&["serve"][..], &["user", "list"]] {
        let text = help(cmd);
        for flag in SERVER_FLAGS {
            assert!(
                text.contains(flag),
                "callhome {cmd:?} --help lacks {flag}:\n{text}"
            );
        }
    }
}

/// An out-of-range setting from a `CALLHOME_*` variable stops `serve` before it starts,
/// naming the key (the file and flag cases are unit tests of the settings).
#[test]
fn out_of_range_environment_setting_is_rejected_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhome"))
        .args(["serve", "--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
        .args(["--tunnel", "127.0.0.1:0", "--device-http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("CALLHOME_DRIFT_CHECK_INTERVAL_S", "99999999999")
        .env_remove("CALLHOME_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("callhome binary runs");
    assert!(!out.status.success(), "serve must refuse to start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "fleet.drift_check_interval_s must be between 0 and 31622400, got 99999999999"
        ),
        "{err}"
    );
}

/// `sim` (like `connect`) needs no token on its command line: after `callhome login` it
/// enrolls its modems with the saved token; without any credential it says what to give.
#[tokio::test]
async fn sim_enrolls_with_the_saved_login() {
    let app = TestApp::spawn().await;
    let cli = Cli::new();
    let cache = tempfile::tempdir().unwrap();
    let line = format!(
        "sim --api {} --broker {} --modems 1 --first-imei 35693803600000 --cache-dir {} --duration 2",
        app.base,
        app.mqtt,
        cache.path().display()
    );
    let r = cli.fails(&line).await;
    assert!(
        r.stderr.contains("CALLHOME_TOKEN") && r.stderr.contains("callhome login"),
        "{r}"
    );
    cli.login(&app).await;
    cli.ok(&line).await;
    let imei = callhome_sim::fleet_imeis("35693803600000", 1).unwrap()[0].to_string();
    let admin = app.admin_token().await;
    let (status, certs) = app
        .get(&format!("/api/v1/devices/{imei}/certificates"), &admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{certs}");
    assert!(
        !certs.to_string().contains("[]"),
        "a certificate was issued: {certs}"
    );
    app.stop().await;
}

/// `callhome firmware upload|list|distribution` and a campaign from the command line.
#[tokio::test]
async fn firmware_upload_list_distribution_and_a_campaign() {
    let w = WithFleet::start("35693803510000", 2).await;
    let (app, ops, cli, ids) = (&w.app, &w.ops, &w.cli, &w.ids);
    // The model the simulated modems report.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let model = loop {
        let (_, d) = app.get("/api/v1/firmware/distribution", ops).await;
        if let Some(m) = d["items"][0]["model"].as_str()
            && d["items"][0]["devices"] == 2
        {
            break m.to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let r = cli.ok("firmware distribution").await;
    assert!(
        r.stdout.contains(&model) && r.stdout.contains("100.0%"),
        "{r}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), vec![42u8; 70_000]).unwrap();
    let r = cli
        .ok(&format!(
            "firmware upload {} --version 99.1.0 --model {model} --notes cli",
            file.path().display()
        ))
        .await;
    assert!(r.stdout.contains("uploaded firmware"), "{r}");
    let id = r
        .stdout
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let r = cli
        .fails(&format!(
            "firmware upload {} --version 99.1.1 --model {model}",
            file.path().display()
        ))
        .await;
    assert!(r.stderr.contains("already in the repository"), "{r}");
    let r = cli.ok("firmware list").await;
    assert!(r.stdout.contains(&id) && r.stdout.contains("99.1.0"), "{r}");
    let r = cli
        .ok(&format!(
            "jobs create --op firmware-update --firmware {id} --imei {} --imei {} --watch",
            ids[0], ids[1]
        ))
        .await;
    assert!(r.stdout.contains("completed, 2 devices succeeded"), "{r}");
    let job = job_id(&r);
    let r = cli.ok(&format!("jobs devices {job}")).await;
    assert!(
        r.stdout.contains("OUTCOME") && r.stdout.contains("updated"),
        "{r}"
    );
    let r = cli.ok("firmware distribution").await;
    assert!(r.stdout.contains("99.1.0"), "{r}");
    for h in w.fleet.handles() {
        assert_eq!(h.firmware_version(), "99.1.0");
    }
    w.stop().await;
}

/// Registers `id` and has a certificate over `key` issued for `days`; returns its serial.
async fn certify(app: &TestApp, token: &str, id: &str, key: &rcgen::KeyPair, days: u32) -> String {
    register(app, token, id, id, &[]).await;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, id);
    let csr = params.serialize_request(key).unwrap().pem().unwrap();
    let (status, signed) = app
        .post(
            &format!("/api/v1/devices/{id}/certificate"),
            token,
            json!({"csr": csr, "validity_days": days}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    signed["serial"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn certs_expiring_pages_through_all_and_audit_reports_findings() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let cli = Cli::new();
    cli.login(&app).await;
    let r = cli.ok("certs audit").await;
    assert!(r.stderr.contains("0 findings"), "{r}");
    let key = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    // Three certificates expiring within 30 days (10, 11, 12 days), one outside (200).
    let soon: Vec<(String, String)> = futures::future::join_all((0..3).map(|i| {
        let (app, admin) = (&app, &admin);
        async move {
            let id = imei(900 + i);
            let serial = certify(app, admin, &id, &key(), 10 + u32::try_from(i).unwrap()).await;
            (id, serial)
        }
    }))
    .await;
    let late = certify(&app, &admin, &imei(910), &key(), 200).await;
    let r = cli.ok("certs expiring --days 30").await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].contains("IMEI")
            && lines[0].contains("SERIAL")
            && lines[0].contains("NOT AFTER")
            && lines[0].contains("DAYS LEFT")
            && lines[0].contains("STATE"),
        "{r}"
    );
    assert_eq!(lines.len(), 4, "header and three certificates:\n{r}");
    for (i, (id, serial)) in soon.iter().enumerate() {
        let row = lines[i + 1];
        assert!(
            row.contains(id.as_str()) && row.contains(serial.as_str()) && row.contains("active"),
            "soonest first, row {i}: {row}\n{r}"
        );
        assert!(
            row.contains(&format!(" {} ", 9 + i)),
            "days left in row {i}: {row}"
        );
    }
    assert!(!r.stdout.contains(&late), "{r}");
    let r = cli
        .ok(&format!("certs expiring --days 365 --imei {}", imei(910)))
        .await;
    assert!(
        r.stdout.contains(&late) && r.stderr.contains("1 certificates"),
        "{r}"
    );
    let r = cli.fails("certs expiring --days 3651").await;
    assert!(r.stderr.contains("expiring_within_days"), "{r}");

    // A key certified for two devices: the audit reports it and exits non-zero.
    let shared = key();
    certify(&app, &admin, &imei(920), &shared, 100).await;
    certify(&app, &admin, &imei(921), &shared, 100).await;
    let r = cli.fails("certs audit").await;
    assert!(
        r.stdout.contains("shared_key")
            && r.stdout.contains("critical")
            && r.stdout.contains(&imei(920))
            && r.stdout.contains(&imei(921)),
        "{r}"
    );
    assert!(r.stderr.contains("found 1 problems"), "{r}");
    app.stop().await;
}

#[tokio::test]
async fn certs_rotate_watches_a_rotation_campaign_to_its_end() {
    let w = WithFleet::start("35693803520000", 2).await;
    let (app, ops, cli, ids) = (&w.app, &w.ops, &w.cli, &w.ids);
    app.call(
        Method::PATCH,
        &format!("/api/v1/devices/{}", ids[0]),
        Some(ops),
        Some(json!({"tags": ["batch:2026"]})),
    )
    .await;
    let before = w.fleet.handles()[0].cert_serial().unwrap();
    let r = cli
        .ok("certs rotate --mode server-keygen --tag-expr batch:2026 --confirm-timeout 30 --watch")
        .await;
    assert!(r.stdout.contains("rotate_certificate server_keygen"), "{r}");
    assert!(r.stdout.contains("completed, 1 devices succeeded"), "{r}");
    let after = w.fleet.handles()[0].cert_serial().unwrap();
    assert_ne!(before, after);
    let (_, old) = app
        .get(&format!("/api/v1/certificates/{before}"), ops)
        .await;
    assert_eq!(old["status"], "revoked", "{old}");
    // The other modem was not targeted.
    let (_, device) = app.get(&format!("/api/v1/devices/{}", ids[1]), ops).await;
    assert_eq!(
        device["cert_serial"].as_str(),
        w.fleet.handles()[1].cert_serial().as_deref()
    );
    // A refused rotation names the problem.
    let r = cli
        .fails("certs rotate --tag-expr batch:2026 --confirm-timeout 5")
        .await;
    assert!(r.stderr.contains("confirm_timeout_s"), "{r}");
    w.stop().await;
}

#[tokio::test]
async fn claims_create_writes_the_key_0600_list_revoke_and_the_queue() {
    let app = TestApp::spawn().await;
    let cli = Cli::new();
    cli.login(&app).await;
    let key = cli._dir.path().join("claim.key");
    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let r = cli
        .ok(&format!(
            "claims create line-7 --from {} --to {} --expires-at {expires} --max-enrollments 50 --approval manual --key-out {}",
            imei(1),
            imei(50),
            key.display()
        ))
        .await;
    assert!(r.stdout.contains("BEGIN CERTIFICATE"), "{r}");
    assert!(
        !r.stdout.contains("PRIVATE KEY") && !r.stderr.contains("PRIVATE KEY"),
        "{r}"
    );
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY")
    );

    let r = cli.ok("claims list --json").await;
    let claim: Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(claim["name"], "line-7");
    assert_eq!(claim["approval"], "manual");
    let r = cli.ok("enrollments list --state pending").await;
    assert!(r.stdout.contains("IMEI"), "{r}");
    let r = cli
        .ok(&format!("claims revoke {}", claim["id"].as_str().unwrap()))
        .await;
    assert!(r.stdout.contains("claim line-7 revoked"), "{r}");
    let r = cli
        .fails(&format!("claims revoke {}", claim["id"].as_str().unwrap()))
        .await;
    assert!(r.stderr.contains("already revoked"), "{r}");
    app.stop().await;
}
