//! `callhome login` and `callhome logout`: an access token from the API's token endpoint,
//! saved for the other operator commands (see [`super::credentials`]).

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};

use callhome_api::routes::auth::TokenRequest;

use crate::commands::api::{Api, normalize_server};
use crate::commands::credentials::{self, Stored};

/// `callhome login` arguments.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Callhome server URL, e.g. http://127.0.0.1:8080 (default: the one saved by the
    /// last login).
    #[arg(long, env = "CALLHOME_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// User name.
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// Read the password from the first line of standard input (else it is asked for
    /// on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
}

/// Exchanges user name and password for a token and saves it.
pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let server = match (&args.server, credentials::load().ok().flatten()) {
        (Some(s), _) => normalize_server(s)?,
        (None, Some(st)) => st.server,
        (None, None) => bail!("give --server URL (or CALLHOME_SERVER)"),
    };
    let password = if args.password_stdin {
        super::read_stdin_line("the password")?
    } else {
        prompt_password(&format!("Password for {} on {server}: ", args.username))?
    };
    let issued = Api::anonymous(&server)?
        .post(
            "/api/v1/auth/token",
            Some(&serde_json::to_value(TokenRequest {
                username: Some(args.username.clone()),
                password: Some(password),
                api_key: None,
            })?),
        )
        .await?;
    let token = issued["access_token"]
        .as_str()
        .context("the token endpoint answered without an access_token")?;
    let expires_in = issued["expires_in"].as_i64().unwrap_or(3600);
    let stored = Stored::new(&server, token, expires_in)?;
    let me = Api::anonymous(&server)?
        .with_token(token)
        .get("/api/v1/auth/whoami", &[])
        .await?;
    let path = credentials::save(&stored)?;
    println!(
        "logged in to {server} as {} ({}); the token is valid until {}",
        me["name"].as_str().unwrap_or(&args.username),
        me["role"].as_str().unwrap_or("?"),
        stored.expires
    );
    println!("saved in {}", path.display());
    Ok(())
}

/// Forgets the saved token.
pub fn logout() -> anyhow::Result<()> {
    let path = credentials::path()?;
    if credentials::remove()? {
        println!("removed {}", path.display());
    } else {
        println!("not logged in (no {})", path.display());
    }
    Ok(())
}

/// Asks for a password on the terminal without echoing it.
fn prompt_password(prompt: &str) -> anyhow::Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "standard input is not a terminal: give --password-stdin to read the password from it"
        );
    }
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let hidden = stty("-echo");
    let line = super::read_stdin_line("the password");
    if hidden {
        stty("echo");
    }
    eprintln!();
    line
}
