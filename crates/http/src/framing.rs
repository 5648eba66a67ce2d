//! HTTP/1.1 message framing, shared by the server and client codecs: how a body is
//! delimited (RFC 9112 §6), the framing and connection facts of a head, and a decoder for
//! length-delimited, chunked and read-until-close bodies that does no I/O (the codecs read,
//! the fuzz targets drive it over arbitrary bytes).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::body::BoxError;

/// Longest chunk-size line (with extensions).
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// Why a `Content-Length` value was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LengthError {
    /// Not a list of digits (at most the allowed number of them).
    Invalid,
    /// Members, or fields, that differ.
    Conflicting,
}

/// Reads a `Content-Length` field value into `length`, which holds what earlier fields of
/// the same message said. A list of equal lengths is one length (RFC 9110 §8.6); members
/// of more than `max_digits` digits are refused before they could overflow.
#[inline]
pub fn content_length(raw: &[u8], max_digits: usize, length: &mut Option<u64>) -> Result<(), LengthError> {
    for part in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if part.is_empty() || part.len() > max_digits || !part.iter().all(u8::is_ascii_digit) {
            return Err(LengthError::Invalid);
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(LengthError::Conflicting);
        }
        *length = Some(n);
    }
    Ok(())
}

/// How a message body is delimited, and how far reading it has got.
#[derive(Clone, Copy, Debug)]
pub enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
    /// Complete.
    Done,
}

/// Where in the chunked coding reading is.
#[derive(Clone, Copy, Debug)]
pub enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// At the CRLF that ends a chunk.
    DataEnd,
    /// At the trailer section.
    Trailers,
}

/// The peer closed the connection in the middle of a body (rather than sending a broken
/// one): for a request body, a client that went away.
#[derive(Debug)]
pub struct ClosedEarly;

impl std::fmt::Display for ClosedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection closed in the middle of the body")
    }
}

impl std::error::Error for ClosedEarly {}

fn closed_early() -> BoxError {
    ClosedEarly.into()
}

/// What the decoder made of the buffered bytes.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section; the body is complete.
    Trailers(HeaderMap),
    /// The body is complete.
    Done,
    /// More bytes are needed (`eof`: none will come; that ends a read-until-close body and
    /// is an error for any other).
    NeedMore,
}

/// One step of decoding a body from `buf` under `framing`, with no I/O: the body loop reads
/// more when told to, and the fuzz target drives the same code over arbitrary bytes.
/// `eof` says the upstream has closed the connection.
pub fn decode(framing: &mut Framing, buf: &mut BytesMut, eof: bool) -> Result<Decoded, BoxError> {
    loop {
        match framing {
            Framing::Done | Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(Decoded::Done);
            }
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return if eof { Err(closed_early()) } else { Ok(Decoded::NeedMore) };
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if let Framing::Chunked(c @ Chunk::Data(0)) = framing {
                    *c = Chunk::DataEnd;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            Framing::Eof => {
                if buf.is_empty() {
                    if eof {
                        *framing = Framing::Done;
                        return Ok(Decoded::Done);
                    }
                    return Ok(Decoded::NeedMore);
                }
                return Ok(Decoded::Data(buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Size) => match parse_chunk_size(buf)? {
                Some((line, size)) => {
                    buf.advance(line);
                    *framing = Framing::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                None if eof => return Err(closed_early()),
                None => return Ok(Decoded::NeedMore),
            },
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return if eof { Err(closed_early()) } else { Ok(Decoded::NeedMore) };
                }
                if &buf[..2] != b"\r\n" {
                    return Err("malformed chunked body".into());
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => match parse_trailers(buf)? {
                Some((len, trailers)) => {
                    buf.advance(len);
                    *framing = Framing::Done;
                    return Ok(trailers.map_or(Decoded::Done, Decoded::Trailers));
                }
                None if buf.len() > MAX_TRAILERS => return Err("trailer section too large".into()),
                None if eof => return Err(closed_early()),
                None => return Ok(Decoded::NeedMore),
            },
        }
    }
}

/// A chunk-size line at the front of `buf`: `(line length with CRLF, size)`, or `None` if
/// incomplete. Extensions (`;name=value`) are ignored, as RFC 9112 §7.1.1 allows.
pub fn parse_chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, BoxError> {
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE { Err("chunk-size line too long".into()) } else { Ok(None) };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err("malformed chunk-size line".into());
    }
    let line = &buf[..lf - 1];
    // chunk-size [ BWS ";" chunk-ext ] (RFC 9112 §7.1.1): white space only before an
    // extension, and extensions of visible characters, spaces and tabs only (no CR, NUL or
    // DEL that another parser in the path might read differently).
    let (digits, ext) = match line.iter().position(|&b| b == b';') {
        Some(i) => {
            let end = line[..i].iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |p| p + 1);
            (&line[..end], Some(&line[i + 1..]))
        }
        None => (line, None),
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("malformed chunk size".into());
    }
    if ext.is_some_and(|e| !e.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))) {
        return Err("malformed chunk extension".into());
    }
    let size = digits.iter().fold(0u64, |n, &b| n * 16 + u64::from((b as char).to_digit(16).unwrap_or(0)));
    Ok(Some((lf + 1, size)))
}

