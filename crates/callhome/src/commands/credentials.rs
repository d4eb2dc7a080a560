//! The credentials `callhome login` saves: `{server, token, expires}` in
//! `credentials.json`, in `$CALLHOME_CONFIG_DIR`, else `$XDG_CONFIG_HOME/callhome`, else
//! `~/.config/callhome` (directory 0700, file 0600, written atomically).

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// File name inside the configuration directory.
const FILE_NAME: &str = "credentials.json";

/// What `callhome login` saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Server base URL (normalized, no trailing `/`).
    pub server: String,
    /// The bearer access token.
    pub token: String,
    /// RFC 3339: when the token expires.
    pub expires: String,
}

impl Stored {
    /// Credentials for `server` expiring `expires_in_s` seconds from now.
    pub fn new(server: &str, token: &str, expires_in_s: i64) -> anyhow::Result<Self> {
        let expires = (OffsetDateTime::now_utc() + time::Duration::seconds(expires_in_s))
            .replace_nanosecond(0)?;
        Ok(Self {
            server: server.to_owned(),
            token: token.to_owned(),
            expires: expires.format(&Rfc3339)?,
        })
    }

    /// Whether the token has expired (an unreadable date counts as expired).
    pub fn is_expired(&self) -> bool {
        OffsetDateTime::parse(&self.expires, &Rfc3339)
            .map_or(true, |t| t <= OffsetDateTime::now_utc())
    }
}

/// The configuration directory (see the module documentation).
pub fn dir() -> anyhow::Result<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = var("CALLHOME_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = var("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(d).join("callhome"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("callhome")),
        None => bail!("cannot find a configuration directory: set CALLHOME_CONFIG_DIR or HOME"),
    }
}

/// The credentials file.
pub fn path() -> anyhow::Result<PathBuf> {
    Ok(dir()?.join(FILE_NAME))
}

/// The saved credentials, if any.
pub fn load() -> anyhow::Result<Option<Stored>> {
    let path = path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let stored = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a credentials file (remove it with `callhome logout`)",
            path.display()
        )
    })?;
    Ok(Some(stored))
}

/// Saves `stored`, creating the directory (0700) if needed; the file is 0600.
pub fn save(stored: &Stored) -> anyhow::Result<PathBuf> {
    let dir = dir()?;
    create_private_dir(&dir)?;
    let path = dir.join(FILE_NAME);
    let json = serde_json::to_vec_pretty(stored)?;
    callhome_ca::write_secret_file(&path, &json)?;
    Ok(path)
}

/// Removes the saved credentials; `false` if there were none.
pub fn remove() -> anyhow::Result<bool> {
    let path = path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        assert!(!Stored::new("http://x", "t", 60).unwrap().is_expired());
        assert!(Stored::new("http://x", "t", -1).unwrap().is_expired());
        let mut s = Stored::new("http://x", "t", 60).unwrap();
        s.expires = "soon".into();
        assert!(s.is_expired());
    }
}
