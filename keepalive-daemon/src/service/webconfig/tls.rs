//! Building the rustls server configuration from the toolkit's TLS keys, and the client
//! certificate checks rustls does not have built in.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

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

use super::{ClientAuth, RawTls, nonempty};

pub(super) fn tls_config(
    t: &RawTls,
    dir: &Path,
    files: &mut Vec<PathBuf>,
) -> Result<(ServerConfig, ClientAuth), String> {
    let mut read = |key: &str, file: &str| -> Result<Vec<u8>, String> {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "tls_server_config.{key}: cannot read {}: {e}",
                path.display()
            )
        })?;
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
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("tls_server_config.key_file: no PEM private key in it: {e}"))?;

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
        ClientAuth::Request | ClientAuth::RequireAny => Arc::new(AnyClientCert {
            mandatory: client_auth == ClientAuth::RequireAny,
            algs,
        }),
        ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify => {
            let Some(ca) = &ca_pem else {
                return Err(format!(
                    "tls_server_config: client_auth_type {client_auth:?} needs client_ca_file (or client_ca)"
                ));
            };
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                let c = c.map_err(|e| {
                    format!("tls_server_config.client_ca_file: not PEM certificates: {e}")
                })?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_server_config.client_ca_file: no certificate in it".into());
            }
            let mut b = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(provider.clone()),
            );
            if client_auth == ClientAuth::VerifyIfGiven {
                b = b.allow_unauthenticated();
            }
            b.build().map_err(|e| format!("tls_server_config: {e}"))?
        }
    };
    let verifier = match &t.client_allowed_sans {
        None => verifier,
        Some(sans) => {
            if !matches!(
                client_auth,
                ClientAuth::RequireAny | ClientAuth::RequireAndVerify
            ) {
                return Err("tls_server_config.client_allowed_sans requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert".into());
            }
            if let Some(email) = sans.iter().find(|s| s.contains('@') && !s.contains("://")) {
                return Err(format!(
                    "tls_server_config.client_allowed_sans: e-mail address {email:?} is not supported; use DNS, IP or URI names"
                ));
            }
            Arc::new(SanCheck {
                inner: verifier,
                allowed: sans.clone(),
            })
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
            let want = if name.ends_with("_CHACHA20_POLY1305") {
                format!("{name}_SHA256")
            } else {
                name.clone()
            };
            match p
                .cipher_suites
                .iter()
                .find(|s| format!("{:?}", s.suite()) == want)
            {
                Some(s) => chosen.push(*s),
                None => {
                    return Err(format!(
                        "tls_server_config.cipher_suites: {name:?} is not offered (the TLS 1.2 suites offered are the ECDHE AES-GCM and ChaCha20-Poly1305 ones)"
                    ));
                }
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
                "CurveP521" => {
                    return Err(
                        "tls_server_config.curve_preferences: CurveP521 is not offered".into(),
                    );
                }
                other => {
                    return Err(format!(
                        "tls_server_config.curve_preferences: unknown curve {other:?} (CurveP256, CurveP384, X25519)"
                    ));
                }
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
            "TLS10" | "TLS11" => Err(format!(
                "tls_server_config.{key}: TLS 1.0 and 1.1 are not offered; use TLS12 or TLS13"
            )),
            other => Err(format!(
                "tls_server_config.{key}: unknown TLS version {other:?} (TLS12, TLS13)"
            )),
        }
    };
    let min = parse("min_version", nonempty(&t.min_version), 12)?;
    let max = parse("max_version", nonempty(&t.max_version), 13)?;
    if min > max {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    Ok(
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect(),
    )
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
    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
            return false;
        };
        let names: Vec<&str> = ee.valid_dns_names().chain(ee.valid_uri_names()).collect();
        self.allowed.iter().any(|a| {
            names.contains(&a.as_str())
                || a.parse::<IpAddr>().is_ok_and(|ip| {
                    ee.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
                        .is_ok()
                })
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
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.matches(end_entity) {
            Ok(ok)
        } else {
            Err(rustls::Error::General(
                "client certificate names none of client_allowed_sans".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
