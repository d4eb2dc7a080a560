//! `callhome certs expiring` and `callhome certs audit`: the certificate expiry watch and
//! audit, through the REST API.

use serde_json::Value;

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
    use serde_json::json;

    use super::*;

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
