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
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    str::FromStr as _,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use axum::http::{HeaderName, HeaderValue};
use log::{error, info};
use rustls::{
    DistinguishedName, RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject as _},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

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
            parts.push(format!("basic auth ({} user{})", self.users.len(), if self.users.len() == 1 { "" } else { "s" }));
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
    for (name, value) in raw.http_server_config.and_then(|h| h.headers).unwrap_or_default() {
        let allowed: &[&str] = match name.as_str() {
            "Strict-Transport-Security" | "X-XSS-Protection" | "Content-Security-Policy" => &[],
            "X-Content-Type-Options" => &["nosniff"],
            "X-Frame-Options" => &["deny", "sameorigin"],
            _ => return Err(format!("http_server_config.headers: HTTP header {name:?} can not be configured")),
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(format!("http_server_config.headers.{name}: {value:?} is not one of {}", allowed.join(", ")));
        }
        let v = HeaderValue::from_str(&value).map_err(|_| format!("http_server_config.headers.{name}: not a valid header value"))?;
        headers.push((HeaderName::from_str(&name).map_err(|e| e.to_string())?, v));
    }

    let rate_limit = match raw.rate_limit {
        Some(RawRateLimit { interval: Some(i), burst }) => {
            let interval = go_duration(&i).map_err(|e| format!("rate_limit.interval: {e}"))?;
            match (interval.is_zero(), burst.unwrap_or(0)) {
                (true, _) => None,
                (false, 0) => return Err("rate_limit.burst must be at least 1 when rate_limit.interval is set".into()),
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
    Ok(WebConfig { tls, client_auth, users, headers, rate_limit, files })
}

/// The toolkit's rule: TLS is on when any TLS field is set.
fn tls_enabled(t: &RawTls) -> bool {
    [&t.cert, &t.key, &t.client_ca, &t.cert_file, &t.key_file, &t.client_ca_file, &t.client_auth_type]
        .iter()
        .any(|f| f.as_deref().is_some_and(|s| !s.is_empty()))
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

fn tls_config(t: &RawTls, dir: &Path, files: &mut Vec<PathBuf>) -> Result<(ServerConfig, ClientAuth), String> {
    let mut read = |key: &str, file: &str| -> Result<Vec<u8>, String> {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| format!("tls_server_config.{key}: cannot read {}: {e}", path.display()))?;
        files.push(path);
        Ok(bytes)
    };
    let cert_pem = match (nonempty(&t.cert_file), nonempty(&t.cert)) {
        (Some(f), _) => read("cert_file", f)?,
        (None, Some(inline)) => inline.as_bytes().to_vec(),
        (None, None) => return Err("tls_server_config: missing one of cert or cert_file".into()),
    };
    let key_pem = match (nonempty(&t.key_file), nonempty(&t.key)) {
        (Some(f), _) => read("key_file", f)?,
        (None, Some(inline)) => inline.as_bytes().to_vec(),
        (None, None) => return Err("tls_server_config: missing one of key or key_file".into()),
    };
    let ca_pem = match (nonempty(&t.client_ca_file), nonempty(&t.client_ca)) {
        (Some(f), _) => Some(read("client_ca_file", f)?),
        (None, Some(inline)) => Some(inline.as_bytes().to_vec()),
        (None, None) => None,
    };

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_server_config.cert_file: not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("tls_server_config.cert_file: no certificate in it".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("tls_server_config.key_file: no PEM private key in it: {e}"))?;

    let client_auth = match nonempty(&t.client_auth_type).unwrap_or("NoClientCert") {
        "NoClientCert" => ClientAuth::None,
        "RequestClientCert" => ClientAuth::Request,
        "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAny,
        "VerifyClientCertIfGiven" => ClientAuth::VerifyIfGiven,
        "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerify,
        other => {
            return Err(format!(
                "tls_server_config.client_auth_type: {other:?} is not one of NoClientCert, RequestClientCert, \
                 RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
            ));
        }
    };
    if ca_pem.is_some() && client_auth == ClientAuth::None {
        return Err("tls_server_config: client CA's have been configured without a Client Auth Policy (client_auth_type)".into());
    }

    let provider = provider(t)?;
    let versions = versions(t)?;
    let algs = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ClientCertVerifier> = match client_auth {
        ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Request | ClientAuth::RequireAny => Arc::new(AnyClientCert { mandatory: client_auth == ClientAuth::RequireAny, algs }),
        ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify => {
            let Some(ca) = &ca_pem else {
                return Err(format!("tls_server_config: client_auth_type {client_auth:?} needs client_ca_file (or client_ca)"));
            };
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| format!("tls_server_config.client_ca_file: not PEM certificates: {e}"))?;
                roots.add(c).map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_server_config.client_ca_file: no certificate in it".into());
            }
            let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider.clone()));
            if client_auth == ClientAuth::VerifyIfGiven {
                b = b.allow_unauthenticated();
            }
            b.build().map_err(|e| format!("tls_server_config: {e}"))?
        }
    };
    let verifier = match &t.client_allowed_sans {
        None => verifier,
        Some(sans) => {
            if !matches!(client_auth, ClientAuth::RequireAny | ClientAuth::RequireAndVerify) {
                return Err("tls_server_config.client_allowed_sans requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert".into());
            }
            if let Some(email) = sans.iter().find(|s| s.contains('@') && !s.contains("://")) {
                return Err(format!("tls_server_config.client_allowed_sans: e-mail address {email:?} is not supported; use DNS, IP or URI names"));
            }
            Arc::new(SanCheck { inner: verifier, allowed: sans.clone() })
        }
    };

    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_server_config: certificate and key do not go together: {e}"))?;
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((config, client_auth))
}

