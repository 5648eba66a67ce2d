//! TLS settings, built with rustls (aws-lc-rs) from PEM files: the public listener's
//! server config (optionally verifying client certificates) and upstream client configs.
//!
//! Modern defaults only: TLS 1.3 and 1.2 with rustls's AEAD suites; no renegotiation, no
//! compression, no RSA key exchange. Session tickets are on for cheap resumption.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use portcullis_config::{ClientAuth, SpiffeConfig, TlsConfig, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a valid PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no usable PEM private key ({e})", path.display()))
}

/// Reads a PEM bundle of CA certificates into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Reads a SPIFFE trust bundle: a PEM file of CA certificates, or a SPIFFE bundle (a JWK
/// Set whose keys with `"use": "x509-svid"` carry the CA certificate in `x5c`).
pub fn load_bundle(path: &Path) -> Result<RootCertStore, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !text.trim_ascii_start().starts_with(b"{") {
        return load_roots(path);
    }
    let bad = |why: &str| format!("{} is not a SPIFFE bundle: {why}", path.display());
    let json: serde_json::Value = serde_json::from_slice(&text).map_err(|_| bad("not JSON"))?;
    let keys = json.get("keys").and_then(|k| k.as_array()).ok_or_else(|| bad("no `keys` list"))?;
    let mut roots = RootCertStore::empty();
    for key in keys.iter().filter(|k| k.get("use").and_then(|u| u.as_str()) == Some("x509-svid")) {
        let der = key
            .get("x5c")
            .and_then(|x| x.as_array())
            .and_then(|x| x.first())
            .and_then(|c| c.as_str())
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .ok_or_else(|| bad("an x509-svid key without a base64 `x5c` certificate"))?;
        roots.add(CertificateDer::from(der)).map_err(|e| bad(&format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no `x509-svid` keys"));
    }
    Ok(roots)
}

/// The trust bundle of each configured trust domain. `Err` is `(key path, message)`.
fn bundles(spiffe: &SpiffeConfig) -> Result<HashMap<String, Arc<RootCertStore>>, (String, String)> {
    spiffe
        .trust_domains
        .iter()
        .map(|(domain, path)| {
            load_bundle(path)
                .map(|roots| (domain.clone(), Arc::new(roots)))
                .map_err(|e| (format!("spiffe.trust_domains.{domain}"), e))
        })
        .collect()
}

/// The public listener's TLS config. `Err` is the key path at fault and why.
pub fn server_config(
    tls: &TlsConfig,
    http2: bool,
    spiffe: &SpiffeConfig,
) -> Result<Arc<ServerConfig>, (String, String)> {
    let at = |k: &str| format!("server.tls.{k}");
    let certs = load_certs(&tls.cert).map_err(|e| (at("cert"), e))?;
    let key = load_key(&tls.key).map_err(|e| (at("key"), e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| (at("cert"), e.to_string()))?;
    let builder = if tls.client_ca.is_none() && spiffe.trust_domains.is_empty() {
        builder.with_no_client_auth()
    } else {
        let webpki = |roots: Arc<RootCertStore>, at: String| {
            WebPkiClientVerifier::builder_with_provider(roots, provider()).build().map_err(|e| (at, e.to_string()))
        };
        let ca = match &tls.client_ca {
            Some(path) => Some(webpki(Arc::new(load_roots(path).map_err(|e| (at("client_ca"), e))?), at("client_ca"))?),
            None => None,
        };
        let mut domains = HashMap::new();
        for (domain, roots) in bundles(spiffe)? {
            let v = webpki(roots, format!("spiffe.trust_domains.{domain}"))?;
            domains.insert(domain, v);
        }
        let any = ca.clone().or_else(|| domains.values().next().cloned()).ok_or((at("client_ca"), "no CA".into()))?;
        let mut hints: Vec<DistinguishedName> = Vec::new();
        for v in ca.iter().chain(domains.values()) {
            hints.extend(v.root_hint_subjects().iter().cloned());
        }
        builder.with_client_cert_verifier(Arc::new(ClientVerifier {
            ca,
            domains,
            any,
            hints,
            mandatory: tls.client_auth == ClientAuth::Required,
        }))
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| (at("key"), format!("the key does not fit the certificate or is unusable: {e}")))?;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    if let Ok(ticketer) = aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
}

/// Verifies client certificates: an X.509-SVID against the bundle of the trust domain in its
/// own SPIFFE ID (a certificate from one trust domain's CA cannot claim another domain's
/// IDs), any other certificate against `client_ca`. rustls's WebPKI verifier does the
/// chain, validity and key-usage checks of each; this type picks which one applies and adds
/// the X.509-SVID rules. (No crate does this per-trust-domain choice for a plain file
/// bundle: spiffe-rustls needs the SPIFFE Workload API.)
#[derive(Debug)]
struct ClientVerifier {
    ca: Option<Arc<dyn ClientCertVerifier>>,
    domains: HashMap<String, Arc<dyn ClientCertVerifier>>,
    /// Any of the above, for handshake signatures (they share one provider).
    any: Arc<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
    mandatory: bool,
}

fn refuse(why: &str) -> rustls::Error {
    tracing::debug!(reason = why, "client certificate refused");
    rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = match portcullis_authn::mtls::svid_id(end_entity) {
            Err(problem) => return Err(refuse(problem)),
            Ok(Some(id)) if !self.domains.is_empty() => {
                let domain = portcullis_core::spiffe::parse_id(&id).map(|(d, _)| d).unwrap_or_default();
                self.domains.get(domain).ok_or_else(|| refuse("no trust bundle for the SVID's trust domain"))?
            }
            _ => self.ca.as_ref().ok_or_else(|| refuse("not an X.509-SVID, and no client_ca"))?,
        };
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

/// Verifies an upstream as the SPIFFE workload `id`: its SVID chains to the bundle of `id`'s
/// trust domain and names exactly `id` (in place of host-name verification).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    id: String,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = (|| {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &self.roots,
                intermediates,
                now,
                self.algs.all,
            )?;
            match portcullis_authn::mtls::svid_id(end_entity) {
                Ok(Some(id)) if id == self.id => Ok(ServerCertVerified::assertion()),
                Ok(Some(_)) => Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)),
                Ok(None) => Err(refuse("the upstream's certificate is not an X.509-SVID")),
                Err(problem) => Err(refuse(problem)),
            }
        })();
        if let Err(e) = &verified {
            tracing::warn!(expected = %self.id, error = %e, "upstream SVID refused");
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The system's trusted roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                tracing::warn!("no system CA certificates found; https upstreams need `tls.ca`");
            }
            Arc::new(roots)
        })
        .clone()
}

