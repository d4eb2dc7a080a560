//! `callhome certs expiring`, `callhome certs audit` and `callhome certs rotate`: the
//! certificate expiry watch, its audit, and rotation campaigns, through the REST API.

use serde_json::{Value, json};

use crate::commands::api::{Api, ApiArgs, cell, print_json_lines, print_table};

/// `callhome certs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsAction {
    /// Certificates expiring soonest first (every page): IMEI, serial, expiry, days left,
    /// state.
    Expiring(ExpiringArgs),
    /// Run the certificate audit checks (shared_key, multiple_active, revoked_connected) and
    /// print the findings. Exits with status 1 if there are any.
    Audit {
        /// Print each finding as a line of JSON (as the API returns it).
        #[arg(long)]
        json: bool,
    },
    /// Rotate the client certificates of the targeted devices: a `rotate_certificate` job
    /// (overlap, then revoke once each modem has connected with its new certificate).
    Rotate(Box<RotateArgs>),
}

/// How a rotated modem gets its new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The modem makes the key and sends a CSR.
    Csr,
    /// Callhome makes the key (modems that cannot).
    ServerKeygen,
}

/// When the replaced certificates are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RevokeOld {
    /// Once the modem has connected with its new certificate.
    Confirmed,
    /// Never (they expire).
    Never,
}

/// `callhome certs rotate` arguments.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Who makes the new key.
    #[arg(long, value_enum, default_value = "csr")]
    pub mode: Mode,
    /// When the certificates replaced are revoked.
    #[arg(long, value_enum, default_value = "confirmed")]
    pub revoke_old_after: RevokeOld,
    /// Seconds a modem has to ask for its certificate, then to connect with it (10-86400,
    /// default 600); past it the device fails `not_confirmed` and keeps its old one.
    #[arg(long, value_name = "S")]
    pub confirm_timeout: Option<u32>,
    /// First have each modem fetch and trust the platform's trust bundle (before a CA
    /// rollover).
    #[arg(long)]
    pub install_trust_anchor: bool,
    /// Which devices.
    #[command(flatten)]
    pub target: crate::commands::jobs::TargetArgs,
    /// How fast.
    #[command(flatten)]
    pub rollout: crate::commands::jobs::RolloutArgs,
    /// A name for the job.
    #[arg(long)]
    pub name: Option<String>,
    /// Follow the campaign until it ends; exits non-zero if any device failed.
    #[arg(long)]
    pub watch: bool,
}

/// The `POST /api/v1/jobs` body of a rotation campaign.
fn rotate_body(args: &RotateArgs) -> anyhow::Result<Value> {
    let mut operation = json!({
        "type": "rotate_certificate",
        "mode": match args.mode {
            Mode::Csr => "csr",
            Mode::ServerKeygen => "server_keygen",
        },
        "revoke_old_after": match args.revoke_old_after {
            RevokeOld::Confirmed => "confirmed",
            RevokeOld::Never => "never",
        },
    });
    if let Some(t) = args.confirm_timeout {
        operation["confirm_timeout_s"] = json!(t);
    }
    if args.install_trust_anchor {
        operation["install_trust_anchor"] = json!(true);
    }
    let mut body = json!({
        "operation": operation,
        "target": crate::commands::jobs::target(&args.target)?,
        "rollout": crate::commands::jobs::rollout(&args.rollout),
    });
    if let Some(n) = &args.name {
        body["name"] = json!(n);
    }
    Ok(body)
}

/// `callhome certs expiring` arguments.
#[derive(Debug, clap::Args)]
pub struct ExpiringArgs {
    /// Only certificates expiring within this many days (0-3650).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub days: u32,
    /// Only certificates in this state.
    #[arg(long, value_parser = ["active", "revoked", "expired"], default_value = "active")]
    pub state: String,
    /// Only this device's certificates.
    #[arg(long, value_name = "IMEI")]
    pub imei: Option<String>,
    /// Print each certificate as a line of JSON (as the API returns it).
    #[arg(long)]
    pub json: bool,
}