fn provider(t: &RawTls) -> Result<CryptoProvider, String> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(names) = t.cipher_suites.as_ref().filter(|n| !n.is_empty()) {
        let mut chosen = Vec::new();
        for name in names {
            // Go also accepts the names without the _SHA256 suffix for ChaCha20.
            let want = if name.ends_with("_CHACHA20_POLY1305") { format!("{name}_SHA256") } else { name.clone() };
            match p.cipher_suites.iter().find(|s| format!("{:?}", s.suite()) == want) {
                Some(s) => chosen.push(*s),
                None => return Err(format!("tls_server_config.cipher_suites: {name:?} is not offered (the TLS 1.2 suites offered are the ECDHE AES-GCM and ChaCha20-Poly1305 ones)")),
            }
        }
        // Like Go, the list governs TLS 1.2 only: every TLS 1.3 suite stays.
        for s in p.cipher_suites.iter().filter(|s| s.tls13().is_some()) {
            if !chosen.iter().any(|c| c.suite() == s.suite()) {
                chosen.push(*s);
            }
        }
        p.cipher_suites = chosen;
    }
    if let Some(names) = t.curve_preferences.as_ref().filter(|n| !n.is_empty()) {
        let mut chosen = Vec::new();
        for name in names {
            let group = match name.as_str() {
                "CurveP256" => rustls::NamedGroup::secp256r1,
                "CurveP384" => rustls::NamedGroup::secp384r1,
                "X25519" => rustls::NamedGroup::X25519,
                "CurveP521" => return Err("tls_server_config.curve_preferences: CurveP521 is not offered".into()),
                other => return Err(format!("tls_server_config.curve_preferences: unknown curve {other:?} (CurveP256, CurveP384, X25519)")),
            };
            if let Some(g) = p.kx_groups.iter().find(|g| g.name() == group) {
                chosen.push(*g);
            }
        }
        p.kx_groups = chosen;
    }
    Ok(p)
}

