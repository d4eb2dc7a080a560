//! `callhome claims create|list|revoke` and `callhome enrollments list|approve|reject`:
//! claim provisioning and its approval queue, through the REST API.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::commands::api::{Api, ApiArgs, print_items, print_json_lines};

/// `callhome claims ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ClaimsAction {
    /// Register a claim for a production batch and have its claim certificate issued. The
    /// certificate goes to stdout (or `--cert-out`); the private key only to `--key-out`
    /// (mode 0600; `-` prints it).
    Create(CreateArgs),
    /// List the claims (every page), newest first.
    List {
        /// Print each claim as a line of JSON (as the API returns it).
        #[arg(long)]
        json: bool,
    },
    /// Revoke a claim: nothing more is enrolled with it; its certificate is in the CRL.
    Revoke {
        /// The claim's id.
        id: String,
    },
}

/// `callhome claims create` arguments.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Unique name (letters, digits, `-_.`; the certificate's CN is `claim:<name>`).
    pub name: String,
    /// An IMEI the claim may enrol (repeat the option; or give `--from`/`--to`).
    #[arg(long = "imei", value_name = "IMEI", conflicts_with_all = ["from", "to"])]
    pub imeis: Vec<String>,
    /// The first IMEI of the range it may enrol.
    #[arg(long, value_name = "IMEI", requires = "to")]
    pub from: Option<String>,
    /// The last IMEI of the range it may enrol.
    #[arg(long, value_name = "IMEI", requires = "from")]
    pub to: Option<String>,
    /// RFC 3339 expiry, e.g. 2027-01-31T00:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub expires_at: String,
    /// How many enrolments it allows (1-1000000).
    #[arg(long, value_name = "N")]
    pub max_enrollments: i64,
    /// `auto` (issue at once) or `manual` (hold each enrolment for approval).
    #[arg(long, value_parser = ["auto", "manual"], default_value = "manual")]
    pub approval: String,
    /// Where to write the claim certificate's private key (mode 0600); `-` prints it.
    #[arg(long, value_name = "FILE")]
    pub key_out: PathBuf,
    /// Where to write the claim certificate and CA chain (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub cert_out: Option<PathBuf>,
}

/// `callhome enrollments ...`.
#[derive(Debug, clap::Subcommand)]
pub enum EnrollmentsAction {
    /// List enrolments (every page), newest first; `--state pending` is the approval queue.
    List {
        /// Only those in this state.
        #[arg(long, value_parser = ["pending", "approved", "rejected", "issued"])]
        state: Option<String>,
        /// Print each enrolment as a line of JSON (as the API returns it).
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending enrolment (its certificate is issued now).
    Approve {
        /// The enrolment's id.
        id: String,
    },
    /// Reject a pending enrolment.
    Reject {
        /// The enrolment's id.
        id: String,
        /// Why (shown to the modem).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs `callhome claims ...`.
pub async fn run_claims(api: &ApiArgs, action: ClaimsAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        ClaimsAction::Create(args) => create(&api, &args).await,
        ClaimsAction::List { json } => {
            list(
                &api,
                "/api/v1/claims",
                &[],
                json,
                &[
                    ("ID", "id"),
                    ("NAME", "name"),
                    ("APPROVAL", "approval"),
                    ("USED", "enrollments_used"),
                    ("MAX", "max_enrollments"),
                    ("EXPIRES", "expires_at"),
                    ("REVOKED", "revoked_at"),
                ],
            )
            .await
        }
        ClaimsAction::Revoke { id } => {
            let claim = api
                .post(&format!("/api/v1/claims/{id}/revoke"), None)
                .await?;
            println!("claim {} revoked", claim["name"].as_str().unwrap_or(&id));
            Ok(())
        }
    }
}

/// Runs `callhome enrollments ...`.
pub async fn run_enrollments(api: &ApiArgs, action: EnrollmentsAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        EnrollmentsAction::List { state, json } => {
            let query: Vec<(&str, String)> = state.into_iter().map(|s| ("state", s)).collect();
            list(
                &api,
                "/api/v1/enrollments",
                &query,
                json,
                &[
                    ("ID", "id"),
                    ("IMEI", "imei"),
                    ("STATE", "state"),
                    ("REQUESTED", "requested_at"),
                    ("FROM", "remote_addr"),
                    ("DECIDED BY", "decided_by"),
                    ("SERIAL", "certificate_serial"),
                ],
            )
            .await
        }
        EnrollmentsAction::Approve { id } => {
            let done = api
                .post(&format!("/api/v1/enrollments/{id}/approve"), None)
                .await?;
            println!(
                "enrolment {id} approved: {} has certificate {}",
                done["enrollment"]["imei"].as_str().unwrap_or("?"),
                done["enrollment"]["certificate_serial"]
                    .as_str()
                    .unwrap_or("?")
            );
            Ok(())
        }
        EnrollmentsAction::Reject { id, reason } => {
            let body = json!({ "reason": reason });
            api.post(&format!("/api/v1/enrollments/{id}/reject"), Some(&body))
                .await?;
            println!("enrolment {id} rejected");
            Ok(())
        }
    }
}

async fn list(
    api: &Api,
    path: &str,
    query: &[(&str, String)],
    json: bool,
    columns: &[(&str, &str)],
) -> anyhow::Result<()> {
    if json {
        return api
            .each_page(path, query, None, |items| {
                print_json_lines(&items);
                Ok(())
            })
            .await;
    }
    let items = api.list_all(path, query, None).await?;
    print_items(&items, columns);
    Ok(())
}

async fn create(api: &Api, args: &CreateArgs) -> anyhow::Result<()> {
    let mut body = json!({
        "name": args.name,
        "expires_at": args.expires_at,
        "max_enrollments": args.max_enrollments,
        "approval": args.approval,
    });
    match (&args.from, &args.to) {
        (Some(from), Some(to)) => body["imei_range"] = json!({"from": from, "to": to}),
        _ => body["imeis"] = Value::from(args.imeis.clone()),
    }
    let created = api.post("/api/v1/claims", Some(&body)).await?;
    let key = created["private_key_pem"]
        .as_str()
        .context("the answer has no private_key_pem")?;
    if args.key_out.as_os_str() == "-" {
        print!("{key}");
    } else {
        callhome_ca::write_secret_file(&args.key_out, key.as_bytes())
            .with_context(|| format!("writing the claim key to {}", args.key_out.display()))?;
        eprintln!(
            "claim {} created (id {}); its private key is in {} (shown only this once)",
            created["name"].as_str().unwrap_or("?"),
            created["id"].as_str().unwrap_or("?"),
            args.key_out.display()
        );
    }
    let cert = format!(
        "{}{}",
        created["certificate_pem"].as_str().unwrap_or_default(),
        created["ca_chain"].as_str().unwrap_or_default()
    );
    match &args.cert_out {
        Some(path) => std::fs::write(path, cert)
            .with_context(|| format!("writing the claim certificate to {}", path.display()))?,
        None => print!("{cert}"),
    }
    Ok(())
}
