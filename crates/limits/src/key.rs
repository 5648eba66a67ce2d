//! Bucket keys: the limit's id, then the request's key values, each written with a tag
//! saying where it came from and its length, so that no two requests' values can spell one
//! key. The lengths are binary (they hold zero bytes), so the Redis backend always stores
//! such a key as a digest: no value is written to Redis in clear (a header value may be a
//! credential; subjects and addresses are personal data).

use std::fmt::Write as _;
use std::net::IpAddr;

use portcullis_config::KeyPart;

use crate::Facts;

/// Appends `<tag><len>:<value>`.
pub(crate) fn push_field(out: &mut String, tag: char, value: &str) {
    out.push(tag);
    let _ = write!(out, "{}:", value.len());
    out.push_str(value);
}

fn push_bytes(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(value.len() as u64).to_be_bytes());
    out.extend_from_slice(value);
}

/// The address a caller is counted by: IPv4-mapped IPv6 as IPv4, and IPv6 by its /64 (one
/// host, or one customer's network, holds a whole /64; counting addresses inside it would
/// give each caller 2^64 allowances).
pub(crate) fn counted_address(ip: IpAddr) -> [u8; 17] {
    let mut out = [0u8; 17];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            out[0] = 4;
            out[1..5].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out[0] = 6;
            out[1..9].copy_from_slice(&v6.octets()[..8]);
        }
    }
    out
}

/// The key of a limit's bucket for a request.
pub(crate) fn bucket_key(id: &str, parts: &[KeyPart], facts: &Facts<'_>) -> Vec<u8> {
    let mut material = Vec::with_capacity(id.len() + 64);
    material.extend_from_slice(id.as_bytes());
    let p = facts.principal;
    let issuer = p.issuer.as_deref().unwrap_or_default().as_bytes();
    let by_address = |m: &mut Vec<u8>| push_bytes(m, b'i', &counted_address(facts.client_ip));
    for part in parts {
        match part {
            KeyPart::Consumer => match (&p.consumer, &p.subject, &p.client_id) {
                (Some(c), _, _) => push_bytes(&mut material, b'c', c.name.as_bytes()),
                (None, Some(sub), _) => {
                    push_bytes(&mut material, b'I', issuer);
                    push_bytes(&mut material, b's', sub.as_bytes());
                }
                (None, None, Some(client)) => {
                    push_bytes(&mut material, b'I', issuer);
                    push_bytes(&mut material, b'k', client.as_bytes());
                }
                // No identity (an anonymous caller): counted by address, under a tag of its
                // own so that an address never shares a bucket with a name that spells it.
                (None, None, None) => by_address(&mut material),
            },
            KeyPart::Subject => match &p.subject {
                Some(sub) => {
                    push_bytes(&mut material, b'I', issuer);
                    push_bytes(&mut material, b's', sub.as_bytes());
                }
                None => by_address(&mut material),
            },
            KeyPart::ClientId => match &p.client_id {
                Some(client) => {
                    push_bytes(&mut material, b'I', issuer);
                    push_bytes(&mut material, b'k', client.as_bytes());
                }
                None => by_address(&mut material),
            },
            KeyPart::SpiffeId => match &p.spiffe_id {
                Some(id) => push_bytes(&mut material, b'w', id.as_bytes()),
                None => by_address(&mut material),
            },
            KeyPart::ClientIp => by_address(&mut material),
            KeyPart::Route => push_bytes(&mut material, b'r', facts.route.as_bytes()),
            KeyPart::Header(name) => {
                // Every field of that name, as a service that joins them reads it.
                let mut values = facts.headers.get_all(name.as_str()).iter();
                match values.next() {
                    None => material.push(b'-'),
                    Some(first) => {
                        let mut joined = first.as_bytes().to_vec();
                        for v in values {
                            joined.extend_from_slice(b", ");
                            joined.extend_from_slice(v.as_bytes());
                        }
                        push_bytes(&mut material, b'h', &joined);
                    }
                }
            }
        }
    }
    material
}
