//! Firmware updates, modem side, against a test HTTPS server (hyper + rustls, client
//! certificate required, certificates from `callhome_ca`) that serves an image with
//! Range support and can cut, stall or refuse: the download and OTAP flows directly, then
//! whole modems driven through Mosquitto on 127.0.0.1:1883 (plain MQTT; the downloads use
//! the modem's certificate).
//!
//! Set `CALLHOME_TEST_MQTT=host:port` to use another broker.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use callhome_ca::tls::{ClientAuth, server_config};
use callhome_ca::{Authority, CaParams, generate_key_and_csr};
use callhome_core::Imei;
use callhome_core::otap::Jad;
use callhome_sim::firmware::{
    DownloadSettings, FirmwareFault, ImageUpdate, JobContext, JobOutcome, OtapRequest,
    run_image_update, run_otap,
};
use callhome_sim::{
    Backoff, Counters, Credentials, Fleet, FleetConfig, FleetTransport, ModemHandle, ModemSettings,
    SimModem, TlsBase, Transport, config::MasterConfig,
};
use futures::StreamExt as _;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use rumqttc::{AsyncClient, Event, Incoming as MqttIncoming, MqttOptions, QoS};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCdE";

// ----------------------------------------------------------------------------------
// PKI

struct Pki {
    _dir: tempfile::TempDir,
    authority: Authority,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new() -> Self {
        callhome_sim::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let authority =
            Authority::load_or_init(&dir.path().join("ca"), &CaParams::default()).unwrap();
        let identity = authority
            .ensure_server_identity(&dir.path().join("server"), &[])
            .unwrap();
        let server = server_config(
            &identity,
            &[authority.ca_certificate_der().clone()],
            vec![],
            ClientAuth::Required,
        )
        .unwrap();
        Self {
            _dir: dir,
            authority,
            server,
        }
    }

    /// A modem TLS configuration: trusts this CA, presents a certificate for `imei`.
    fn device_tls(&self, imei: &Imei) -> Arc<rustls::ClientConfig> {
        let (key_pem, csr) = generate_key_and_csr(imei.as_str()).unwrap();
        let issued = self.authority.sign_csr(&csr, imei.as_str(), None).unwrap();
        let credentials = Credentials {
            cert_pem: issued.certificate_pem,
            key_pem,
        };
        TlsBase::new(self.authority.ca_certificate_pem())
            .unwrap()
            .for_device(&credentials)
            .unwrap()
    }
}

// ----------------------------------------------------------------------------------
// The test firmware server

/// What the server does with the n-th GET of the image (0-based).
#[derive(Debug, Clone, Copy)]
enum Twist {
    /// Answer with this status and no body.
    Status(u16),
    /// Send the headers and this many bytes, then cut the connection.
    Cut(usize),
    /// Send the headers and this many bytes, then nothing (the connection stays open).
    Stall(usize),
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Announce no length (chunked) and send the image followed by this many extra bytes.
    Longer(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    if_range: Option<String>,
    status: u16,
}

#[derive(Default)]
struct State {
    image: Bytes,
    etag: String,
    twists: HashMap<usize, Twist>,
    /// The ETag changes after the first GET (a new image behind the same URL).
    change_etag: bool,
    image_gets: usize,
    jad: Option<String>,
    seen: Vec<Seen>,
    notifies: Vec<String>,
}

type Body = BoxBody<Bytes, std::io::Error>;

struct Server {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Server {
    async fn start(pki: &Pki, image: &[u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            image: Bytes::copy_from_slice(image),
            etag: format!("\"{}\"", hex::encode(Sha256::digest(image))),
            ..State::default()
        }));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { port, state }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/fw/{TOKEN}", self.port)
    }

    fn twist(&self, get: usize, twist: Twist) {
        self.state.lock().unwrap().twists.insert(get, twist);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn image_gets(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == "GET" && s.path == format!("/fw/{TOKEN}"))
            .collect()
    }

    fn notifies(&self) -> Vec<String> {
        self.state.lock().unwrap().notifies.clone()
    }

