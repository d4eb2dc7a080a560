//! `callhome config ...`: one device's Config.txt: show it (effective, reported, as a
//! file, overrides), change overrides, compare with the modem, apply it.

use anyhow::bail;
use serde_json::{Map, Value, json};

use crate::commands::api::{Api, ApiArgs, cell, paren, parse_key_value, print_items, print_table};
use crate::commands::jobs::{self, Restart};

/// `callhome config ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigAction {
    /// Show a device's configuration: the effective desired one (default), the one last
    /// read from the modem, the Config.txt file, or the device's overrides.
    Get(GetArgs),
    /// Change a device's overrides (merged into the current ones); `config apply` sends
    /// them to the modem.
    Set(SetArgs),
    /// Compare the desired configuration with the one last read from the modem.
    Diff {
        /// The device.
        imei: String,
        /// Read the configuration from the modem first (it must be online).
        #[arg(long)]
        read: bool,
        /// Print the API's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the desired configuration to the modem (a one-device job) and show the
    /// result of each key.
    Apply {
        /// The device.
        imei: String,
        /// When to restart the modem (default: when a changed key needs it).
        #[arg(long, value_enum)]
        restart: Option<Restart>,
        /// Print the job and return without waiting for it.
        #[arg(long)]
        no_wait: bool,
    },
}

/// `callhome config get` arguments.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("view").args(["effective", "reported", "txt", "overrides"])))]
pub struct GetArgs {
    /// The device.
    pub imei: String,
    /// The effective desired configuration: profile + overrides, validated (default).
    #[arg(long)]
    pub effective: bool,
    /// The configuration last read from the modem, and its drift.
    #[arg(long)]
    pub reported: bool,
    /// The desired Config.txt file, as a modem would load it.
    #[arg(long)]
    pub txt: bool,
    /// The device's profile and its own overrides.
    #[arg(long)]
    pub overrides: bool,
    /// Print the API's answer as JSON (not with --txt).
    #[arg(long, conflicts_with = "txt")]
    pub json: bool,
}

/// `callhome config set` arguments.
#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// The device.
    pub imei: String,
    /// KEY=VALUE overrides to set.
    #[arg(value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
    /// Remove KEY from the device's desired configuration (an override to null).
    #[arg(long, value_name = "KEY")]
    pub unset: Vec<String>,
    /// Forget the device's override of KEY (the profile's value applies again).
    #[arg(long, value_name = "KEY")]
    pub reset: Vec<String>,
}

/// Runs `callhome config ...`.
pub async fn run(api: &ApiArgs, action: ConfigAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        ConfigAction::Get(args) => get(&api, &args).await,
        ConfigAction::Set(args) => set(&api, &args).await,
        ConfigAction::Diff { imei, read, json } => diff(&api, &imei, read, json).await,
        ConfigAction::Apply {
            imei,
            restart,
            no_wait,
        } => apply(&api, &imei, restart, no_wait).await,
    }
}

/// `/api/v1/devices/{imei}{suffix}` for a valid IMEI.
fn device_path(imei: &str, suffix: &str) -> anyhow::Result<String> {
    let imei = callhome_core::Imei::parse(imei.trim()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("/api/v1/devices/{imei}{suffix}"))
}

fn print_text(text: &str) {
    if text.ends_with('\n') {
        print!("{text}");
    } else {
        println!("{text}");
    }
}

async fn get(api: &Api, args: &GetArgs) -> anyhow::Result<()> {
    if args.txt {
        print_text(
            &api.get_text(&device_path(&args.imei, "/config.txt")?)
                .await?,
        );
        return Ok(());
    }
    let suffix = if args.reported {
        "/config/reported"
    } else if args.overrides {
        "/config"
    } else {
        "/config/effective"
    };
    let v = api.get(&device_path(&args.imei, suffix)?, &[]).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if args.reported {
        print_reported(&v);
    } else if args.overrides {
        print_overrides(&v);
    } else {
        print_effective(&v);
    }
    Ok(())
}

fn profile_label(v: &Value) -> String {
    match (v["profile"].as_str(), v["profile_version"].as_i64()) {
        (Some(p), Some(n)) => format!("{p} (version {n})"),
        (Some(p), None) => p.to_owned(),
        _ => "none".to_owned(),
    }
}

fn print_effective(v: &Value) {
    print_text(v["config"].as_str().unwrap_or_default());
    eprintln!("profile: {}", profile_label(v));
    for e in v["errors"].as_array().into_iter().flatten() {
        eprintln!("error: {}: {}", cell(&e["field"]), cell(&e["reason"]));
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}: {}", cell(&w["key"]), cell(&w["message"]));
    }
    for p in v["unresolved_placeholders"]
        .as_array()
        .into_iter()
        .flatten()
    {
        eprintln!("unresolved placeholder: {}", cell(p));
    }
}

fn print_reported(v: &Value) {
    match v["config"].as_str() {
        Some(text) => {
            print_text(text);
            eprintln!(
                "read at {}; drift: {}{}",
                cell(&v["read_at"]),
                cell(&v["drift"]),
                paren(&v["drifted_keys"])
            );
        }
        None => eprintln!("never read from the modem: `callhome config diff IMEI --read` reads it"),
    }
}