fn versions(t: &RawTls) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let parse = |key: &str, v: Option<&str>, default: u8| -> Result<u8, String> {
        match v.unwrap_or(if default == 12 { "TLS12" } else { "TLS13" }) {
            "TLS12" => Ok(12),
            "TLS13" => Ok(13),
            "TLS10" | "TLS11" => Err(format!("tls_server_config.{key}: TLS 1.0 and 1.1 are not offered; use TLS12 or TLS13")),
            other => Err(format!("tls_server_config.{key}: unknown TLS version {other:?} (TLS12, TLS13)")),
        }
    };
    let min = parse("min_version", nonempty(&t.min_version), 12)?;
    let max = parse("max_version", nonempty(&t.max_version), 13)?;
    if min > max {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok([(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, p)| p)
        .collect())
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
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().map_err(|_| format!("{s:?} is not a duration like 1s or 500ms"))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{s:?} is not a duration like 1s or 500ms (units ns, us, ms, s, m, h)")),
        };
        total += num * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// `RequestClientCert` and `RequireAnyClientCert`: a certificate is asked for (and for the
/// latter required) but not checked against any CA, only that the client holds its key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// `client_allowed_sans`: the client certificate must name one of these (DNS, IP or URI SAN).
#[derive(Debug)]
struct SanCheck {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl SanCheck {
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let Ok(ee) = webpki::EndEntityCert::try_from(cert) else { return false };
        let names: Vec<&str> = ee.valid_dns_names().chain(ee.valid_uri_names()).collect();
        self.allowed.iter().any(|a| {
            names.contains(&a.as_str())
                || a.parse::<IpAddr>().is_ok_and(|ip| ee.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into())).is_ok())
        })
    }
}

impl ClientCertVerifier for SanCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if self.matches(end_entity) {
            Ok(ok)
        } else {
            Err(rustls::Error::General("client certificate names none of client_allowed_sans".into()))
        }
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &rustls::DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What identifies a file's version without reading it.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files.iter().map(|f| std::fs::metadata(f).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))).collect()
}

/// The web configuration in force, reloaded when its files change.
pub struct Watched {
    path: PathBuf,
    state: Mutex<(Stamp, Arc<WebConfig>, Option<Instant>)>,
    pub tls_at_start: bool,
    limiter: Mutex<Bucket>,
    auth_cache: Mutex<HashMap<[u8; 32], bool>>,
    bcrypt_lock: Mutex<()>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Distinct credentials remembered; beyond this the cache starts over.
const AUTH_CACHE_MAX: usize = 1024;

impl Watched {
    pub fn load(path: &Path) -> Result<Arc<Watched>, String> {
        let config = load(path)?;
        let s = stamp(&config.files);
        let tls_at_start = config.tls.is_some();
        let burst = config.rate_limit.map_or(0, |(_, b)| b);
        Ok(Arc::new(Watched {
            path: path.to_path_buf(),
            state: Mutex::new((s, Arc::new(config), None)),
            tls_at_start,
            limiter: Mutex::new(Bucket { tokens: f64::from(burst), last: Instant::now() }),
            auth_cache: Mutex::new(HashMap::new()),
            bcrypt_lock: Mutex::new(()),
        }))
    }

    /// The configuration to use now: reloaded first if any of its files changed.
    pub fn current(&self) -> Arc<WebConfig> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&st.1.files);
        if now == st.0 {
            return st.1.clone();
        }
        st.0 = now;
        match load(&self.path) {
            Ok(new) if new.tls.is_some() != self.tls_at_start => {
                error!("{}: turning TLS on or off needs a restart; keeping the previous web configuration", self.path.display());
            }
            Ok(new) => {
                info!("web config {} reloaded: {}", self.path.display(), new.summary());
                // The file list may have grown (a CA file added): stamp what the new one names.
                st.0 = stamp(&new.files);
                st.1 = Arc::new(new);
                self.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            Err(e) => error!("{e}; keeping the previous web configuration"),
        }
        st.1.clone()
    }

