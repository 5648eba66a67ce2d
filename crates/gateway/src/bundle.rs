//! Signed config bundles: a config and the files it names (policies, specs, keys), packed
//! as one tar file with a manifest and a signature, so that many gateways can take their
//! config from one place and each can tell that it is whole, authentic and not older than
//! what it runs.
//!
//! The tar file holds `.manifest` (JSON: format, version, creation time, the config's name,
//! and each file's path, size and SHA-256), `.signature` (the base64url Ed25519 signature of
//! the manifest's bytes) and the files. Reading one trusts nothing before the signature is
//! checked: entries must be regular files with plain relative paths, within size bounds,
//! each listed in the manifest with its digest, and every listed file present.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use aws_lc_rs::digest::SHA256;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};
use serde::{Deserialize, Serialize};

/// The largest bundle read (its files together).
pub const MAX_BUNDLE: usize = 64 << 20;
/// The most files a bundle holds.
const MAX_FILES: usize = 4096;
const MANIFEST: &str = ".manifest";
const SIGNATURE: &str = ".signature";
/// The DER prefix of an Ed25519 public key in a SubjectPublicKeyInfo (RFC 8410).
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// What a bundle says of itself, signed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The format of this manifest: 1.
    pub format: u32,
    /// Increases with every bundle published: a gateway takes none older than its own.
    pub version: u64,
    /// When it was made (RFC 3339).
    pub created: String,
    /// The config file among `files`.
    pub config: String,
    /// Every file, in path order.
    pub files: Vec<Entry>,
}

/// One file of a bundle.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of its bytes.
    pub sha256: String,
}

/// A bundle whose signature and digests hold.
#[derive(Debug)]
pub struct Verified {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its files, by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The SHA-256 of the whole bundle file, hex (what `/status` reports).
    pub digest: String,
}

/// An Ed25519 public key a bundle may be signed with.
#[derive(Clone, Debug)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, String> {
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| format!("not a PEM public key: {e}"))?;
        let der: &[u8] = spki.as_ref();
        match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(key) if key.len() == 32 => Ok(PublicKey(key.try_into().unwrap_or([0; 32]))),
            _ => Err("not an Ed25519 public key".into()),
        }
    }

    /// Reads one from a PEM file.
    pub fn read(path: &Path) -> Result<PublicKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        PublicKey::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The signing key, from a PEM `PRIVATE KEY` (PKCS#8, as `openssl genpkey -algorithm
/// ed25519` writes it).
pub fn signing_key(pem: &[u8]) -> Result<Ed25519KeyPair, String> {
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(|_| "not an Ed25519 private key".into())
}

/// The PEM public key of a signing key (to give the gateways).
pub fn public_pem(key: &Ed25519KeyPair) -> String {
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(key.public_key().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

/// The SHA-256 of a bundle file, hex.
pub fn digest(bundle: &[u8]) -> String {
    hex(digest_of(bundle).as_ref())
}

fn digest_of(bytes: &[u8]) -> aws_lc_rs::digest::Digest {
    aws_lc_rs::digest::digest(&SHA256, bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `path` is a plain relative path: `/`-separated names, none empty, `.` or `..`.
fn plain(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && path.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'))
        && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Packs every file under `dir` (hidden ones, whose names start with `.`, left out), with
/// `config` (a path within it) as the config, signed with `key`.
pub fn create(dir: &Path, config: &str, version: u64, key: &Ed25519KeyPair) -> Result<Vec<u8>, String> {
    let mut files = BTreeMap::new();
    collect(dir, dir, &mut files)?;
    if !files.contains_key(config) {
        return Err(format!("{} has no config file `{config}`", dir.display()));
    }
    let manifest = Manifest {
        format: 1,
        version,
        created: jiff::Timestamp::now().to_string(),
        config: config.to_string(),
        files: files
            .iter()
            .map(|(path, bytes)| Entry {
                path: path.clone(),
                size: bytes.len() as u64,
                sha256: hex(digest_of(bytes).as_ref()),
            })
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.sign(&manifest_bytes));
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        out.append_data(&mut header, path, bytes).map_err(|e| format!("{path}: {e}"))
    };
    add(MANIFEST, &manifest_bytes)?;
    add(SIGNATURE, signature.as_bytes())?;
    for (path, bytes) in &files {
        add(path, bytes)?;
    }
    out.into_inner().map_err(|e| e.to_string())
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Followed: a ConfigMap's files are symlinks.
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            collect(root, &path, files)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).map_err(|e| e.to_string())?;
            let rel = rel.to_str().ok_or_else(|| format!("{}: not a UTF-8 name", path.display()))?.replace('\\', "/");
            if !plain(&rel) {
                return Err(format!("{}: not a plain relative name", path.display()));
            }
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            files.insert(rel, bytes);
            if files.len() > MAX_FILES || files.values().map(Vec::len).sum::<usize>() > MAX_BUNDLE {
                return Err(format!("{} holds too much for a bundle", root.display()));
            }
        }
    }
    Ok(())
}

/// Reads and checks a bundle: its signature by one of `keys`, and every file against the
/// manifest.
pub fn verify(bundle: &[u8], keys: &[PublicKey]) -> Result<Verified, String> {
    if bundle.len() > MAX_BUNDLE + (1 << 20) {
        return Err("the bundle is too large".into());
    }
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(bundle);
    for entry in archive.entries().map_err(|e| format!("not a tar file: {e}"))? {
        let mut entry = entry.map_err(|e| format!("not a tar file: {e}"))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err("the bundle holds an entry that is not a plain file".into());
        }
        let path = entry.path().map_err(|e| format!("a name in the bundle: {e}"))?;
        let path = path.to_str().ok_or("a name in the bundle is not UTF-8")?.to_string();
        if !(path == MANIFEST || path == SIGNATURE || plain(&path)) {
            return Err(format!("`{}` is not a plain relative name", path.escape_debug()));
        }
        let size = entry.header().size().map_err(|e| e.to_string())?;
        if size as usize > MAX_BUNDLE || entries.len() >= MAX_FILES + 2 {
            return Err("the bundle is too large".into());
        }
        let mut bytes = Vec::with_capacity(size as usize);
        entry.read_to_end(&mut bytes).map_err(|e| format!("{path}: {e}"))?;
        if entries.insert(path.clone(), bytes).is_some() {
            return Err(format!("`{path}` is in the bundle twice"));
        }
    }
    let manifest_bytes = entries.remove(MANIFEST).ok_or("the bundle has no manifest")?;
    let signature = entries.remove(SIGNATURE).ok_or("the bundle has no signature")?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature.trim_ascii())
        .map_err(|_| "the signature is not base64url")?;
    if !keys.iter().any(|k| UnparsedPublicKey::new(&ED25519, &k.0[..]).verify(&manifest_bytes, &signature).is_ok()) {
        return Err("the signature does not verify with any of the public keys".into());
    }
    // Signed: now its content may be read.
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| format!("the manifest is not valid: {e}"))?;
    if manifest.format != 1 {
        return Err(format!("manifest format {} is not known", manifest.format));
    }
    if !manifest.files.iter().any(|f| f.path == manifest.config) {
        return Err(format!("the manifest's config `{}` is not among its files", manifest.config));
    }
    for f in &manifest.files {
        let bytes = entries.get(&f.path).ok_or_else(|| format!("`{}` is missing from the bundle", f.path))?;
        if bytes.len() as u64 != f.size || hex(digest_of(bytes).as_ref()) != f.sha256 {
            return Err(format!("`{}` does not match its digest in the manifest", f.path));
        }
    }
    if let Some(extra) = entries.keys().find(|p| !manifest.files.iter().any(|f| &f.path == *p)) {
        return Err(format!("`{extra}` is in the bundle but not in its manifest"));
    }
    Ok(Verified { manifest, files: entries, digest: digest(bundle) })
}

