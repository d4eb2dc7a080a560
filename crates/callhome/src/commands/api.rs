//! The operator CLI's REST client: base URL, bearer credential, RFC 9457 problem
//! documents turned into readable errors, and the page walker every list command uses.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use crate::commands::credentials::{self, Stored};

/// Per-request timeout: longer than the longest server-side wait a command asks for
/// (reading a modem's configuration waits up to 30 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Page size asked of list endpoints.
const PAGE_SIZE: u32 = 500;

/// Where the API is and who is calling: shared by every API subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// Callhome server URL, e.g. http://127.0.0.1:8080 (default: the one saved by
    /// `callhome login`).
    #[arg(long, env = "CALLHOME_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// Access token or API key (`chk_...`), instead of the token saved by `callhome login`.
    /// A token given as a flag shows in `ps`: prefer CALLHOME_TOKEN or --token-file.
    #[arg(long, env = "CALLHOME_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Read the access token or API key from the first line of FILE.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
}

impl ApiArgs {
    /// The token from --token (CALLHOME_TOKEN) or --token-file, if either is given.
    pub fn given_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        self.token_file.as_deref().map(read_token_file).transpose()
    }
}

/// The token on the first line of `path` (for `--token-file`).
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token from {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        bail!("{} holds no token on its first line", path.display());
    }
    Ok(token)
}

/// An error document from the API (or an HTTP error without one).
#[derive(Debug)]
pub struct ApiProblem {
    /// HTTP status.
    pub status: StatusCode,
    /// The problem's `title` (the status text when absent).
    pub title: String,
    /// The problem's `detail`, if any.
    pub detail: Option<String>,
    /// Each rejected field and why (`errors[]`).
    pub errors: Vec<(String, String)>,
    /// What to do about it, when the CLI knows.
    pub hint: Option<String>,
}

