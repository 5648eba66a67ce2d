//! JSON threat limits: a push parser that checks a body's grammar (RFC 8259) and its shape
//! (nesting depth, members per object, string length, items per array, values in all) as
//! the body arrives, so a hostile payload is refused at the byte that crosses a limit,
//! with memory bounded by the depth limit whatever the body's size.
//!
//! Written here because the parsers on crates.io pull from a complete buffer or a blocking
//! reader (serde_json, struson) and none applies these limits; this one takes chunks as
//! they come off the connection and keeps only a stack of counters. Runs of plain string
//! bytes are skipped eight at a time. UTF-8 is not checked here: the caller checks the
//! whole body once it has it.

use std::fmt;

/// The limits, as compiled from the route's `json_limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonLimits {
    /// Nesting of objects and arrays.
    pub max_depth: u32,
    /// Members of one object.
    pub max_keys: u32,
    /// Bytes of one string (a key or a value), as sent (escapes count as written).
    pub max_string: u32,
    /// Items of one array.
    pub max_items: u32,
    /// Values in the whole document.
    pub max_values: u64,
}

/// Why a body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON: what was wrong, and the byte offset.
    Malformed(&'static str, u64),
    /// A limit was crossed: which one, and its value.
    Limit(&'static str, u64),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::Malformed(what, at) => write!(f, "the body is not valid JSON: {what} at byte {at}"),
            JsonError::Limit(what, max) => write!(f, "the JSON body has {what} (the limit is {max})"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A value must come (`]` also allowed right after `[`).
    Value { first_in_array: bool },
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or the closer of the container, or the end at top level.
    After,
    /// Inside a string.
    Str { key: bool },
    /// After `\` in a string.
    Escape { key: bool },
    /// In `\uXXXX`, hex digits left.
    Unicode { key: bool, left: u8 },
    /// A number, at the given step of its grammar.
    Num(NumStep),
    /// In `true`, `false` or `null`: the bytes still expected.
    Literal { rest: &'static [u8] },
    /// The document is complete: only whitespace may follow.
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NumStep {
    /// After `-`: a digit.
    Sign,
    /// After a leading `0`.
    Zero,
    /// In the integer digits.
    Int,
    /// After `.`: a digit.
    Dot,
    /// In the fraction digits.
    Frac,
    /// After `e`/`E`: a sign or digit.
    Exp,
    /// After the exponent's sign: a digit.
    ExpSign,
    /// In the exponent digits.
    ExpDigits,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    object: bool,
    count: u32,
}

/// A document being read, chunk by chunk.
#[derive(Debug)]
pub struct Scanner {
    limits: JsonLimits,
    state: State,
    stack: Vec<Frame>,
    string_len: u32,
    values: u64,
    offset: u64,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// How many leading bytes of `s` are plain string content: not `"`, `\` or a control byte.
fn plain_run(s: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= s.len() {
        let w = u64::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3], s[i + 4], s[i + 5], s[i + 6], s[i + 7]]);
        // A byte below 0x20 (bytes of 0x80 and above are not flagged: their high bit is
        // masked out by `!w`), a `"`, a `\`.
        let below = w.wrapping_sub(LO * 0x20) & !w & HI;
        let quote = (w ^ (LO * b'"' as u64)).wrapping_sub(LO) & !(w ^ (LO * b'"' as u64)) & HI;
        let slash = (w ^ (LO * b'\\' as u64)).wrapping_sub(LO) & !(w ^ (LO * b'\\' as u64)) & HI;
        let hit = below | quote | slash;
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && s[i] >= 0x20 && s[i] != b'"' && s[i] != b'\\' {
        i += 1;
    }
    i
}

impl Scanner {
    /// A scanner for one document.
    pub fn new(limits: JsonLimits) -> Scanner {
        Scanner {
            limits,
            state: State::Value { first_in_array: false },
            stack: Vec::new(),
            string_len: 0,
            values: 0,
            offset: 0,
        }
    }

    fn malformed(&self, what: &'static str, i: usize) -> JsonError {
        JsonError::Malformed(what, self.offset + i as u64)
    }

    /// A value starts: counted against the document and its array.
    fn value(&mut self) -> Result<(), JsonError> {
        self.values += 1;
        if self.values > self.limits.max_values {
            return Err(JsonError::Limit("too many values", self.limits.max_values));
        }
        if let Some(top) = self.stack.last_mut()
            && !top.object
        {
            top.count += 1;
            if top.count > self.limits.max_items {
                return Err(JsonError::Limit("an array with too many items", self.limits.max_items.into()));
            }
        }
        Ok(())
    }

    fn open(&mut self, object: bool) -> Result<(), JsonError> {
        if self.stack.len() >= self.limits.max_depth as usize {
            return Err(JsonError::Limit("nesting too deep", self.limits.max_depth.into()));
        }
        self.stack.push(Frame { object, count: 0 });
        Ok(())
    }

    /// The state after a complete value.
    fn after_value(&self) -> State {
        if self.stack.is_empty() { State::Done } else { State::After }
    }

    /// Reads the next chunk. `Err` at the first byte that is not JSON or crosses a limit.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), JsonError> {
        // The state in a local: kept in a register across the loop rather than stored back
        // on every byte.
        let mut state = self.state;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match state {
                State::Str { key } => {
                    let run = plain_run(&chunk[i..]);
                    self.string_len = self.string_len.saturating_add(run as u32);
                    i += run;
                    if self.string_len > self.limits.max_string {
                        return Err(JsonError::Limit("a string too long", self.limits.max_string.into()));
                    }
                    let Some(&b) = chunk.get(i) else { break };
                    match b {
                        b'"' => state = if key { State::Colon } else { self.after_value() },
                        b'\\' => {
                            self.string_len += 1;
                            state = State::Escape { key };
                        }
                        _ => return Err(self.malformed("a control character in a string", i)),
                    }
                }
                State::Escape { key } => {
                    self.string_len += 1;
                    state = match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => State::Str { key },
                        b'u' => State::Unicode { key, left: 4 },
                        _ => return Err(self.malformed("an invalid escape", i)),
                    };
                }
                State::Unicode { key, left } => {
                    if !b.is_ascii_hexdigit() {
                        return Err(self.malformed("an invalid \\u escape", i));
                    }
                    self.string_len += 1;
                    state = if left == 1 { State::Str { key } } else { State::Unicode { key, left: left - 1 } };
                }
                _ if is_ws(b) && !matches!(state, State::Num(_) | State::Literal { .. }) => {
                    // A run of whitespace (indentation) at once.
                    while chunk.get(i + 1).is_some_and(|b| is_ws(*b)) {
                        i += 1;
                    }
                }
                State::Value { first_in_array } => {
                    if b == b']' && first_in_array {
                        self.stack.pop();
                        state = self.after_value();
                    } else {
                        self.value()?;
                        state = match b {
                            b'{' => {
                                self.open(true)?;
                                State::KeyOrEnd
                            }
                            b'[' => {
                                self.open(false)?;
                                State::Value { first_in_array: true }
                            }
                            b'"' => {
                                self.string_len = 0;
                                State::Str { key: false }
                            }
                            b'-' => State::Num(NumStep::Sign),
                            b'0' => State::Num(NumStep::Zero),
                            b'1'..=b'9' => State::Num(NumStep::Int),
                            b't' => State::Literal { rest: b"rue" },
                            b'f' => State::Literal { rest: b"alse" },
                            b'n' => State::Literal { rest: b"ull" },
                            _ => return Err(self.malformed("a value expected", i)),
                        };
                    }
                }
                State::KeyOrEnd | State::Key => match b {
                    b'"' => {
                        if let Some(top) = self.stack.last_mut() {
                            top.count += 1;
                            if top.count > self.limits.max_keys {
                                return Err(JsonError::Limit(
                                    "an object with too many members",
                                    self.limits.max_keys.into(),
                                ));
                            }
                        }
                        self.string_len = 0;
                        state = State::Str { key: true };
                    }
                    b'}' if state == State::KeyOrEnd => {
                        self.stack.pop();
                        state = self.after_value();
                    }
                    _ => return Err(self.malformed("a member name expected", i)),
                },
                State::Colon => match b {
                    b':' => state = State::Value { first_in_array: false },
                    _ => return Err(self.malformed("`:` expected", i)),
                },
                State::After => {
                    let object = self.stack.last().is_some_and(|f| f.object);
                    match (b, object) {
                        (b',', true) => state = State::Key,
                        (b',', false) => state = State::Value { first_in_array: false },
                        (b'}', true) | (b']', false) => {
                            self.stack.pop();
                            state = self.after_value();
                        }
                        _ => return Err(self.malformed("`,` or the end of the container expected", i)),
                    }
                }
                State::Num(step) => {
                    let next = match (step, b) {
                        (NumStep::Sign, b'0') => Some(NumStep::Zero),
                        (NumStep::Sign, b'1'..=b'9') => Some(NumStep::Int),
                        (NumStep::Int, b'0'..=b'9') => Some(NumStep::Int),
                        (NumStep::Zero | NumStep::Int, b'.') => Some(NumStep::Dot),
                        (NumStep::Dot | NumStep::Frac, b'0'..=b'9') => Some(NumStep::Frac),
                        (NumStep::Zero | NumStep::Int | NumStep::Frac, b'e' | b'E') => Some(NumStep::Exp),
                        (NumStep::Exp, b'+' | b'-') => Some(NumStep::ExpSign),
                        (NumStep::Exp | NumStep::ExpSign | NumStep::ExpDigits, b'0'..=b'9') => Some(NumStep::ExpDigits),
                        _ => None,
                    };
                    match next {
                        Some(n @ (NumStep::Int | NumStep::Frac | NumStep::ExpDigits)) => {
                            // The rest of a run of digits at once.
                            while chunk.get(i + 1).is_some_and(u8::is_ascii_digit) {
                                i += 1;
                            }
                            state = State::Num(n);
                        }
                        Some(n) => state = State::Num(n),
                        None if matches!(step, NumStep::Zero | NumStep::Int | NumStep::Frac | NumStep::ExpDigits) => {
                            // The number ended; this byte belongs to what follows.
                            state = self.after_value();
                            continue;
                        }
                        None => return Err(self.malformed("an invalid number", i)),
                    }
                }
                State::Literal { rest } => {
                    if rest.first() != Some(&b) {
                        return Err(self.malformed("an invalid literal", i));
                    }
                    state = if rest.len() == 1 { self.after_value() } else { State::Literal { rest: &rest[1..] } };
                }
                State::Done => return Err(self.malformed("data after the document", i)),
            }
            i += 1;
        }
        self.state = state;
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// The body ended: `Err` if the document is not complete.
    pub fn finish(mut self) -> Result<(), JsonError> {
        if let State::Num(NumStep::Zero | NumStep::Int | NumStep::Frac | NumStep::ExpDigits) = self.state
            && self.stack.is_empty()
        {
            self.state = State::Done;
        }
        match self.state {
            State::Done => Ok(()),
            _ => Err(JsonError::Malformed("the document ends early", self.offset)),
        }
    }
}

#[cfg(test)]
mod tests;