    /// Serves a JAD for the image (as a JAR) at `<url>/jad`, with `jar_size` announced.
    fn serve_jad(&self, version: &str, jar_size: u64) {
        let url = self.url();
        let jad = Jad::for_release(
            "Callhome Test",
            "Callhome",
            version,
            &url,
            jar_size,
            &format!("{url}/notify"),
        )
        .unwrap();
        self.state.lock().unwrap().jad = Some(jad.render());
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn respond(status: u16, headers: &[(&str, String)], body: Body) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(body).unwrap()
}

async fn handle(st: &Mutex<State>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let hdr = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let range = hdr(header::RANGE);
    let if_range = hdr(header::IF_RANGE);
    let base = format!("/fw/{TOKEN}");
    let (response, delay) = if method == "POST" && path == format!("{base}/notify") {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        st.lock()
            .unwrap()
            .notifies
            .push(String::from_utf8_lossy(&body).trim_end().to_owned());
        (respond(200, &[], full("")), None)
    } else if method == "GET" && path == format!("{base}/jad") {
        match st.lock().unwrap().jad.clone() {
            Some(jad) => (
                respond(
                    200,
                    &[(
                        "content-type",
                        "text/vnd.sun.j2me.app-descriptor".to_owned(),
                    )],
                    full(jad),
                ),
                None,
            ),
            None => (respond(404, &[], full("")), None),
        }
    } else if method == "GET" && path == base {
        image_response(st, range.as_deref(), if_range.as_deref())
    } else {
        (respond(404, &[], full("")), None)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    st.lock().unwrap().seen.push(Seen {
        method,
        path,
        range,
        if_range,
        status: response.status().as_u16(),
    });
    response
}

fn image_response(
    st: &Mutex<State>,
    range: Option<&str>,
    if_range: Option<&str>,
) -> (Response<Body>, Option<Duration>) {
    let mut s = st.lock().unwrap();
    let n = s.image_gets;
    s.image_gets += 1;
    let twist = s.twists.get(&n).copied();
    let etag = s.etag.clone();
    if s.change_etag && n == 0 {
        s.etag = "\"changed\"".to_owned();
    }
    let image = s.image.clone();
    drop(s);
    let size = image.len();
    let start = match range {
        Some(r) if if_range.is_none_or(|i| i == etag) => {
            let a: usize = r
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|a| a.parse().ok())
                .expect("the simulator asks for bytes=<a>-");
            if a >= size {
                let h = [("content-range", format!("bytes */{size}"))];
                return (respond(416, &h, full("")), None);
            }
            Some(a)
        }
        _ => None,
    };
    let from = start.unwrap_or(0);
    let rest = image.slice(from..);
    let mut headers = vec![
        ("etag", etag),
        ("accept-ranges", "bytes".to_owned()),
        ("content-type", "application/octet-stream".to_owned()),
    ];
    let status = match start {
        Some(a) => {
            headers.push(("content-range", format!("bytes {a}-{}/{size}", size - 1)));
            206
        }
        None => 200,
    };
    let chunked = |frames: Vec<Result<Frame<Bytes>, std::io::Error>>, then_hang: bool| {
        let s = futures::stream::iter(frames);
        if then_hang {
            http_body_util::BodyExt::boxed(StreamBody::new(s.chain(futures::stream::pending())))
        } else {
            http_body_util::BodyExt::boxed(StreamBody::new(s))
        }
    };
    let cut_error = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "cut");
    match twist {
        Some(Twist::Status(code)) => (respond(code, &[], full("")), None),
        Some(Twist::Cut(k)) => {
            headers.push(("content-length", rest.len().to_string()));
            // The bytes go out (the body waits a little), then the connection is cut.
            let first = futures::stream::iter([Ok(Frame::data(rest.slice(..k)))]);
            let cut = futures::stream::once(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(cut_error())
            });
            let body = http_body_util::BodyExt::boxed(StreamBody::new(first.chain(cut)));
            (respond(status, &headers, body), None)
        }
        Some(Twist::Stall(k)) => {
            headers.push(("content-length", rest.len().to_string()));
            let frames = vec![Ok(Frame::data(rest.slice(..k)))];
            (respond(status, &headers, chunked(frames, true)), None)
        }
        Some(Twist::Longer(extra)) => {
            let frames = vec![
                Ok(Frame::data(rest)),
                Ok(Frame::data(Bytes::from(vec![0u8; extra]))),
            ];
            (respond(status, &headers, chunked(frames, false)), None)
        }
        Some(Twist::Delay(d)) => {
            headers.push(("content-length", rest.len().to_string()));
            (respond(status, &headers, full(rest)), Some(d))
        }
        None => {
            headers.push(("content-length", rest.len().to_string()));
            (respond(status, &headers, full(rest)), None)
        }
    }
}