    /// Takes a token from the bucket; false means answer 429.
    pub fn allow(&self, config: &WebConfig) -> bool {
        let Some((interval, burst)) = config.rate_limit else { return true };
        let mut b = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.last).as_secs_f64() / interval.as_secs_f64();
        b.tokens = (b.tokens + refill).min(f64::from(burst));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Checks basic-auth credentials. bcrypt is slow by design, so results are cached per
    /// (user, hash, password) digest and one check runs at a time. An unknown user costs the
    /// same bcrypt as a known one, so timing does not tell which users exist.
    pub fn check_password(&self, config: &WebConfig, user: &str, password: &str) -> bool {
        let (hash, known) = match config.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => match config.users.values().next() {
                Some(h) => (h.as_str(), false),
                None => return false,
            },
        };
        let mut d = Sha256::new();
        for part in [user, hash, password] {
            d.update((part.len() as u64).to_le_bytes());
            d.update(part.as_bytes());
        }
        let key: [u8; 32] = d.finalize().into();
        if let Some(ok) = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return *ok;
        }
        let ok = {
            let _one = self.bcrypt_lock.lock().unwrap_or_else(|e| e.into_inner());
            bcrypt::verify(password, hash).unwrap_or(false)
        } && known;
        let mut cache = self.auth_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= AUTH_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, ok);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<WebConfig, String> {
        parse(text, Path::new("/nonexistent"), Path::new("/nonexistent/web.yml"))
    }

    #[test]
    fn empty_and_auth_only_files_are_plain_http() {
        let c = p("").unwrap();
        assert!(c.tls.is_none() && c.users.is_empty());
        let hash = bcrypt::hash("secret", 4).unwrap();
        let c = p(&format!("basic_auth_users:\n  alice: {hash}\n")).unwrap();
        assert!(c.tls.is_none());
        assert_eq!(c.summary(), "plain HTTP, basic auth (1 user)");
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, want) in [
            ("tls_server_config:\n  cert_fil: x\n", "unknown field `cert_fil`"),
            ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice: not a bcrypt hash"),
            ("tls_server_config:\n  cert_file: c.pem\n", "cannot read /nonexistent/c.pem"),
            ("tls_server_config:\n  key_file: k.pem\n", "missing one of cert or cert_file"),
            ("http_server_config:\n  headers:\n    X-Foo: bar\n", "\"X-Foo\" can not be configured"),
            ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "is not one of deny, sameorigin"),
            ("rate_limit:\n  interval: 1 fortnight\n", "rate_limit.interval"),
            ("rate_limit:\n  interval: 1s\n", "rate_limit.burst must be at least 1"),
            ("nonsense: 1\n", "unknown field `nonsense`"),
        ] {
            let e = p(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(go_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert!(go_duration("10").is_err());
        assert!(go_duration("").is_err());
        assert!(go_duration("1d").is_err());
    }

    #[test]
    fn passwords_are_checked_and_unknown_users_refused() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let dir = std::env::temp_dir().join(format!("ka-webconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yml");
        std::fs::write(&path, format!("basic_auth_users:\n  alice: '{hash}'\nrate_limit:\n  interval: 1h\n  burst: 2\n")).unwrap();
        let w = Watched::load(&path).unwrap();
        let c = w.current();
        assert!(w.check_password(&c, "alice", "secret"));
        assert!(w.check_password(&c, "alice", "secret"), "cached");
        assert!(!w.check_password(&c, "alice", "wrong"));
        assert!(!w.check_password(&c, "mallory", "secret"));
        assert!(w.allow(&c) && w.allow(&c) && !w.allow(&c), "burst of 2, then 429");
        // A new user appears without a restart.
        let hash2 = bcrypt::hash("other", 4).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, format!("basic_auth_users:\n  alice: '{hash}'\n  bob: '{hash2}'\n")).unwrap();
        let c = w.current();
        assert!(w.check_password(&c, "bob", "other"));
        // A broken edit keeps the last good configuration.
        std::fs::write(&path, "basic_auth_users: [\n").unwrap();
        let c = w.current();
        assert!(w.check_password(&c, "bob", "other"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