/// The TLS client config for an upstream (ALPN is left to the connector, which sets it
/// from the upstream's protocol). `Err` names the key at fault (below the upstream's `tls`,
/// or a full path for `spiffe.*`) and why.
pub fn client_config(tls: Option<&UpstreamTls>, spiffe: &SpiffeConfig) -> Result<ClientConfig, (String, String)> {
    let key = |k: &str| k.to_string();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| (key("ca"), e.to_string()))?;
    let builder = match tls.and_then(|t| t.spiffe_id.as_deref()) {
        Some(id) => {
            let domain = portcullis_core::spiffe::parse_id(id).map(|(d, _)| d).unwrap_or_default();
            let path = spiffe
                .trust_domains
                .get(domain)
                .ok_or_else(|| (key("spiffe_id"), format!("no bundle for trust domain `{domain}`")))?;
            let roots = load_bundle(path).map_err(|e| (format!("spiffe.trust_domains.{domain}"), e))?;
            let verifier = SpiffeServerVerifier {
                roots: Arc::new(roots),
                id: id.to_string(),
                algs: provider().signature_verification_algorithms,
            };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier))
        }
        None => {
            let roots = match tls.and_then(|t| t.ca.as_deref()) {
                Some(ca) => Arc::new(load_roots(ca).map_err(|e| (key("ca"), e))?),
                None => system_roots(),
            };
            builder.with_root_certificates(roots)
        }
    };
    let identity = match tls {
        Some(t) if t.svid => {
            let svid = spiffe.svid.as_ref().ok_or_else(|| (key("svid"), "needs `spiffe.svid`".to_string()))?;
            Some((&svid.cert, &svid.key, "spiffe.svid."))
        }
        Some(t) => t.cert.as_ref().zip(t.key.as_ref()).map(|(c, k)| (c, k, "")),
        None => None,
    };
    let config = match identity {
        Some((cert, k, prefix)) => {
            let chain = load_certs(cert).map_err(|e| (format!("{prefix}cert"), e))?;
            let pk = load_key(k).map_err(|e| (format!("{prefix}key"), e))?;
            builder.with_client_auth_cert(chain, pk).map_err(|e| (format!("{prefix}key"), e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}
