//! `callhome connect`: a rendezvous session exposed as a plain local TCP port, so legacy
//! reading software that dials a TCP address (or a virtual COM port pointed at one) reads
//! meters through Callhome unchanged.
//!
//! For each local client: open a rendezvous session through the REST API, join it over the
//! session's WebSocket with its one-time token, and move bytes both ways. The local client
//! disconnecting ends the session (`reader_closed`); the session ending disconnects the
//! local client.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// `callhome connect` arguments.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The device (IMEI) whose meter to read.
    pub imei: String,
    /// Callhome API base URL, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "CALLHOME_API")]
    pub api: String,
    /// Access token (reader role or above).
    #[arg(
        long,
        env = "CALLHOME_TOKEN",
        hide_env_values = true,
        conflicts_with = "api_key"
    )]
    pub token: Option<String>,
    /// API key (reader role or above), instead of --token.
    #[arg(long, env = "CALLHOME_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Read the access token or API key from the first line of FILE (a token given as a
    /// flag shows in `ps`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "api_key"])]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https API URL.
    #[arg(long)]
    pub api_ca: Option<PathBuf>,
    /// Local address the reading software dials.
    #[arg(long, default_value = "127.0.0.1:2000")]
    pub listen: std::net::SocketAddr,
    /// Idle timeout of each session, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u32,
    /// Seconds the modem has to connect once asked.
    #[arg(long, default_value_t = 60)]
    pub pairing_timeout_s: u32,
    /// Serve one local connection, then exit.
    #[arg(long)]
    pub once: bool,
}

/// Runs until interrupted (or after one connection with `--once`).
pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let imei = callhome_core::Imei::parse(&args.imei).map_err(|e| anyhow::anyhow!("{e}"))?;
    let credential = credential(&args)?;
    let api = args.api.trim_end_matches('/').to_owned();
    let tls = match &args.api_ca {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(callhome_ca::tls::client_config(&pem, None, None)?)
        }
        None if api.starts_with("https://") => bail!("an https API needs --api-ca <CA PEM>"),
        None => None,
    };
    let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(cfg) = &tls {
        http = http.tls_backend_preconfigured((**cfg).clone());
    }
    let http = http.build()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    run_on(args, listener, http, api, credential, tls, imei).await
}

/// [`run`] on an already-bound listener (tests bind port 0).
pub async fn run_with_listener(args: ConnectArgs, listener: TcpListener) -> anyhow::Result<()> {
    let imei = callhome_core::Imei::parse(&args.imei).map_err(|e| anyhow::anyhow!("{e}"))?;
    let credential = credential(&args)?;
    let api = args.api.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    run_on(args, listener, http, api, credential, None, imei).await
}

/// The token from CALLHOME_TOKEN (--token), CALLHOME_API_KEY (--api-key), --token-file or
/// the saved login.
fn credential(args: &ConnectArgs) -> anyhow::Result<String> {
    super::api::client_credential(
        &args.api,
        args.token.as_ref(),
        args.api_key.as_ref(),
        args.token_file.as_deref(),
    )
}

async fn run_on(
    args: ConnectArgs,
    listener: TcpListener,
    http: reqwest::Client,
    api: String,
    credential: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    imei: callhome_core::Imei,
) -> anyhow::Result<()> {
    println!(
        "callhome connect: {imei} on {} (sessions through {api})",
        listener.local_addr()?
    );
    loop {
        let (local, peer) = tokio::select! {
            a = listener.accept() => a?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        println!("local client {peer}: opening a session");
        match serve_one(&http, &api, &credential, tls.clone(), &imei, &args, local).await {
            Ok(summary) => println!("{summary}"),
            Err(e) => eprintln!("session failed: {e:#}"),
        }
        if args.once {
            return Ok(());
        }
    }
}

async fn serve_one(
    http: &reqwest::Client,
    api: &str,
    credential: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    imei: &callhome_core::Imei,
    args: &ConnectArgs,
    mut local: TcpStream,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{api}/api/v1/devices/{imei}/sessions"))
        .bearer_auth(credential)
        .json(&callhome_api::routes::sessions::CreateSession {
            mode: "rendezvous".to_owned(),
            host: None,
            port: None,
            timeout_s: Some(args.timeout_s),
            pairing_timeout_s: Some(args.pairing_timeout_s),
            forward_id: None,
        })
        .send()
        .await?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "opening the session: {status}: {}",
            body["detail"].as_str().unwrap_or("no detail")
        );
    }
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let token = body["reader"]["token"]
        .as_str()
        .context("no reader token in the response")?;
    let path = body["reader"]["stream_path"]
        .as_str()
        .context("no stream path in the response")?;
    let ws_url = format!("{}{path}?token={token}", api.replacen("http", "ws", 1));
    let request = ws_url.into_client_request()?;
    let url = url_host_port(api)?;
    let tcp = TcpStream::connect(&url.1)
        .await
        .with_context(|| format!("connecting to {}", url.1))?;
    let _ = tcp.set_nodelay(true);
    let ws = match tls {
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(url.0.clone())?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await?;
            let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
            Either::Tls(ws)
        }
        None => {
            let (ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
            Either::Plain(ws)
        }
    };
    match ws {
        Either::Plain(ws) => pump(ws, &mut local).await,
        Either::Tls(ws) => pump(ws, &mut local).await,
    }
    // Report how the session ended.
    let mut summary = format!("session {id} ended");
    for _ in 0..20 {
        let s: serde_json::Value = http
            .get(format!("{api}/api/v1/sessions/{id}"))
            .bearer_auth(credential)
            .send()
            .await?
            .json()
            .await?;
        if s["state"] == "closed" {
            summary = format!(
                "session {id} closed ({}): {} bytes from the meter, {} to it",
                s["close_reason"].as_str().unwrap_or("?"),
                s["bytes_from_modem"],
                s["bytes_to_modem"]
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(summary)
}

enum Either<A, B> {
    Plain(A),
    Tls(B),
}

/// (host, "host:port") of an http(s) URL.
fn url_host_port(api: &str) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = api
        .split_once("://")
        .context("the API URL needs a scheme")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let default_port = if scheme == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.trim_matches(['[', ']']).to_owned(), p.parse::<u16>()?)
        }
        _ => (authority.trim_matches(['[', ']']).to_owned(), default_port),
    };
    Ok((
        host.clone(),
        format!(
            "{}:{port}",
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            }
        ),
    ))
}

async fn pump<S>(ws: tokio_tungstenite::WebSocketStream<S>, local: &mut TcpStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = local.split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_and_port_from_urls() {
        assert_eq!(
            super::url_host_port("http://127.0.0.1:8080").unwrap(),
            ("127.0.0.1".into(), "127.0.0.1:8080".into())
        );
        assert_eq!(
            super::url_host_port("https://ch.example/").unwrap(),
            ("ch.example".into(), "ch.example:443".into())
        );
        assert_eq!(
            super::url_host_port("http://[::1]:81").unwrap(),
            ("::1".into(), "[::1]:81".into())
        );
    }
}
