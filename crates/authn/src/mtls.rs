//! Client certificates: the principal of a mutual-TLS connection, the X.509-SVID rules of
//! the SPIFFE specification, and the RFC 8705 certificate thumbprint that binds tokens.
//!
//! Certificates reach this module already verified by the TLS handshake (chain, validity,
//! key usage for client authentication); this module reads who they name.

use std::sync::Arc;

use portcullis_core::{AuthnMethod, Principal, PrincipalKind};
use serde_json::{Map, Value, json};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// The verified client certificate of a connection, read once per connection.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// RFC 8705 §3.1 `x5t#S256`: the base64url SHA-256 of the leaf's DER.
    pub thumbprint: Arc<str>,
    /// The principal the certificate names (`authenticate: [mtls]`).
    pub principal: Arc<Principal>,
}

/// Why a certificate that claims a SPIFFE ID is not a valid X.509-SVID.
pub type SvidProblem = &'static str;

/// The SPIFFE ID of a leaf certificate: `Ok(None)` when it names none (no `spiffe://` URI
/// SAN), `Ok(Some(id))` for a valid X.509-SVID leaf, `Err` when it claims one but breaks the
/// X.509-SVID rules (§4 and §5 of the specification): exactly one URI SAN, a valid SPIFFE ID,
/// not a CA, a key usage with `digitalSignature` and without `keyCertSign` or `cRLSign`.
pub fn svid_id(der: &[u8]) -> Result<Option<String>, SvidProblem> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| "the certificate cannot be parsed")?;
    svid_of(&cert)
}

fn svid_of(cert: &X509Certificate<'_>) -> Result<Option<String>, SvidProblem> {
    let uris: Vec<&str> = sans(cert)?
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    if !uris.iter().any(|u| u.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("spiffe://"))) {
        return Ok(None);
    }
    let [id] = uris[..] else { return Err("an X.509-SVID has exactly one URI SAN") };
    if portcullis_core::spiffe::parse_id(id).is_none() {
        return Err("the URI SAN is not a valid SPIFFE ID");
    }
    if cert.is_ca() {
        return Err("an X.509-SVID leaf must not be a CA");
    }
    match cert.key_usage() {
        Ok(Some(ku)) => {
            let ku = ku.value;
            if !ku.digital_signature() {
                return Err("an X.509-SVID leaf needs the digitalSignature key usage");
            }
            if ku.key_cert_sign() || ku.crl_sign() {
                return Err("an X.509-SVID leaf must not have keyCertSign or cRLSign");
            }
        }
        Ok(None) => return Err("an X.509-SVID leaf needs a key usage extension"),
        Err(_) => return Err("the key usage extension is malformed"),
    }
    Ok(Some(id.to_string()))
}

fn sans<'a>(cert: &'a X509Certificate<'a>) -> Result<Vec<GeneralName<'a>>, SvidProblem> {
    match cert.subject_alternative_name() {
        Ok(Some(ext)) => Ok(ext.value.general_names.clone()),
        Ok(None) => Ok(Vec::new()),
        Err(_) => Err("the subject alternative names are malformed"),
    }
}

/// The RFC 8705 `x5t#S256` thumbprint of a DER certificate.
pub fn thumbprint(der: &[u8]) -> String {
    portcullis_jose::b64::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}

impl ClientCert {
    /// Reads a verified leaf certificate; `None` if it cannot be parsed (the handshake would
    /// not have accepted such a certificate).
    pub fn from_leaf(der: &[u8]) -> Option<ClientCert> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let thumbprint: Arc<str> = thumbprint(der).into();
        let spiffe_id = svid_of(&cert).ok().flatten();
        let names = sans(&cert).unwrap_or_default();
        let list = |f: fn(&GeneralName<'_>) -> Option<String>| -> Vec<Value> {
            names.iter().filter_map(f).map(Value::String).collect()
        };
        let dns = list(|n| if let GeneralName::DNSName(d) = n { Some(d.to_string()) } else { None });
        let uris = list(|n| if let GeneralName::URI(u) = n { Some(u.to_string()) } else { None });
        let emails = list(|n| if let GeneralName::RFC822Name(e) = n { Some(e.to_string()) } else { None });
        let ips = list(|n| match n {
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        });
        let dn = cert.subject().to_string();
        let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).map(str::to_string);
        // The identity: the SPIFFE ID of an SVID, else the common name, else the whole DN.
        let subject = spiffe_id.clone().or(cn.clone()).unwrap_or_else(|| dn.clone());
        let mut claims = Map::new();
        claims.insert("sub".into(), json!(subject));
        claims.insert("dn".into(), json!(dn));
        if let Some(cn) = &cn {
            claims.insert("cn".into(), json!(cn));
        }
        claims.insert("issuer_dn".into(), json!(cert.issuer().to_string()));
        claims.insert("serial".into(), json!(cert.raw_serial_as_string()));
        claims.insert("dns_names".into(), Value::Array(dns));
        claims.insert("uris".into(), Value::Array(uris));
        claims.insert("emails".into(), Value::Array(emails));
        claims.insert("ips".into(), Value::Array(ips));
        claims.insert("x5t#S256".into(), json!(&*thumbprint));
        if let Some(id) = &spiffe_id {
            claims.insert("spiffe_id".into(), json!(id));
        }
        let mut p = Principal::new(PrincipalKind::Workload, AuthnMethod::Mtls);
        p.subject = Some(subject.into());
        p.issuer = Some(cert.issuer().to_string().into());
        p.expires_at = u64::try_from(cert.validity().not_after.timestamp()).ok();
        p.issued_at = u64::try_from(cert.validity().not_before.timestamp()).ok();
        p.spiffe_id = spiffe_id.map(Arc::from);
        p.claims = Some(portcullis_core::Claims::from_map(claims));
        Some(ClientCert { thumbprint, principal: Arc::new(p) })
    }
}