impl Verified {
    /// Writes the files into a new folder `dir` (which must not exist) and returns the
    /// config's path there.
    pub fn extract(&self, dir: &Path) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
        for (path, bytes) in &self.files {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot make {}: {e}", parent.display()))?;
            }
            std::fs::write(&target, bytes).map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        }
        Ok(dir.join(&self.manifest.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Ed25519KeyPair {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("portcullis-bundle-{}-{}", std::process::id(), rand_u64()));
        std::fs::create_dir_all(d.join("policies")).unwrap();
        std::fs::write(d.join("portcullis.yaml"), "routes: []\n").unwrap();
        std::fs::write(d.join("policies/main.cedar"), "permit(principal, action, resource);\n").unwrap();
        std::fs::write(d.join(".hidden"), "left out").unwrap();
        d
    }

    fn rand_u64() -> u64 {
        let mut b = [0u8; 8];
        aws_lc_rs::rand::fill(&mut b).unwrap();
        u64::from_le_bytes(b)
    }

    #[test]
    fn a_bundle_made_is_verified_with_its_public_key_only() {
        let k = key();
        let d = dir();
        let bundle = create(&d, "portcullis.yaml", 7, &k).unwrap();
        let public = PublicKey::from_pem(public_pem(&k).as_bytes()).unwrap();
        let v = verify(&bundle, &[public]).unwrap();
        assert_eq!(v.manifest.version, 7);
        assert_eq!(v.files.keys().collect::<Vec<_>>(), ["policies/main.cedar", "portcullis.yaml"]);
        let other = PublicKey::from_pem(public_pem(&key()).as_bytes()).unwrap();
        assert!(verify(&bundle, &[other]).unwrap_err().contains("signature"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let k = key();
        let d = dir();
        let bundle = create(&d, "portcullis.yaml", 1, &k).unwrap();
        let public = [PublicKey::from_pem(public_pem(&k).as_bytes()).unwrap()];
        // Every byte of the content region of every entry, flipped in turn, is caught
        // (header bytes too, unless the tar reader still reads the same entries).
        let mut refused = 0;
        for i in (0..bundle.len()).step_by(7) {
            let mut t = bundle.clone();
            t[i] ^= 0x20;
            match verify(&t, &public) {
                Err(_) => refused += 1,
                Ok(v) => assert_eq!(v.files, verify(&bundle, &public).unwrap().files, "byte {i} changed the content"),
            }
        }
        assert!(refused > 0);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn names_that_leave_the_folder_are_not_plain() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", "", "a\\..\\b"] {
            assert!(!plain(bad), "{bad}");
        }
        for good in ["portcullis.yaml", "policies/main.cedar", "a.b/c"] {
            assert!(plain(good), "{good}");
        }
    }
}
