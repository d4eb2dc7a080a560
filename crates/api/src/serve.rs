//! Serving the HTTP application with every connection bounded: a cap on connections at once
//! and per peer address (IPv4 by address, IPv6 by /64), a deadline for each request head
//! (hyper's header read timeout, which also ends a keep-alive connection that sends no next
//! request), and an idle timeout (no byte read or written) for everything else, such as a
//! stalled body. A connection over a cap is closed at once, before any byte is read.
//!
//! Our own accept loop over hyper's HTTP/1 connection (axum's `serve` has no timer, so no
//! header read timeout): graceful shutdown lets in-flight requests finish and closes idle
//! connections.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use callhome_net::{IdleClock, PerAddressLimit, Watched};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

/// Bounds of the HTTP listener.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// A request head must arrive complete within this of the connection opening or of the
    /// previous response (so it also ends idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed (a stalled body,
    /// a client that stopped reading). Upgraded connections (WebSocket) are not watched.
    pub idle_timeout: Duration,
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one peer address.
    pub max_connections_per_address: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 10_000,
            max_connections_per_address: 512,
        }
    }
}

/// First pause after a failed accept; doubled on each further failure.
const BACKOFF_START: Duration = Duration::from_millis(5);
/// Longest pause after a failed accept.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Serves `app` on an already-bound listener until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (idle connections close at once) and returns
/// when every connection has ended. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let stop = CancellationToken::new();
    let stop_on_signal = stop.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        stop_on_signal.cancel();
    });
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = PerAddressLimit::new(limits.max_connections_per_address);
    let tracker = TaskTracker::new();
    let mut backoff = BACKOFF_START;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_START;
                a
            }
            Err(e) => {
                warn!(listener = "http", error = %e, "accept failed; retrying");
                metrics::counter!("callhome_http_accept_errors_total").increment(1);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some(addr_permit) = per_address.try_acquire(addr.ip()) else {
            debug!(peer = %addr, "HTTP connection limit per address reached; closing");
            metrics::counter!("callhome_http_rejected_total", "reason" => "max_connections_per_address")
                .increment(1);
            drop(tcp);
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            debug!(peer = %addr, "HTTP connection limit reached; closing");
            metrics::counter!("callhome_http_rejected_total", "reason" => "max_connections")
                .increment(1);
            drop(tcp);
            continue;
        };
        let app = app.clone();
        let limits = limits.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permits = (permit, addr_permit);
            serve_connection(tcp, addr, app, &limits, stop).await;
        });
    }
    drop(listener);
    signal.abort();
    info!(
        listener = "http",
        open = tracker.len(),
        "stopped accepting; draining"
    );
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// One connection, to its end.
async fn serve_connection(
    tcp: TcpStream,
    addr: SocketAddr,
    app: Router,
    limits: &ServeLimits,
    stop: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let clock = IdleClock::new();
    let io = TokioIo::new(Watched::new(tcp, clock.clone()));
    let service = app.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        req
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    let check = (limits.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(peer = %addr, error = %e, "HTTP connection ended with an error");
                    if e.is_timeout() {
                        metrics::counter!("callhome_http_timeouts_total", "kind" => "header_read")
                            .increment(1);
                    }
                }
                return;
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep(check) => {
                if clock.idle_for() >= limits.idle_timeout {
                    debug!(peer = %addr, "HTTP connection idle; closing");
                    metrics::counter!("callhome_http_timeouts_total", "kind" => "idle")
                        .increment(1);
                    return;
                }
            }
        }
    }
}