// ----------------------------------------------------------------------------------
// Helpers

fn random_imei() -> Imei {
    let body = format!(
        "97{:012}",
        rand::rng().random_range(0..1_000_000_000_000u64)
    );
    Imei::from_body(&body).unwrap()
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn fast_settings() -> DownloadSettings {
    DownloadSettings {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        stall_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        ..DownloadSettings::default()
    }
}

struct Direct {
    pki: Pki,
    server: Server,
    image: Vec<u8>,
    counters: Arc<Counters>,
}

impl Direct {
    async fn new(len: usize) -> Self {
        let pki = Pki::new();
        let image = image(len);
        let server = Server::start(&pki, &image).await;
        Self {
            pki,
            server,
            image,
            counters: Arc::new(Counters::new(1)),
        }
    }

    fn ctx(&self, fault: FirmwareFault, settings: DownloadSettings) -> JobContext {
        let imei = random_imei();
        JobContext::new(
            imei.as_str(),
            &self.pki.device_tls(&imei),
            settings,
            fault,
            self.counters.clone(),
        )
    }

    fn job(&self, sha256: &[u8], size: usize) -> ImageUpdate {
        let args = [
            self.server.url(),
            "2.0.0".to_owned(),
            hex::encode(sha256),
            size.to_string(),
        ];
        ImageUpdate::from_args(&args).unwrap()
    }

    fn right_job(&self) -> ImageUpdate {
        self.job(&Sha256::digest(&self.image), self.image.len())
    }

    async fn run(&self, fault: FirmwareFault, job: &ImageUpdate) -> JobOutcome {
        let ctx = self.ctx(fault, fast_settings());
        tokio::time::timeout(WAIT, run_image_update(&ctx, job))
            .await
            .expect("the update ends")
    }

    async fn otap(&self, fault: FirmwareFault) -> JobOutcome {
        let jad_url = format!("{}/jad", self.server.url());
        let req = OtapRequest::parse_command(&format!("AT^SJOTAP=,{jad_url},a:/,,,gprs,,,,,"))
            .unwrap()
            .unwrap();
        let ctx = self.ctx(fault, fast_settings());
        tokio::time::timeout(WAIT, run_otap(&ctx, &req))
            .await
            .expect("the update ends")
    }
}

fn installed(version: &str) -> JobOutcome {
    JobOutcome::Install {
        version: version.to_owned(),
    }
}

#[track_caller]
fn assert_rejected(outcome: &JobOutcome, code: u16, reason_contains: &str) {
    match outcome {
        JobOutcome::Rejected {
            status,
            reason,
            notified,
        } => {
            assert_eq!(status.code(), code, "{outcome:?}");
            assert!(reason.contains(reason_contains), "{reason}");
            assert!(notified, "{outcome:?}");
        }
        other => panic!("expected a rejection with {code}, got {other:?}"),
    }
}

// ----------------------------------------------------------------------------------
// Image downloads, directly

#[tokio::test]
async fn a_plain_download_installs_and_reports_900() {
    let d = Direct::new(100_000).await;
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        installed("2.0.0")
    );
    let gets = d.server.image_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!((gets[0].range.as_deref(), gets[0].status), (None, 200));
    assert_eq!(d.server.notifies(), ["900 Success"]);
    let c = d.counters.snapshot();
    assert_eq!(c.downloads_started, 1);
    assert_eq!(c.download_bytes, 100_000);
    assert_eq!(c.notifies_sent, 1);
    assert_eq!((c.download_resumes, c.downloads_refused), (0, 0));
}