fn print_overrides(v: &Value) {
    println!("profile: {}", profile_label(v));
    let overrides = v["overrides"].as_object().cloned().unwrap_or_default();
    if overrides.is_empty() {
        println!("no overrides");
        return;
    }
    let rows: Vec<Vec<String>> = overrides
        .iter()
        .map(|(k, val)| {
            let shown = match val {
                Value::Null => "(removed)".to_owned(),
                other => cell(other),
            };
            vec![k.clone(), shown]
        })
        .collect();
    print_table(&["KEY", "VALUE"], &rows);
}

/// The overrides after `args`: keys matched ignoring case (the existing spelling wins).
fn merge(mut current: Map<String, Value>, args: &SetArgs) -> Map<String, Value> {
    let mut put = |key: &str, value: Option<Value>| {
        let existing = current
            .keys()
            .find(|k| k.eq_ignore_ascii_case(key))
            .cloned();
        let key = existing.unwrap_or_else(|| key.to_owned());
        match value {
            Some(v) => {
                current.insert(key, v);
            }
            None => {
                current.remove(&key);
            }
        }
    };
    for (k, v) in &args.set {
        put(k, Some(json!(v)));
    }
    for k in &args.unset {
        put(k, Some(Value::Null));
    }
    for k in &args.reset {
        put(k, None);
    }
    current
}

async fn set(api: &Api, args: &SetArgs) -> anyhow::Result<()> {
    if args.set.is_empty() && args.unset.is_empty() && args.reset.is_empty() {
        bail!("nothing to change: give KEY=VALUE, --unset KEY or --reset KEY");
    }
    let path = device_path(&args.imei, "/config")?;
    let current = api.get(&path, &[]).await?;
    let overrides = merge(
        current["overrides"]
            .as_object()
            .cloned()
            .unwrap_or_default(),
        args,
    );
    let body = callhome_api::routes::config::PutDeviceConfig {
        overrides: serde_json::from_value(serde_json::Value::Object(overrides)).map_err(|e| {
            anyhow::anyhow!("the server's overrides are not KEY -> text or null: {e}")
        })?,
    };
    let stored = api.put(&path, &body).await?;
    print_overrides(&stored);
    eprintln!(
        "stored; send it to the modem with `callhome config apply {}`",
        args.imei.trim()
    );
    Ok(())
}

async fn diff(api: &Api, imei: &str, read: bool, as_json: bool) -> anyhow::Result<()> {
    if read {
        let r = api.post(&device_path(imei, "/config/read")?, None).await?;
        eprintln!("read from the modem at {}", cell(&r["read_at"]));
    }
    let d = api.get(&device_path(imei, "/config/diff")?, &[]).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    println!(
        "drift: {} (read at {})",
        cell(&d["drift"]),
        cell(&d["read_at"])
    );
    // `null`: the key is not desired, or not reported.
    let keys: Vec<Value> = d["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let mut k = k.clone();
            for side in ["desired", "reported"] {
                if k[side].is_null() {
                    k[side] = json!("(absent)");
                }
            }
            k
        })
        .collect();
    if !keys.is_empty() {
        print_items(
            &keys,
            &[
                ("KEY", "key"),
                ("DESIRED", "desired"),
                ("REPORTED", "reported"),
            ],
        );
    }
    Ok(())
}

async fn apply(
    api: &Api,
    imei: &str,
    restart: Option<Restart>,
    no_wait: bool,
) -> anyhow::Result<()> {
    let body = restart
        .map(|r| {
            serde_json::to_value(callhome_api::routes::jobs::ApplyRequest {
                restart: r.policy(),
            })
        })
        .transpose()?;
    let job = api
        .post(&device_path(imei, "/config/apply")?, body.as_ref())
        .await?;
    let id = cell(&job["id"]);
    println!("apply job {id}: {}", cell(&job["state"]));
    if no_wait {
        println!("follow it with: callhome jobs watch {id}");
        return Ok(());
    }
    let job = jobs::watch(api, &id).await?;
    let devices = api
        .list_all(&jobs::job_path(&id, "/devices")?, &[], None)
        .await?;
    for d in &devices {
        jobs::print_device_result(d);
    }
    jobs::check_outcome(api, &job).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_spelling_and_removes() {
        let current = json!({"DNS_period": "600", "MTX_PIN": "1234", "X": "1"})
            .as_object()
            .cloned()
            .unwrap();
        let args = SetArgs {
            imei: String::new(),
            set: vec![
                ("dns_period".into(), "300".into()),
                ("New_key".into(), String::new()),
            ],
            unset: vec!["mtx_pin".into()],
            reset: vec!["x".into()],
        };
        assert_eq!(
            Value::Object(merge(current, &args)),
            json!({"DNS_period": "300", "MTX_PIN": null, "New_key": ""})
        );
    }

    #[test]
    fn device_paths_need_a_valid_imei() {
        assert_eq!(
            device_path(" 490154203237518 ", "/config").unwrap(),
            "/api/v1/devices/490154203237518/config"
        );
        let e = device_path("490154203237519", "").unwrap_err().to_string();
        assert!(e.contains("check digit"), "{e}");
    }
}
