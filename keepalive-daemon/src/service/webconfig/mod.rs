//! `--web.config.file`: TLS, client certificates, basic auth, extra headers and rate limiting in
//! the format of the Prometheus exporter-toolkit (docs/web-configuration.md there), so the file
//! an operator already writes for node_exporter works here unchanged.
//!
//! As in the toolkit, the file (and the certificate, key and CA files it names) is read again
//! when it changes: a renewed certificate or a new user applies to the next connection or
//! request, without a restart. A change that does not load is logged and the last good
//! configuration stays. Whether TLS is on is decided at start.
//!
//! Differences, each an error at load rather than a silent surprise: TLS 1.0/1.1, CBC cipher
//! suites and CurveP521 are not offered (rustls), the verifying client-auth types need a
//! client CA, e-mail addresses in `client_allowed_sans` are not matched, and HTTP/2 is never
//! offered (`http2` is accepted and ignored).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    str::FromStr as _,
    sync::Arc,
    time::Duration,
};

use axum::http::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use serde::Deserialize;

mod tls;
mod watch;

use tls::tls_config;
pub use watch::Watched;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[allow(dead_code)] // accepted for compatibility; HTTP/2 is not offered
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    interval: Option<String>,
    burst: Option<u32>,
}

/// How client certificates are asked for and checked (Go's `tls.ClientAuthType` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Request,
    RequireAny,
    VerifyIfGiven,
    RequireAndVerify,
}

/// A loaded, checked web configuration.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    pub client_auth: ClientAuth,
    /// user → bcrypt hash.
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Token bucket: one token per `interval`, at most `burst`.
    pub rate_limit: Option<(Duration, u32)>,
    /// Files whose change triggers a reload (the config itself first).
    files: Vec<PathBuf>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl WebConfig {
    /// "TLS (client certificates: RequireAndVerify), basic auth (2 users)".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        match (&self.tls, self.client_auth) {
            (None, _) => parts.push("plain HTTP".to_string()),
            (Some(_), ClientAuth::None) => parts.push("TLS".to_string()),
            (Some(_), auth) => parts.push(format!("TLS (client certificates: {auth:?})")),
        }
        if !self.users.is_empty() {
            parts.push(format!(
                "basic auth ({} user{})",
                self.users.len(),
                if self.users.len() == 1 { "" } else { "s" }
            ));
        }
        if let Some((interval, burst)) = self.rate_limit {
            parts.push(format!("rate limit (1 per {interval:?}, burst {burst})"));
        }
        parts.join(", ")
    }
}

/// Loads and checks `path`. The error is one line naming the file and the key.
pub fn load(path: &Path) -> Result<WebConfig, String> {
    let at = |what: &str| format!("web config {}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(&e.to_string()))?;
    parse(&text, path.parent().unwrap_or(Path::new(".")), path).map_err(|e| at(&e))
}

fn parse(text: &str, dir: &Path, path: &Path) -> Result<WebConfig, String> {
    // An empty file is a valid, empty configuration (as in the toolkit).
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string().replace('\n', " "))?
    };
    let mut files = vec![path.to_path_buf()];

    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        bcrypt::HashParts::from_str(hash).map_err(|e| format!("basic_auth_users.{user}: not a bcrypt hash ({e}); make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"))?;
    }

    let mut headers = Vec::new();
    for (name, value) in raw
        .http_server_config
        .and_then(|h| h.headers)
        .unwrap_or_default()
    {
        let allowed: &[&str] = match name.as_str() {
            "Strict-Transport-Security" | "X-XSS-Protection" | "Content-Security-Policy" => &[],
            "X-Content-Type-Options" => &["nosniff"],
            "X-Frame-Options" => &["deny", "sameorigin"],
            _ => {
                return Err(format!(
                    "http_server_config.headers: HTTP header {name:?} can not be configured"
                ));
            }
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(format!(
                "http_server_config.headers.{name}: {value:?} is not one of {}",
                allowed.join(", ")
            ));
        }
        let v = HeaderValue::from_str(&value)
            .map_err(|_| format!("http_server_config.headers.{name}: not a valid header value"))?;
        headers.push((HeaderName::from_str(&name).map_err(|e| e.to_string())?, v));
    }

    let rate_limit = match raw.rate_limit {
        Some(RawRateLimit {
            interval: Some(i),
            burst,
        }) => {
            let interval = go_duration(&i).map_err(|e| format!("rate_limit.interval: {e}"))?;
            match (interval.is_zero(), burst.unwrap_or(0)) {
                (true, _) => None,
                (false, 0) => {
                    return Err(
                        "rate_limit.burst must be at least 1 when rate_limit.interval is set"
                            .into(),
                    );
                }
                (false, b) => Some((interval, b)),
            }
        }
        _ => None,
    };

    let (tls, client_auth) = match raw.tls_server_config {
        Some(t) if tls_enabled(&t) => {
            let (config, auth) = tls_config(&t, dir, &mut files)?;
            (Some(Arc::new(config)), auth)
        }
        _ => (None, ClientAuth::None),
    };
    Ok(WebConfig {
        tls,
        client_auth,
        users,
        headers,
        rate_limit,
        files,
    })
}

/// The toolkit's rule: TLS is on when any TLS field is set.
fn tls_enabled(t: &RawTls) -> bool {
    [
        &t.cert,
        &t.key,
        &t.client_ca,
        &t.cert_file,
        &t.key_file,
        &t.client_ca_file,
        &t.client_auth_type,
    ]
    .iter()
    .any(|f| f.as_deref().is_some_and(|s| !s.is_empty()))
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// Go's `time.ParseDuration` for the forms a config uses: `1s`, `500ms`, `1m30s`, `1.5h`, `0`.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(format!("{s:?} is not a duration like 1s or 500ms"));
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 1s or 500ms"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "{s:?} is not a duration like 1s or 500ms (units ns, us, ms, s, m, h)"
                ));
            }
        };
        total += num * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests;