#[tokio::test]
async fn a_cut_download_resumes_with_range_and_if_range() {
    let d = Direct::new(200_000).await;
    d.server.twist(0, Twist::Cut(70_000));
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        installed("2.0.0")
    );
    let gets = d.server.image_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let etag = format!("\"{}\"", hex::encode(Sha256::digest(&d.image)));
    let range = gets[1]
        .range
        .as_deref()
        .expect("the second GET has a Range");
    let from: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("bad range {range}"));
    assert!(from > 0 && from <= 70_000, "{range}");
    assert_eq!(gets[1].if_range.as_deref(), Some(etag.as_str()));
    assert_eq!(gets[1].status, 206);
    assert_eq!(d.server.notifies(), ["900 Success"]);
    let c = d.counters.snapshot();
    assert_eq!(c.download_resumes, 1);
    assert_eq!(c.download_bytes, 200_000);
}

#[tokio::test]
async fn download_interrupt_cuts_at_half_and_resumes() {
    let d = Direct::new(50_001).await;
    assert_eq!(
        d.run(FirmwareFault::DownloadInterrupt, &d.right_job())
            .await,
        installed("2.0.0")
    );
    let gets = d.server.image_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(gets[1].range.as_deref(), Some("bytes=25000-"));
    assert_eq!(gets[1].status, 206);
    assert_eq!(d.counters.snapshot().download_resumes, 1);
    assert_eq!(d.server.notifies(), ["900 Success"]);
}

#[tokio::test]
async fn a_stall_counts_as_a_cut() {
    let d = Direct::new(30_000).await;
    d.server.twist(0, Twist::Stall(10_000));
    let t = std::time::Instant::now();
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        installed("2.0.0")
    );
    assert!(t.elapsed() >= fast_settings().stall_timeout);
    let gets = d.server.image_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[1].range.is_some(), "{gets:?}");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let d = Direct::new(1000).await;
    d.server.twist(0, Twist::Status(503));
    d.server.twist(1, Twist::Status(500));
    let t = std::time::Instant::now();
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        installed("2.0.0")
    );
    // 20 ms then 40 ms between the requests.
    assert!(
        t.elapsed() >= Duration::from_millis(60),
        "{:?}",
        t.elapsed()
    );
    let statuses: Vec<u16> = d.server.image_gets().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 500, 200]);
}

#[tokio::test]
async fn a_changed_etag_starts_over_from_zero() {
    let d = Direct::new(100_000).await;
    d.server.state.lock().unwrap().change_etag = true;
    d.server.twist(0, Twist::Cut(40_000));
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        installed("2.0.0")
    );
    let gets = d.server.image_gets();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[1].range.is_some());
    assert_eq!(
        gets[1].status, 200,
        "If-Range did not match: the whole image"
    );
    let c = d.counters.snapshot();
    assert_eq!(c.download_resumes, 0);
    assert!(c.download_bytes > 100_000, "{c:?}");
}

#[tokio::test]
async fn a_404_is_not_retried_and_not_reported() {
    let d = Direct::new(1000).await;
    d.server.twist(0, Twist::Status(404));
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        JobOutcome::Refused { status: 404 }
    );
    assert_eq!(d.server.seen().len(), 1, "{:?}", d.server.seen());
    assert!(d.server.notifies().is_empty());
    let c = d.counters.snapshot();
    assert_eq!((c.downloads_refused, c.notifies_sent), (1, 0));
}

#[tokio::test]
async fn a_410_on_resume_gives_up_at_once() {
    let d = Direct::new(10_000).await;
    d.server.twist(0, Twist::Cut(5000));
    d.server.twist(1, Twist::Status(410));
    assert_eq!(
        d.run(FirmwareFault::None, &d.right_job()).await,
        JobOutcome::Refused { status: 410 }
    );
    assert_eq!(d.server.image_gets().len(), 2);
    assert!(d.server.notifies().is_empty());
}

#[tokio::test]
async fn a_wrong_hash_reports_907_and_keeps_the_old_version() {
    let d = Direct::new(5000).await;
    let job = d.job(&Sha256::digest(b"another image"), d.image.len());
    let outcome = d.run(FirmwareFault::None, &job).await;
    assert_rejected(&outcome, 907, "SHA-256");
    assert_eq!(d.server.notifies(), ["907 SHA-256 mismatch"]);
}

