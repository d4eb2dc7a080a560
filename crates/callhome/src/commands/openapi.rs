//! `callhome openapi`: the OpenAPI document, and the drift check CI runs.

use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// The document as pretty JSON with a trailing newline.
pub fn render() -> anyhow::Result<String> {
    let doc = callhome_api::openapi::document();
    Ok(format!("{}\n", serde_json::to_string_pretty(&doc)?))
}

pub(super) fn run(output: Option<PathBuf>, check: Option<PathBuf>) -> anyhow::Result<()> {
    let text = render()?;
    if let Some(path) = check {
        let committed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if committed != text {
            bail!(
                "{} differs from the OpenAPI document the code generates; run `cargo run -- openapi --output {}` and commit the result",
                path.display(),
                path.display()
            );
        }
        println!("{} is up to date", path.display());
        return Ok(());
    }
    match output {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}
