//! TLS settings, built with rustls (aws-lc-rs) from PEM files: the public listener's
//! server config (optionally verifying client certificates) and upstream client configs.
//!
//! Modern defaults only: TLS 1.3 and 1.2 with rustls's AEAD suites; no renegotiation, no
//! compression, no RSA key exchange. Session tickets are on for cheap resumption.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use portcullis_config::{ClientAuth, TlsConfig, UpstreamTls};
use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

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

/// The public listener's TLS config. `Err` names the key at fault (`cert`, `key`, ...) and why.
pub fn server_config(tls: &TlsConfig, http2: bool) -> Result<Arc<ServerConfig>, (&'static str, String)> {
    let certs = load_certs(&tls.cert).map_err(|e| ("cert", e))?;
    let key = load_key(&tls.key).map_err(|e| ("key", e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca).map_err(|e| ("client_ca", e))?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = match tls.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| ("client_ca", e.to_string()))?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| ("key", format!("the key does not fit the certificate or is unusable: {e}")))?;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    if let Ok(ticketer) = aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(Arc::new(config))
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
/// from the upstream's protocol). `Err` names the key at fault and why.
pub fn client_config(tls: Option<&UpstreamTls>) -> Result<ClientConfig, (&'static str, String)> {
    let roots = match tls.and_then(|t| t.ca.as_deref()) {
        Some(ca) => Arc::new(load_roots(ca).map_err(|e| ("ca", e))?),
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca", e.to_string()))?
        .with_root_certificates(roots);
    let config = match tls.and_then(|t| t.cert.as_deref().zip(t.key.as_deref())) {
        Some((cert, key)) => {
            let chain = load_certs(cert).map_err(|e| ("cert", e))?;
            let key = load_key(key).map_err(|e| ("key", e))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| ("key", e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}