#[tokio::test]
async fn corrupt_reports_907() {
    let d = Direct::new(5000).await;
    let outcome = d.run(FirmwareFault::Corrupt, &d.right_job()).await;
    assert_rejected(&outcome, 907, "SHA-256");
    assert_eq!(d.server.notifies(), ["907 SHA-256 mismatch"]);
}

#[tokio::test]
async fn a_size_mismatch_reports_904() {
    // Announced larger than served: refused on the Content-Length, one request.
    let d = Direct::new(5000).await;
    let job = d.job(&Sha256::digest(&d.image), d.image.len() + 1);
    assert_rejected(&d.run(FirmwareFault::None, &job).await, 904, "5000 bytes");
    assert_eq!(d.server.image_gets().len(), 1);
    assert_eq!(d.server.notifies(), ["904 Size mismatch"]);

    // A body without a length that goes past the announced size: stopped there.
    let d = Direct::new(5000).await;
    d.server.twist(0, Twist::Longer(1_000_000));
    let outcome = d.run(FirmwareFault::None, &d.right_job()).await;
    assert_rejected(&outcome, 904, "more than the 5000 bytes");
    assert_eq!(d.server.notifies(), ["904 Size mismatch"]);
    assert!(d.counters.snapshot().download_bytes <= 5000);
}

#[tokio::test]
async fn giving_up_after_the_tries_reports_903() {
    let d = Direct::new(1000).await;
    for i in 0..5 {
        d.server.twist(i, Twist::Status(503));
    }
    let outcome = d.run(FirmwareFault::None, &d.right_job()).await;
    assert_rejected(&outcome, 903, "after 5 requests");
    assert_eq!(d.server.image_gets().len(), 5);
    assert_eq!(d.server.notifies(), ["903 Loss of Service"]);
}

#[tokio::test]
async fn an_unreachable_server_ends_the_job() {
    let d = Direct::new(10).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let args = [
        format!("https://127.0.0.1:{port}/fw/{TOKEN}"),
        "2".to_owned(),
        hex::encode(Sha256::digest(&d.image)),
        "10".to_owned(),
    ];
    let outcome = d
        .run(FirmwareFault::None, &ImageUpdate::from_args(&args).unwrap())
        .await;
    match outcome {
        JobOutcome::Rejected {
            status, notified, ..
        } => {
            assert_eq!(status.code(), 903);
            assert!(!notified);
        }
        other => panic!("{other:?}"),
    }
}

// ----------------------------------------------------------------------------------
// OTAP, directly

#[tokio::test]
async fn otap_fetches_the_jad_then_the_jar_then_reports_900() {
    let d = Direct::new(40_000).await;
    d.server.serve_jad("3.1.4", 40_000);
    assert_eq!(d.otap(FirmwareFault::None).await, installed("3.1.4"));
    let order: Vec<(String, String)> = d
        .server
        .seen()
        .into_iter()
        .map(|s| (s.method, s.path))
        .collect();
    let base = format!("/fw/{TOKEN}");
    assert_eq!(
        order,
        [
            ("GET".to_owned(), format!("{base}/jad")),
            ("GET".to_owned(), base.clone()),
            ("POST".to_owned(), format!("{base}/notify")),
        ]
    );
    assert_eq!(d.server.notifies(), ["900 Success"]);
    assert_eq!(d.counters.snapshot().downloads_started, 1);
}

#[tokio::test]
async fn otap_resumes_a_cut_jar() {
    let d = Direct::new(40_000).await;
    d.server.serve_jad("3.1.4", 40_000);
    d.server.twist(0, Twist::Cut(1000));
    assert_eq!(d.otap(FirmwareFault::None).await, installed("3.1.4"));
    let gets = d.server.image_gets();
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[1].status, 206);
}

