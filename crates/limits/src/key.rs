//! Bucket keys: the limit's id, then each key part's value, every field written as a tag,
//! its length and its bytes, so that no two requests' values can spell one key.

use std::fmt::Write as _;

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
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(value);
}

/// The key of `limit`'s bucket for a request.
pub(crate) fn bucket_key(id: &str, parts: &[KeyPart], facts: &Facts<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + 48);
    out.extend_from_slice(id.as_bytes());
    let p = facts.principal;
    for part in parts {
        let identity = match part {
            KeyPart::Consumer => {
                Some((b'c', p.consumer.as_ref().map(|c| &c.name).or(p.subject.as_ref()).or(p.client_id.as_ref())))
            }
            KeyPart::Subject => Some((b's', p.subject.as_ref())),
            KeyPart::ClientId => Some((b'k', p.client_id.as_ref())),
            KeyPart::SpiffeId => Some((b'w', p.spiffe_id.as_ref())),
            _ => None,
        };
        match (part, identity) {
            (_, Some((tag, Some(value)))) => push_bytes(&mut out, tag, value.as_bytes()),
            // No such identity (an anonymous caller): counted by address, under a tag of
            // its own so that an address never shares a bucket with a subject that spells it.
            (_, Some((_, None))) | (KeyPart::ClientIp, _) => {
                push_bytes(&mut out, b'i', facts.client_ip.to_string().as_bytes())
            }
            (KeyPart::Route, _) => push_bytes(&mut out, b'r', facts.route.as_bytes()),
            (KeyPart::Header(name), _) => match facts.headers.get(name.as_str()) {
                Some(v) => push_bytes(&mut out, b'h', v.as_bytes()),
                // Without the header: one bucket for all such requests.
                None => out.push(b'-'),
            },
            _ => {}
        }
    }
    out
}
