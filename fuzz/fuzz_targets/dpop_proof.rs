//! DPoP proofs and client certificates from the network: the proof check (header, key,
//! signature, claims, `htu` normalisation) and the X.509-SVID reading never panic, whatever
//! the bytes, and `htu` normalisation is a fixed point.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_authn::dpop::{Dpop, normalize_htu};
use portcullis_authn::mtls::{ClientCert, svid_id};

fn dpop() -> &'static Dpop {
    static D: OnceLock<Dpop> = OnceLock::new();
    D.get_or_init(|| {
        Dpop::new(&Default::default(), portcullis_state::State::memory(1024)).expect("default DPoP settings")
    })
}

fuzz_target!(|data: &[u8]| {
    // Certificates are read before their chain is verified (to pick the trust domain).
    let _ = svid_id(data);
    let _ = ClientCert::from_leaf(data);

    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let (proof, url, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let Some(n) = normalize_htu(url) {
        assert_eq!(normalize_htu(&n).as_deref(), Some(n.as_str()), "normalising {url:?} twice differs");
    }
    for method in ["GET", "POST"] {
        let _ = dpop().check(proof, method, url, token, 1_700_000_000);
    }
});