#[tokio::test]
async fn otap_size_mismatch_reports_904() {
    // The fault: whatever the size.
    let d = Direct::new(4000).await;
    d.server.serve_jad("3.1.4", 4000);
    let outcome = d.otap(FirmwareFault::OtapSizeMismatch).await;
    assert_rejected(&outcome, 904, "otap-size-mismatch");
    assert_eq!(d.server.notifies(), ["904 JAR Size Mismatch"]);

    // A real mismatch: the JAD announces more than the JAR has.
    let d = Direct::new(4000).await;
    d.server.serve_jad("3.1.4", 4001);
    let outcome = d.otap(FirmwareFault::None).await;
    assert_rejected(&outcome, 904, "4000 bytes");
    assert_eq!(d.server.notifies(), ["904 JAR Size Mismatch"]);
}

#[tokio::test]
async fn otap_with_a_bad_jad_reports_906_to_the_at_notify_url() {
    let d = Direct::new(10).await;
    d.server.state.lock().unwrap().jad = Some("MIDlet-Name: x\n continued\n".into());
    let jad_url = format!("{}/jad", d.server.url());
    let notify = format!("{}/notify", d.server.url());
    let req = OtapRequest::parse_command(&format!("AT^SJOTAP=,{jad_url},a:/,,,gprs,,,,,{notify}"))
        .unwrap()
        .unwrap();
    let ctx = d.ctx(FirmwareFault::None, fast_settings());
    let outcome = run_otap(&ctx, &req).await;
    assert_rejected(&outcome, 906, "JAD");
    assert_eq!(d.server.notifies(), ["906 Invalid Descriptor"]);
    assert!(d.server.image_gets().is_empty());
}

#[tokio::test]
async fn otap_jad_404_is_not_retried() {
    let d = Direct::new(10).await;
    assert_eq!(
        d.otap(FirmwareFault::None).await,
        JobOutcome::Refused { status: 404 }
    );
    assert_eq!(d.server.seen().len(), 1);
    assert!(d.server.notifies().is_empty());
}

// ----------------------------------------------------------------------------------
// Whole modems through the broker