/// Runs `callhome certs ...`.
pub async fn run(api: &ApiArgs, action: CertsAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        CertsAction::Expiring(args) => expiring(&api, &args).await,
        CertsAction::Audit { json } => audit(&api, json).await,
        CertsAction::Rotate(args) => {
            crate::commands::jobs::submit(&api, &rotate_body(&args)?, args.watch).await
        }
    }
}

async fn expiring(api: &Api, args: &ExpiringArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = vec![
        ("expiring_within_days", args.days.to_string()),
        ("state", args.state.clone()),
    ];
    if let Some(i) = &args.imei {
        query.push(("imei", i.clone()));
    }
    if args.json {
        return api
            .each_page("/api/v1/certificates", &query, None, |items| {
                print_json_lines(&items);
                Ok(())
            })
            .await;
    }
    let certs = api.list_all("/api/v1/certificates", &query, None).await?;
    let now = time::OffsetDateTime::now_utc();
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            vec![
                cell(&c["imei"]),
                cell(&c["serial"]),
                cell(&c["not_after"]),
                days_left(&c["not_after"], now),
                cell(&c["status"]),
            ]
        })
        .collect();
    print_table(
        &["IMEI", "SERIAL", "NOT AFTER", "DAYS LEFT", "STATE"],
        &rows,
    );
    eprintln!("{} certificates", certs.len());
    Ok(())
}

/// Whole days from `now` to an RFC 3339 `not_after` (blank if it does not parse).
fn days_left(not_after: &Value, now: time::OffsetDateTime) -> String {
    not_after
        .as_str()
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| callhome_core::certificates::days_left(t, now).to_string())
        .unwrap_or_default()
}

async fn audit(api: &Api, json: bool) -> anyhow::Result<()> {
    let report = api.get("/api/v1/certificates/audit", &[]).await?;
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    if json {
        print_json_lines(&findings);
    } else {
        let rows: Vec<Vec<String>> = findings
            .iter()
            .map(|f| {
                vec![
                    cell(&f["check"]),
                    cell(&f["severity"]),
                    cell(&f["imeis"]),
                    cell(&f["serials"]),
                    cell(&f["detail"]),
                ]
            })
            .collect();
        print_table(&["CHECK", "SEVERITY", "IMEIS", "SERIALS", "DETAIL"], &rows);
        eprintln!("{} findings", findings.len());
    }
    if findings.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("the certificate audit found {} problems", findings.len())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn rotate_bodies_follow_the_contract() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: RotateArgs,
        }
        let body = |argv: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("rotate").chain(argv.iter().copied())).unwrap();
            rotate_body(&cli.args)
        };
        let b = body(&["--tag-expr", "region:north", "--waves", "10,50,100"]).unwrap();
        assert_eq!(
            b,
            json!({"operation": {"type": "rotate_certificate", "mode": "csr", "revoke_old_after": "confirmed"},
                   "target": {"tag_expr": "region:north"},
                   "rollout": {"waves": [10.0, 50.0, 100.0]}})
        );
        let b = body(&[
            "--mode",
            "server-keygen",
            "--revoke-old-after",
            "never",
            "--confirm-timeout",
            "120",
            "--install-trust-anchor",
            "--imei",
            "490154203237518",
            "--max-in-flight",
            "20",
        ])
        .unwrap();
        assert_eq!(b["operation"]["mode"], "server_keygen");
        assert_eq!(b["operation"]["revoke_old_after"], "never");
        assert_eq!(b["operation"]["confirm_timeout_s"], 120);
        assert_eq!(b["operation"]["install_trust_anchor"], true);
        assert_eq!(b["target"], json!({"imeis": ["490154203237518"]}));
        assert_eq!(b["rollout"], json!({"max_in_flight": 20}));
        assert!(body(&[]).is_err(), "a target is required");
    }

    #[test]
    fn days_left_from_rfc3339() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
        let later = now + time::Duration::days(20);
        let text = later
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(days_left(&json!(text), now), "20");
        assert_eq!(days_left(&json!("not a date"), now), "");
        assert_eq!(days_left(&Value::Null, now), "");
    }
}
