//! Tokens and keys from the network: compact JWS parsing (both header policies), the JSON
//! object parser that refuses duplicate members, the claims reader (which must accept exactly
//! what that parser accepts, and find the same claims), base64url, and JWK / JWK Set parsing
//! never panic, whatever the bytes; and what they accept is consistent with what was sent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_jose::claims::{Claim, TokenClaims};
use portcullis_jose::{Algorithm, HeaderPolicy, Jwk, Jws, b64, parse_object_no_duplicates};
use serde_json::{Map, Value};

/// The claims reader against the map reader: the same bytes accepted, the same claims found.
fn claims_agree(data: &[u8]) {
    let map = parse_object_no_duplicates(data);
    let claims = TokenClaims::parse(data);
    assert_eq!(map.is_ok(), claims.is_ok(), "the two readers disagree on {data:?}");
    let (Ok(map), Ok(claims)) = (map, claims) else { return };
    let same = |claim: &Claim<'_>, name: &str| match (claim, map.get(name)) {
        (Claim::Absent, None) | (Claim::Null, Some(Value::Null)) | (Claim::Bool, Some(Value::Bool(_))) => true,
        (Claim::Number(a), Some(Value::Number(b))) => Some(*a) == b.as_f64(),
        (Claim::Text(a), Some(Value::String(b))) => a == b,
        (Claim::List(a), Some(Value::Array(b))) => a.iter().map(|s| &**s).eq(b.iter().filter_map(Value::as_str)),
        (Claim::Object { jkt, x5t_s256, other }, Some(Value::Object(o))) => {
            let text = |o: &Map<String, Value>, k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
            let not_text = |k: &str| o.get(k).is_some_and(|v| !v.is_string());
            let unknown = o.keys().any(|k| k != "jkt" && k != "x5t#S256");
            jkt.as_deref().map(str::to_owned) == text(o, "jkt")
                && x5t_s256.as_deref().map(str::to_owned) == text(o, "x5t#S256")
                && *other == (unknown || not_text("jkt") || not_text("x5t#S256"))
        }
        _ => false,
    };
    for (claim, name) in [
        (&claims.iss, "iss"),
        (&claims.sub, "sub"),
        (&claims.aud, "aud"),
        (&claims.exp, "exp"),
        (&claims.nbf, "nbf"),
        (&claims.iat, "iat"),
        (&claims.jti, "jti"),
        (&claims.client_id, "client_id"),
        (&claims.azp, "azp"),
        (&claims.scope, "scope"),
        (&claims.scp, "scp"),
        (&claims.cnf, "cnf"),
    ] {
        assert!(same(claim, name), "`{name}` read differently from {data:?}");
    }
    assert!(map.keys().all(|k| claims.has(k)));
}

/// Everything a key can be asked, for a key that parsed.
fn exercise_key(jwk: &Jwk, message: &[u8], signature: &[u8]) {
    for alg in Algorithm::ALL {
        let fits = jwk.fits(alg);
        if let Ok(v) = jwk.verifying_key(&[alg]) {
            assert!(fits, "a verifier for {alg} from a key that does not fit it");
            let _ = v.verify(alg, message, signature);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    claims_agree(data);
    // A header, a claims set or a key set, as raw bytes.
    if let Ok(map) = parse_object_no_duplicates(data) {
        // What was accepted re-serialises to an object that is accepted again, with the same
        // members. (Not necessarily the same values: serde_json's default float parsing is
        // not exact, so `18000...0` with 70 digits may come back one ulp apart.)
        let again = serde_json::to_vec(&map).expect("a map serialises");
        let reparsed = parse_object_no_duplicates(&again).expect("its own output parses");
        assert!(reparsed.keys().eq(map.keys()));
        if let Ok(jwk) = Jwk::from_value(Value::Object(map)) {
            assert!(!jwk.thumbprint.is_empty());
            exercise_key(&jwk, data, data);
        }
    }
    if let Ok((keys, _skipped)) = Jwk::parse_set(data) {
        for jwk in &keys {
            assert!(!jwk.has_private, "keys with private members are left out of a set");
            exercise_key(jwk, data, data);
        }
    }

    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(bytes) = b64::decode(text) {
        // Strict base64url: one encoding per value.
        assert_eq!(b64::encode(&bytes), text);
    }
    for policy in [HeaderPolicy::default(), HeaderPolicy { embedded_jwk: true }] {
        let Ok(jws) = Jws::parse(text, policy) else { continue };
        // The parts are exactly what was sent: the signing input is `header.payload` as
        // received, and payload and signature decode from (and re-encode to) their segments.
        let (input, signature) = text.rsplit_once('.').expect("three parts");
        assert_eq!(jws.signing_input(), input.as_bytes());
        assert_eq!(b64::encode(&jws.signature), signature);
        let (_, payload) = input.split_once('.').expect("three parts");
        assert_eq!(b64::encode(&jws.payload), payload);
        assert_eq!(jws.header.jwk.is_some(), policy.embedded_jwk);
        // A DPoP-style proof is verified with the key it carries.
        if let Some(jwk) = &jws.header.jwk {
            if let Ok(v) = jwk.verifying_key(&[jws.header.alg]) {
                let _ = v.verify(jws.header.alg, jws.signing_input(), &jws.signature);
            }
        }
        claims_agree(&jws.payload);
    }
});
