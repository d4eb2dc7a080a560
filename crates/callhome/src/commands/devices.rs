//! `callhome devices list`: the device registry, filtered, as a table or JSON lines.

use serde_json::Value;

use crate::commands::api::{Api, ApiArgs, cell, print_json_lines, print_table};

/// `callhome devices ...`.
#[derive(Debug, clap::Subcommand)]
pub enum DevicesAction {
    /// List devices (every page), in IMEI order.
    List(ListArgs),
}

/// `callhome devices list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only devices with this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only devices connected (true) or not connected (false) now.
    #[arg(long, value_name = "BOOL")]
    pub online: Option<bool>,
    /// Only devices whose reported configuration is in this state.
    #[arg(long, value_parser = ["in_sync", "drifted", "unknown"])]
    pub drift: Option<String>,
    /// Only devices with this text in the IMEI or the name (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub q: Option<String>,
    /// Print each device as a line of JSON (as the API returns it).
    #[arg(long)]
    pub json: bool,
}

/// Runs `callhome devices ...`.
pub async fn run(api: &ApiArgs, action: DevicesAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        DevicesAction::List(args) => list(&api, &args).await,
    }
}

async fn list(api: &Api, args: &ListArgs) -> anyhow::Result<()> {
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(t) = &args.tag {
        query.push(("tag", t.clone()));
    }
    if let Some(o) = args.online {
        query.push(("online", o.to_string()));
    }
    if let Some(d) = &args.drift {
        query.push(("drift", d.clone()));
    }
    if let Some(q) = &args.q {
        query.push(("q", q.clone()));
    }
    if args.json {
        // Streamed page by page: a large fleet never sits in memory.
        return api
            .each_page("/api/v1/devices", &query, None, |items| {
                print_json_lines(&items);
                Ok(())
            })
            .await;
    }
    let devices = api.list_all("/api/v1/devices", &query, None).await?;
    let with_drift = devices.iter().any(|d| !drift(d).is_null());
    let mut headers = vec!["IMEI", "NAME", "ONLINE", "TAGS"];
    if with_drift {
        headers.push("DRIFT");
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            let mut row = vec![
                cell(&d["imei"]),
                cell(&d["name"]),
                if d["online"].as_bool() == Some(true) {
                    "yes".to_owned()
                } else {
                    "no".to_owned()
                },
                cell(&d["tags"]),
            ];
            if with_drift {
                row.push(cell(drift(d)));
            }
            row
        })
        .collect();
    print_table(&headers, &rows);
    eprintln!("{} devices", devices.len());
    Ok(())
}

/// A device's drift state: `drift` as a string, or the `drift`/`state` member of a
/// `drift` (or `config`) object.
fn drift(d: &Value) -> &Value {
    for v in [&d["drift"], &d["config"]["drift"]] {
        match v {
            Value::String(_) => return v,
            Value::Object(o) => {
                if let Some(s) = o.get("drift").or_else(|| o.get("state")) {
                    return s;
                }
            }
            _ => {}
        }
    }
    &Value::Null
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn drift_in_any_likely_shape() {
        assert_eq!(drift(&json!({"drift": "drifted"})), "drifted");
        assert_eq!(drift(&json!({"drift": {"state": "in_sync"}})), "in_sync");
        assert_eq!(drift(&json!({"config": {"drift": "unknown"}})), "unknown");
        assert!(drift(&json!({"imei": "1"})).is_null());
    }
}
