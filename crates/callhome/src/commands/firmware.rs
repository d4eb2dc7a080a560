//! `callhome firmware ...`: the firmware repository from the command line: upload (streamed
//! from the file, with a progress bar on a terminal), list, show, delete, and the fleet's
//! distribution of models and versions. Campaigns are jobs: `callhome jobs create --op
//! firmware-update --firmware ID ...`.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::commands::api::{Api, ApiArgs, cell, print_json_lines, print_table};

/// `callhome firmware ...`.
#[derive(Debug, clap::Subcommand)]
pub enum FirmwareAction {
    /// Upload a firmware image or MIDlet JAR to the repository.
    // `--version` is the firmware's version here, not the program's.
    #[command(disable_version_flag = true)]
    Upload(UploadArgs),
    /// List the repository, newest first.
    List {
        /// Print each firmware as a line of JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one firmware.
    Show {
        /// Firmware id.
        id: String,
    },
    /// Remove a firmware (refused while a campaign uses it).
    Delete {
        /// Firmware id.
        id: String,
    },
    /// How many devices report each model and firmware version.
    Distribution {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What the repository holds a file as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A whole firmware image.
    Image,
    /// A Java ME MIDlet (JAR) installed by OTAP.
    Midlet,
}

/// `callhome firmware upload` arguments.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The image or JAR.
    pub file: PathBuf,
    /// The version it installs (what the modem's VERSION reports after it).
    #[arg(long)]
    pub version: String,
    /// A model it is for (repeatable, or comma-separated).
    #[arg(long = "model", required = true, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Image or MIDlet.
    #[arg(long, value_enum, default_value = "image")]
    pub kind: Kind,
    /// A MIDlet's JAD (made from the JAR's manifest when absent).
    #[arg(long, value_name = "FILE")]
    pub jad: Option<PathBuf>,
    /// Detached signature over the file's SHA-256, raw bytes or base64 in a file.
    #[arg(long, value_name = "FILE")]
    pub signature_file: Option<PathBuf>,
    /// Release notes.
    #[arg(long)]
    pub notes: Option<String>,
    /// Devices below this version may not take it.
    #[arg(long, value_name = "VERSION")]
    pub min_version: Option<String>,
}

/// Runs `callhome firmware ...`.
pub async fn run(api: &ApiArgs, action: FirmwareAction) -> anyhow::Result<()> {
    let api = Api::connect(api)?;
    match action {
        FirmwareAction::Upload(args) => upload(&api, &args).await,
        FirmwareAction::List { json } => list(&api, json).await,
        FirmwareAction::Show { id } => {
            let fw = api.get(&path(&id)?, &[]).await?;
            println!("{}", serde_json::to_string_pretty(&fw)?);
            Ok(())
        }
        FirmwareAction::Delete { id } => {
            api.delete(&path(&id)?).await?;
            println!("deleted firmware {id}");
            Ok(())
        }
        FirmwareAction::Distribution { json } => distribution(&api, json).await,
    }
}

fn path(id: &str) -> anyhow::Result<String> {
    let id: uuid::Uuid = id
        .parse()
        .with_context(|| format!("{id:?} is not a firmware id"))?;
    Ok(format!("/api/v1/firmware/{id}"))
}

/// A signature file's content as base64: kept if it already is base64 text, encoded if
/// it is raw bytes.
fn signature_base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    match std::str::from_utf8(bytes) {
        Ok(text) if b64.decode(text.trim()).is_ok() => text.trim().to_owned(),
        _ => b64.encode(bytes),
    }
}

async fn upload(api: &Api, args: &UploadArgs) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().await?.len();
    if size == 0 {
        bail!("{} is empty", args.file.display());
    }
    let mut metadata = json!({
        "version": args.version,
        "models": args.models,
        "kind": match args.kind { Kind::Image => "image", Kind::Midlet => "midlet" },
    });
    if let Some(n) = &args.notes {
        metadata["notes"] = json!(n);
    }
    if let Some(v) = &args.min_version {
        metadata["min_version"] = json!(v);
    }
    if let Some(p) = &args.signature_file {
        let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        metadata["signature"] = json!(signature_base64(&bytes));
    }
    let bar = std::io::stderr().is_terminal().then(|| {
        ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr()).with_style(
            ProgressStyle::with_template("[{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        )
    });
    let counter = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let (Some(b), Ok(c)) = (&counter, chunk) {
            b.inc(c.len() as u64);
        }
    });
    let name = args.file.file_name().map_or_else(
        || "firmware".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), size)
            .file_name(name)
            .mime_str("application/octet-stream")?;
    let mut form = reqwest::multipart::Form::new()
        .part(
            "metadata",
            reqwest::multipart::Part::text(metadata.to_string()).mime_str("application/json")?,
        )
        .part("file", part);
    if let Some(p) = &args.jad {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        form = form.text("jad", text);
    }
    let result = api.post_multipart("/api/v1/firmware", form).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let fw = result?;
    println!(
        "uploaded firmware {}: {} {} for {} ({} bytes, sha256 {}{})",
        cell(&fw["id"]),
        cell(&fw["kind"]),
        cell(&fw["version"]),
        models(&fw["models"]),
        cell(&fw["size"]),
        cell(&fw["sha256"]),
        fw["signed_by"]
            .as_str()
            .map(|k| format!(", signed by {k}"))
            .unwrap_or_default()
    );
    println!(
        "roll it out with: callhome jobs create --op firmware-update --firmware {} --filter-model MODEL --waves 1,10,100 --watch",
        cell(&fw["id"])
    );
    Ok(())
}

fn models(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

async fn list(api: &Api, json: bool) -> anyhow::Result<()> {
    let items = api.list_all("/api/v1/firmware", &[], None).await?;
    if json {
        print_json_lines(&items);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|f| {
            vec![
                cell(&f["id"]),
                cell(&f["version"]),
                cell(&f["kind"]),
                models(&f["models"]),
                cell(&f["size"]),
                cell(&f["signed_by"]),
                cell(&f["created_at"]),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "VERSION",
            "KIND",
            "MODELS",
            "SIZE",
            "SIGNED BY",
            "UPLOADED",
        ],
        &rows,
    );
    Ok(())
}

async fn distribution(api: &Api, json: bool) -> anyhow::Result<()> {
    let d = api.get("/api/v1/firmware/distribution", &[]).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let total = d["total"].as_i64().unwrap_or(0).max(1);
    let rows: Vec<Vec<String>> = d["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let n = r["devices"].as_i64().unwrap_or(0);
            #[allow(clippy::cast_precision_loss)]
            let pct = n as f64 * 100.0 / total as f64;
            vec![
                r["model"].as_str().unwrap_or("(not reported)").to_owned(),
                r["version"].as_str().unwrap_or("(not reported)").to_owned(),
                n.to_string(),
                format!("{pct:.1}%"),
            ]
        })
        .collect();
    print_table(&["MODEL", "VERSION", "DEVICES", "SHARE"], &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_are_sent_as_base64() {
        assert_eq!(super::signature_base64(b"AAEC\n"), "AAEC");
        assert_eq!(super::signature_base64(&[0, 1, 2, 0xff]), "AAEC/w==");
    }
}