impl ApiProblem {
    /// Reads a problem document from an error response's body; any other body becomes the
    /// detail (shortened).
    fn from_body(status: StatusCode, body: &str) -> Self {
        let reason = status.canonical_reason().unwrap_or("error").to_owned();
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            let text = body.trim();
            let detail = (!text.is_empty()).then(|| text.chars().take(300).collect());
            return Self {
                status,
                title: reason,
                detail,
                errors: Vec::new(),
                hint: None,
            };
        };
        let text = |key: &str| v[key].as_str().map(str::to_owned);
        let errors = v["errors"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|e| {
                        (
                            e["field"].as_str().unwrap_or("?").to_owned(),
                            e["reason"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            status,
            title: text("title").unwrap_or(reason),
            detail: text("detail"),
            errors,
            hint: None,
        }
    }
}

impl fmt::Display for ApiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", self.title, self.status.as_u16())?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        for (field, reason) in &self.errors {
            write!(f, "\n  {field}: {reason}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n{h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiProblem {}

/// `http://host:port` from what the user typed: no trailing `/`, no `/api/v1`.
pub fn normalize_server(url: &str) -> anyhow::Result<String> {
    let s = url.trim().trim_end_matches('/');
    let s = s.strip_suffix("/api/v1").unwrap_or(s);
    if !(s.starts_with("http://") || s.starts_with("https://")) || s.len() <= "https://".len() {
        bail!("the server URL must start with http:// or https:// (got {url:?})");
    }
    Ok(s.to_owned())
}

/// A client for one server, with or without a credential.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// A client without credential (for the token endpoint).
    pub fn anonymous(server: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .user_agent(concat!("callhome-cli/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base: normalize_server(server)?,
            token: None,
        })
    }

    /// A client for `--server`/`--token` (or their environment variables), falling back
    /// to what `callhome login` saved. A saved token is used only for the server it was
    /// issued by, and only until it expires.
    pub fn connect(args: &ApiArgs) -> anyhow::Result<Self> {
        let given = args.given_token()?;
        if let (Some(server), Some(token)) = (&args.server, &given) {
            return Ok(Self::anonymous(server)?.with_token(token));
        }
        let stored = credentials::load()?;
        let server = match (&args.server, &stored) {
            (Some(s), _) => normalize_server(s)?,
            (None, Some(st)) => st.server.clone(),
            (None, None) => bail!(
                "no server: run `callhome login --server URL`, or give --server (CALLHOME_SERVER)"
            ),
        };
        let token = match (&given, stored) {
            (Some(t), _) => t.clone(),
            (None, Some(st)) if st.server == server => usable_token(st)?,
            (None, _) => bail!(
                "not logged in to {server}: run `callhome login --server {server}`, or give \
                 CALLHOME_TOKEN or --token-file FILE with an access token or API key"
            ),
        };
        Ok(Self::anonymous(&server)?.with_token(&token))
    }

    /// This client with `token` (an access token or API key) as its bearer credential.
    #[must_use]
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// The server's base URL (no trailing `/`).
    pub fn server(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req`; a non-2xx answer becomes an [`ApiProblem`].
    async fn send(&self, req: RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let mut problem = ApiProblem::from_body(status, &body);
        if status == StatusCode::UNAUTHORIZED && self.token.is_some() {
            problem.hint = Some(format!(
                "hint: the token was refused; run `callhome login --server {}` (or give a \
                 valid --token)",
                self.base
            ));
        }
        Err(problem.into())
    }

    async fn json(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(req).await?;
        let text = resp.text().await.context("reading the response")?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).context("the server's answer is not JSON")
    }

    /// `GET path?query` as JSON.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.json(self.request(Method::GET, path).query(query))
            .await
    }

    /// `GET path` as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self.send(self.request(Method::GET, path)).await?;
        resp.text().await.context("reading the response")
    }

    /// `POST path` with an optional JSON body.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut req = self.request(Method::POST, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.json(req).await
    }

    /// `POST path` with a multipart body (an upload: no overall timeout, the body streams).
    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> anyhow::Result<Value> {
        self.json(
            self.request(Method::POST, path)
                .timeout(std::time::Duration::from_secs(24 * 3600))
                .multipart(form),
        )
        .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(Method::DELETE, path)).await?;
        Ok(())
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        self.json(self.request(Method::PUT, path).json(body)).await
    }

    /// Walks a list endpoint page by page (`limit`, `cursor` -> `items`, `next_cursor`),
    /// handing each page's items to `each`; stops after `max` items when given.
    pub async fn each_page(
        &self,
        path: &str,
        query: &[(&str, String)],
        max: Option<usize>,
        mut each: impl FnMut(Vec<Value>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut cursor: Option<String> = None;
        let mut seen = 0usize;
        loop {
            let limit = max.map_or(PAGE_SIZE, |m| {
                u32::try_from(m.saturating_sub(seen))
                    .unwrap_or(PAGE_SIZE)
                    .clamp(1, PAGE_SIZE)
            });
            let mut q = query.to_vec();
            q.push(("limit", limit.to_string()));
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            let mut page = self.get(path, &q).await?;
            let mut items = match page["items"].take() {
                Value::Array(items) => items,
                _ => bail!("GET {path}: the answer has no \"items\" list"),
            };
            if let Some(m) = max {
                items.truncate(m.saturating_sub(seen));
            }
            seen += items.len();
            each(items)?;
            // `next_cursor` is this API's name; `next` is accepted too.
            let next = page["next_cursor"]
                .as_str()
                .or_else(|| page["next"].as_str())
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            match next {
                Some(n) if max.is_none_or(|m| seen < m) => {
                    if cursor.as_deref() == Some(n.as_str()) {
                        bail!("GET {path}: the server handed out the same cursor twice");
                    }
                    cursor = Some(n);
                }
                _ => return Ok(()),
            }
        }
    }

    /// Every item of a list endpoint (see [`Api::each_page`]).
    pub async fn list_all(
        &self,
        path: &str,
        query: &[(&str, String)],
        max: Option<usize>,
    ) -> anyhow::Result<Vec<Value>> {
        let mut all = Vec::new();
        self.each_page(path, query, max, |items| {
            all.extend(items);
            Ok(())
        })
        .await?;
        Ok(all)
    }
}

/// The saved token, unless it has expired.
/// The credential of a client command that has no `ApiArgs` (`sim`, `connect`):
/// `CALLHOME_TOKEN` (`--token`), `CALLHOME_API_KEY` (`--api-key`), `--token-file`, or else
/// the token `callhome login` saved for `server` (while it has not expired).
pub fn client_credential(
    server: &str,
    token: Option<&String>,
    api_key: Option<&String>,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    match (token, api_key, token_file) {
        (Some(t), _, _) => Ok(t.clone()),
        (None, Some(k), _) => Ok(k.clone()),
        (None, None, Some(path)) => read_token_file(path),
        (None, None, None) => {
            let server = normalize_server(server)?;
            match credentials::load()? {
                Some(st) if st.server == server => usable_token(st),
                _ => bail!(
                    "no credential for {server}: give CALLHOME_TOKEN, CALLHOME_API_KEY or                      --token-file FILE, or run `callhome login --server {server}`"
                ),
            }
        }
    }
}

fn usable_token(st: Stored) -> anyhow::Result<String> {
    if st.is_expired() {
        bail!(
            "the token saved by `callhome login` for {} expired at {}: run `callhome login \
             --server {}` again",
            st.server,
            st.expires,
            st.server
        );
    }
    Ok(st.token)
}

/// A JSON value as a table cell: strings bare, `null` as `-`, lists comma-separated.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// ` (value)` after something, or nothing for `null`, `""` or `[]`.
pub fn paren(v: &Value) -> String {
    let text = cell(v);
    if v.is_null() || text.is_empty() {
        String::new()
    } else {
        format!(" ({text})")
    }
}

/// Prints rows under headers in aligned columns (the last column is not padded).
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i + 1 < widths.len() {
                s.push_str(&format!("{c:<w$}  "));
            } else {
                s.push_str(c);
            }
        }
        let _ = writeln!(out, "{}", s.trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Prints `items` as a table: one column per `(header, member)`, cells from [`cell`].
pub fn print_items(items: &[Value], columns: &[(&str, &str)]) {
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, k)| cell(&item[*k])).collect())
        .collect();
    print_table(&headers, &rows);
}

/// Prints each value as one line of JSON.
pub fn print_json_lines(items: &[Value]) {
    let mut out = std::io::stdout().lock();
    for item in items {
        let _ = writeln!(out, "{item}");
    }
}

/// Splits `KEY=VALUE` (the value may be empty or contain `=`).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_read_title_detail_and_fields() {
        let body = r#"{"type":"urn:callhome:problem:validation-error","title":"Invalid request",
            "status":422,"detail":"MTX_PIN: must be 4 digits",
            "errors":[{"field":"MTX_PIN","reason":"must be 4 digits"}]}"#;
        let p = ApiProblem::from_body(StatusCode::UNPROCESSABLE_ENTITY, body);
        assert_eq!(
            p.to_string(),
            "Invalid request (HTTP 422): MTX_PIN: must be 4 digits\n  MTX_PIN: must be 4 digits"
        );
        let p = ApiProblem::from_body(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>");
        assert_eq!(
            p.to_string(),
            "Bad Gateway (HTTP 502): <html>bad gateway</html>"
        );
        let p = ApiProblem::from_body(StatusCode::NOT_FOUND, "");
        assert_eq!(p.to_string(), "Not Found (HTTP 404)");
    }

    #[test]
    fn server_urls_are_normalized() {
        assert_eq!(
            normalize_server("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_server(" https://ch.example/api/v1/ ").unwrap(),
            "https://ch.example"
        );
        assert!(normalize_server("127.0.0.1:8080").is_err());
        assert!(normalize_server("http://").is_err());
    }

    #[test]
    fn key_values_split_at_the_first_equals() {
        assert_eq!(
            parse_key_value("DNS_period=300"),
            Ok(("DNS_period".into(), "300".into()))
        );
        assert_eq!(
            parse_key_value("MQTT_login="),
            Ok(("MQTT_login".into(), String::new()))
        );
        assert_eq!(parse_key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn cells() {
        assert_eq!(cell(&serde_json::json!(null)), "-");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a,b");
        assert_eq!(cell(&serde_json::json!(true)), "true");
        assert_eq!(cell(&serde_json::json!("x")), "x");
        assert_eq!(paren(&serde_json::json!(["a", "b"])), " (a,b)");
        assert_eq!(paren(&serde_json::json!([])), "");
        assert_eq!(paren(&serde_json::json!(null)), "");
    }
}