fn broker() -> (String, u16) {
    let s = std::env::var("CALLHOME_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (h, p) = s.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

/// The Device Manager's side: publishes commands, reads replies and status messages.
struct Probe {
    client: AsyncClient,
    replies: mpsc::Receiver<String>,
    status: mpsc::Receiver<serde_json::Value>,
    imei: Imei,
}

impl Probe {
    async fn new(imei: &Imei) -> Self {
        let (host, port) = broker();
        let id = format!("probe-{}", rand::rng().random::<u64>());
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        client
            .subscribe(format!("{imei}/ATR"), QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .subscribe(format!("{imei}/dns"), QoS::AtLeastOnce)
            .await
            .unwrap();
        let (reply_tx, replies) = mpsc::channel(64);
        let (status_tx, status) = mpsc::channel(64);
        let (ready_tx, mut ready_rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(MqttIncoming::SubAck(_))) => {
                        let _ = ready_tx.send(()).await;
                    }
                    Ok(Event::Incoming(MqttIncoming::Publish(p))) => {
                        let sent = if p.topic.ends_with("/dns") {
                            let v = serde_json::from_slice(&p.payload).unwrap_or_default();
                            status_tx.send(v).await.is_ok()
                        } else {
                            let text = String::from_utf8_lossy(&p.payload).into_owned();
                            reply_tx.send(text).await.is_ok()
                        };
                        if !sent {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(5), ready_rx.recv())
                .await
                .expect("probe subscribed");
        }
        Self {
            client,
            replies,
            status,
            imei: imei.clone(),
        }
    }

    async fn ask(&mut self, text: &str) -> String {
        self.client
            .publish(
                format!("{}/AT", self.imei),
                QoS::AtLeastOnce,
                false,
                text.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        tokio::time::timeout(WAIT, self.replies.recv())
            .await
            .expect("a reply")
            .expect("probe running")
    }

    /// The next status message with `fw` = `version`.
    async fn status_with(&mut self, version: &str) -> serde_json::Value {
        loop {
            let v = tokio::time::timeout(WAIT, self.status.recv())
                .await
                .unwrap_or_else(|_| panic!("no status with fw {version}"))
                .expect("probe running");
            if v["fw"] == version {
                return v;
            }
        }
    }
}

struct Modem {
    handle: ModemHandle,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    probe: Probe,
}

impl Modem {
    async fn start(pki: &Pki) -> Self {
        let imei = random_imei();
        let (host, port) = broker();
        let mut s = ModemSettings::new(&host, port, false);
        s.backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        s.master = Arc::new(MasterConfig::for_platform(&host, port, false, Some(600)));
        s.connect_timeout = Duration::from_secs(5);
        s.reboot_delay = Duration::from_millis(300);
        s.firmware_version = "1.0.0".to_owned();
        s.download = fast_settings();
        let modem = SimModem::new(imei.clone(), Transport::Plain, Arc::new(s))
            .with_tunnel_tls(pki.device_tls(&imei))
            .with_model("MTX-Test");
        let counters = modem.counters().clone();
        let probe = Probe::new(&imei).await;
        let cancel = CancellationToken::new();
        let (handle, task) = modem.spawn(cancel.clone());
        wait(|| counters.snapshot().connected == 1, "modem connected").await;
        Self {
            handle,
            counters,
            cancel,
            task,
            probe,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the modem stops")
            .unwrap();
    }
}

async fn wait(cond: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fwupdate(server: &Server, image: &[u8], version: &str) -> String {
    fwupdate_with(server, &Sha256::digest(image), image.len(), version)
}

fn fwupdate_with(server: &Server, sha256: &[u8], size: usize, version: &str) -> String {
    format!(
        "AT^MTXTUNNEL=FWUPDATE,{},{version},{},{size}",
        server.url(),
        hex::encode(sha256),
    )
}

#[tokio::test]
async fn fwupdate_through_the_modem_answers_ok_then_busy_then_restarts_on_the_new_version() {
    let pki = Pki::new();
    let image = image(64 * 1024);
    let server = Server::start(&pki, &image).await;
    server.twist(0, Twist::Delay(Duration::from_millis(1500)));
    let mut m = Modem::start(&pki).await;
    let first = m.probe.status_with("1.0.0").await;
    assert_eq!(first["model"], "MTX-Test");
    assert_eq!(
        m.probe.ask("AT^MTXTUNNEL=VERSION").await,
        "MTX-Tunnel v1.0.0\r\n\r\nOK"
    );

    assert_eq!(m.probe.ask(&fwupdate(&server, &image, "2.0.0")).await, "OK");
    // Busy while the first one runs, whatever the second one asks.
    assert_eq!(
        m.probe.ask(&fwupdate(&server, &image, "3.0.0")).await,
        "ERROR"
    );
    assert_eq!(
        m.probe
            .ask(&format!("AT^SJOTAP=,{}/jad,a:/,,,gprs,,,,,", server.url()))
            .await,
        "ERROR"
    );
    // Bad arguments: ERROR at once.
    assert_eq!(
        m.probe.ask("AT^MTXTUNNEL=FWUPDATE,http://h/x,1,00,1").await,
        "ERROR"
    );

    wait(|| m.handle.installs() == 1, "the image installed").await;
    assert_eq!(m.handle.firmware_version(), "2.0.0");
    // Back after the restart, reporting the new version, first thing in its status.
    let status = m.probe.status_with("2.0.0").await;
    assert_eq!(status["model"], "MTX-Test");
    wait(|| m.counters.snapshot().connected == 1, "back online").await;
    assert_eq!(
        m.probe.ask("AT^MTXTUNNEL=VERSION").await,
        "MTX-Tunnel v2.0.0\r\n\r\nOK"
    );
    assert!(m.probe.ask("ATI").await.contains("REVISION 2.0.0"));
    assert_eq!(server.notifies(), ["900 Success"]);
    assert_eq!(server.image_gets().len(), 1);
    let c = m.counters.snapshot();
    assert_eq!((c.reboots, c.installs, c.reconnects), (1, 1, 1), "{c:?}");

    // Not busy any more; a failed update keeps the version and does not restart.
    let wrong = fwupdate_with(&server, &Sha256::digest(b"other"), image.len(), "4.0.0");
    assert_eq!(m.probe.ask(&wrong).await, "OK");
    wait(|| server.notifies().len() == 2, "the second notify").await;
    assert_eq!(server.notifies()[1], "907 SHA-256 mismatch");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.handle.firmware_version(), "2.0.0");
    assert_eq!(m.handle.installs(), 1);
    assert_eq!(m.counters.snapshot().reboots, 1);
    m.stop().await;
}

#[tokio::test]
async fn otap_through_the_modem_restarts_on_the_midlet_version() {
    let pki = Pki::new();
    let jar = image(20_000);
    let server = Server::start(&pki, &jar).await;
    server.serve_jad("5.0.1", 20_000);
    let mut m = Modem::start(&pki).await;
    let cmd = format!("AT^SJOTAP=,{}/jad,a:/,,,gprs,,,,,,", server.url());
    assert_eq!(m.probe.ask(&cmd).await, "OK");
    wait(|| m.handle.installs() == 1, "the JAR installed").await;
    assert_eq!(m.handle.firmware_version(), "5.0.1");
    m.probe.status_with("5.0.1").await;
    assert_eq!(server.notifies(), ["900 Success"]);
    m.stop().await;
}

#[tokio::test]
async fn boot_old_restarts_on_the_old_version() {
    let pki = Pki::new();
    let image = image(10_000);
    let server = Server::start(&pki, &image).await;
    let mut m = Modem::start(&pki).await;
    assert!(
        m.handle
            .set_behaviour(callhome_sim::Behaviour::firmware(FirmwareFault::BootOld))
            .await
    );
    assert_eq!(m.probe.ask(&fwupdate(&server, &image, "2.0.0")).await, "OK");
    wait(|| m.counters.snapshot().reboots == 1, "the restart").await;
    wait(|| m.counters.snapshot().reconnects == 1, "back online").await;
    assert_eq!(server.notifies(), ["900 Success"]);
    assert_eq!(
        m.probe.ask("AT^MTXTUNNEL=VERSION").await,
        "MTX-Tunnel v1.0.0\r\n\r\nOK"
    );
    assert_eq!(
        (m.handle.installs(), m.counters.snapshot().installs),
        (0, 0)
    );
    m.stop().await;
}

#[tokio::test]
async fn never_back_stays_offline_after_reporting_success() {
    let pki = Pki::new();
    let image = image(10_000);
    let server = Server::start(&pki, &image).await;
    let mut m = Modem::start(&pki).await;
    assert!(
        m.handle
            .set_behaviour(callhome_sim::Behaviour::firmware(FirmwareFault::NeverBack))
            .await
    );
    assert_eq!(m.probe.ask(&fwupdate(&server, &image, "2.0.0")).await, "OK");
    wait(|| m.counters.snapshot().connected == 0, "the modem gone").await;
    assert_eq!(server.notifies(), ["900 Success"]);
    // Well past the reboot delay and the backoff: still gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = m.counters.snapshot();
    assert_eq!((c.connected, c.reconnects, c.installs), (0, 0, 0), "{c:?}");
    assert_eq!(m.handle.firmware_version(), "1.0.0");
    m.stop().await;
}

#[tokio::test]
async fn a_fleet_takes_models_in_turn_and_starts_on_the_given_version() {
    let (host, port) = broker();
    let mut s = ModemSettings::new(&host, port, false);
    s.firmware_version = "7.7.7".to_owned();
    let body = format!(
        "96{:012}",
        rand::rng().random_range(0..1_000_000_000_000u64 - 10)
    );
    let mut config = FleetConfig::new(&body, 3, s);
    config.models = vec!["MTX-A".to_owned(), "MTX-B".to_owned()];
    let fleet = Fleet::start(config, FleetTransport::Plain).unwrap();
    assert!(fleet.wait_all_connected(WAIT).await);
    let mut models = Vec::new();
    for h in fleet.handles() {
        assert_eq!(h.firmware_version(), "7.7.7");
        let mut probe = Probe::new(h.imei()).await;
        let ati = probe.ask("ATI").await;
        assert!(ati.contains("REVISION 7.7.7"), "{ati}");
        models.push(ati.lines().nth(1).unwrap_or_default().to_owned());
    }
    assert_eq!(
        models,
        ["MTX-Tunnel MTX-A", "MTX-Tunnel MTX-B", "MTX-Tunnel MTX-A"]
    );
    fleet.shutdown().await;
}
