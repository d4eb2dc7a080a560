//! `callhome-bench serve-static`: the plain static HTTPS file server the firmware benchmark
//! measures as its reference, started by it as a child process (so its CPU time and memory
//! are read alone from `/proc`).
//!
//! One file, read into memory at start, served whole at `GET /img` (200, `Content-Length`,
//! `application/octet-stream`) by hyper over TLS 1.3/1.2 (tokio-rustls, ring) with a
//! throwaway self-signed ECDSA P-256 certificate made by rcgen at start: the same key type as
//! Callhome's server certificate. No client certificate, no database, no token, no log, no
//! range, no accounting. Each connection's handshake runs in its own task under a 10 s
//! deadline. By default it answers `Connection: close`, so every download is one TCP
//! connection and one TLS handshake, as every simulated modem's download is on Callhome;
//! `--keep-alive` lets a client reuse connections.
//!
//! It prints `callhome-bench serve-static: listening <addr>` on standard output once bound,
//! and runs until it is killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the line announcing the bound address starts with.
pub const LISTENING: &str = "callhome-bench serve-static: listening ";

/// `callhome-bench serve-static ...` (used by `callhome-bench firmware`).
#[derive(Debug, clap::Args)]
pub struct StaticArgs {
    /// The file served at `/img`.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Where to listen (loopback only).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Keep connections open between requests (HTTP/1.1 keep-alive); by default each
    /// response closes its connection.
    #[arg(long)]
    pub keep_alive: bool,
}

fn respond(req: &Request<Incoming>, body: &Bytes) -> Response<Full<Bytes>> {
    let mut resp = if req.uri().path() == "/img"
        && (req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD)
    {
        let mut r = Response::new(Full::new(if req.method() == hyper::Method::GET {
            body.clone()
        } else {
            Bytes::new()
        }));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/octet-stream"),
        );
        r.headers_mut().insert(
            header::CONTENT_LENGTH,
            header::HeaderValue::from(body.len()),
        );
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    resp.headers_mut().insert(
        header::SERVER,
        header::HeaderValue::from_static("callhome-bench-static"),
    );
    resp
}

pub async fn run(args: StaticArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!("--listen must be a loopback address (127.0.0.0/8 or ::1)");
    }
    let body = Bytes::from(
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?,
    );
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .context("making the throwaway certificate")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![cert.cert.der().clone()];
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("{LISTENING}{}", listener.local_addr()?);
    let keep_alive = args.keep_alive;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: wait, go on.
                eprintln!("serve-static: accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(&req, &body);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(keep_alive)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