/// The trailer section at the front of `buf`: `(length, trailers if any)`, or `None` if
/// incomplete.
fn parse_trailers(buf: &[u8]) -> Result<Option<(usize, Option<HeaderMap>)>, BoxError> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((len, fields))) => {
            // Lines end in CRLF, as in the rest of the message (httparse also takes a bare LF).
            if buf[..len].iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || buf[i - 1] != b'\r')) {
                return Err("malformed trailer section".into());
            }
            if fields.is_empty() {
                return Ok(Some((len, None)));
            }
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "invalid trailer name")?;
                let value = HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer value")?;
                map.append(name, value);
            }
            Ok(Some((len, Some(map))))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("invalid trailer section: {e}").into()),
    }
}

/// What the framing and connection fields of a message head said (RFC 9112 §6, RFC 9110
/// §7.6.1), gathered field by field as the head is parsed. Each codec then applies its own
/// side's rules: a server refuses every ambiguity, a client reads what it can and does not
/// reuse the connection.
#[derive(Default)]
pub struct HeadFacts {
    /// The declared length (equal values agreed; see [`content_length`]).
    pub length: Option<u64>,
    /// A `Transfer-Encoding` field was present.
    pub te: bool,
    /// Transfer codings listed, across all `Transfer-Encoding` fields, in order.
    pub codings: usize,
    /// Where the first `chunked` stood among them.
    pub chunked_at: Option<usize>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Connection: upgrade`.
    pub upgrade: bool,
}

impl HeadFacts {
    /// Reads a `Content-Length` field; see [`content_length`].
    #[inline]
    pub fn content_length(&mut self, raw: &[u8], max_digits: usize) -> Result<(), LengthError> {
        content_length(raw, max_digits, &mut self.length)
    }

    /// Reads a `Transfer-Encoding` field.
    #[inline]
    pub fn transfer_encoding(&mut self, raw: &[u8]) {
        self.te = true;
        for coding in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case(b"chunked") && self.chunked_at.is_none() {
                self.chunked_at = Some(self.codings);
            }
            self.codings += 1;
        }
    }

    /// `chunked` is the one and only transfer coding.
    #[inline]
    pub fn chunked_only(&self) -> bool {
        self.codings == 1 && self.chunked_at == Some(0)
    }

    /// Reads a `Connection` field; `option` gets each option other than `close` and
    /// `keep-alive` (`upgrade` included): the fields it names are hop-by-hop.
    #[inline]
    pub fn connection(&mut self, raw: &[u8], mut option: impl FnMut(&[u8])) {
        for token in raw.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    self.upgrade = true;
                }
                option(token);
            }
        }
    }
}
