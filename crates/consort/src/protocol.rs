//! The Appose wire protocol: request and response types and the line codec, with no I/O.
//!
//! Requests (service → worker) and responses (worker → service) are JSON objects, one per
//! line. This module encodes them byte for byte as the Python reference does (compact,
//! ASCII-only, Python's float formatting, Python's key order), and decodes what real workers
//! actually write, which is not always one clean JSON object per line:
//!
//! - two responses on one line, or a response glued to the end of a `print()` without a
//!   newline (appose 0.12.0's worker writes the JSON and the newline separately, unlocked);
//! - `NaN`, `Infinity` and `-Infinity` (Python's `allow_nan=True`);
//! - integers beyond 64 bits, invalid UTF-8, CRLF line ends, a last line without a newline;
//! - values nested deeper than serde_json's recursion limit (128 levels), up to
//!   [`MAX_DEPTH`].
//!
//! # Invariants
//! 1. Decoding never fails as a whole: every byte of a line ends up in a [`Response`], in a
//!    [`Decoded::Undecodable`] or in a [`Decoded::Noise`] fragment.
//! 2. A JSON object that names a `task` and a `responseType` is never noise: it is a
//!    [`Response`], or an [`Decoded::Undecodable`] that says why it could not be one.
//! 3. Nothing here recurses deeper than serde_json's limit on the caller's stack: a line
//!    nested deeper is measured without recursion, and decoded on a thread whose stack is
//!    sized for it (see [`MAX_DEPTH`]).
//! 4. Decoding a line costs time linear in its length, whatever it holds.
//! 5. [`Framer`] never holds more than `max_line` bytes of one line, whatever the input.
//! 6. Encoded requests never contain a non-ASCII byte or a blank line (the Python worker
//!    takes a blank line as end of input).

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The inputs or outputs of a task: a JSON object.
pub type Args = Map<String, Value>;

/// Default bound on one line from a worker, in bytes (16 MiB).
pub const DEFAULT_MAX_LINE: usize = 16 << 20;

/// The deepest nesting a line may have, its own object counted as one level: a response or
/// a request nested deeper is not decoded, and the task it names fails with the reason.
///
/// serde_json stops at 128 levels; consort goes further, because Python's `json` writes
/// values up to about 1,000 levels deep. It stops here because a `serde_json::Value` is
/// dropped, cloned, compared and printed by recursion, on whatever thread holds it: 1,024
/// levels take about 1 MiB of stack to clone or print in a debug build (a quarter of that
/// optimised), within any thread's stack, where the 8 million levels a 16 MiB line can hold
/// would overflow all of them.
pub const MAX_DEPTH: usize = 1024;

/// The deepest value serde_json parses with its recursion limit on (it refuses the 128th
/// level); a deeper one is parsed on a thread of its own (`parse_deep`).
const SERDE_DEPTH: usize = 127;

/// A task identifier: an opaque string, unique per service.
///
/// consort generates 32 lowercase hex digits, as the Python service does (`uuid4().hex`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(String);

impl TaskId {
    /// Wraps an identifier received from a peer or chosen by the caller.
    pub fn new(id: impl Into<String>) -> TaskId {
        TaskId(id.into())
    }

    /// The identifier as it travels on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A fresh task id: this process's random prefix, then a rising serial, in 32 hex digits.
pub(crate) fn new_task_id() -> TaskId {
    static NEXT_TASK: AtomicU64 = AtomicU64::new(1);
    let serial = NEXT_TASK.fetch_add(1, Ordering::Relaxed);
    // As `format!("{:016x}{:016x}")`, without the formatting machinery (a tenth of a
    // round trip's instructions went there).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for word in [task_prefix(), serial] {
        for shift in (0..16).rev() {
            id.push(char::from(HEX[((word >> (shift * 4)) & 0xf) as usize]));
        }
    }
    TaskId(id)
}

/// A per-process random prefix, so task ids never collide across processes.
///
/// The standard library seeds each `RandomState` from the operating system's random source
/// (once per thread, then varied): hashing this process's id with one gives 64 random bits
/// without a system call of this module's own.
fn task_prefix() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    *PREFIX.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    })
}

/// A message from the service to the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Run `script` with `inputs` bound as variables.
    Execute {
        /// The new task's identifier.
        task: TaskId,
        /// The script, in the worker's language.
        script: String,
        /// Input values, each bound to a variable of the same name.
        inputs: Args,
        /// `Some("main")` runs the task on the worker's main thread; `None` on its own thread.
        queue: Option<String>,
    },
    /// Ask a running task to stop; the worker answers nothing by itself.
    Cancel {
        /// The task to cancel.
        task: TaskId,
    },
}

/// What a worker reports about a task.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseKind {
    /// The task started running.
    Launch,
    /// Progress; every field is optional.
    Update(Progress),
    /// The task finished with these outputs.
    Completion(Args),
    /// The script acknowledged a cancel request.
    Cancelation,
    /// The task failed; `None` when the script called `task.fail()` with no message.
    Failure(Option<String>),
}

/// The payload of an UPDATE response.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Progress {
    /// A status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Units of work done so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<i64>,
    /// Units of work in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<i64>,
    /// Any extra data the worker attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
}

/// A message from the worker to the service.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The task it is about.
    pub task: TaskId,
    /// What happened.
    pub kind: ResponseKind,
}

impl ResponseKind {
    /// The wire name, as in `"responseType":"UPDATE"`.
    pub fn wire_name(&self) -> &'static str {
        match self {
            ResponseKind::Launch => "LAUNCH",
            ResponseKind::Update(_) => "UPDATE",
            ResponseKind::Completion(_) => "COMPLETION",
            ResponseKind::Cancelation => "CANCELATION",
            ResponseKind::Failure(_) => "FAILURE",
        }
    }

    /// Whether this response ends its task (the first one to arrive wins).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, ResponseKind::Launch | ResponseKind::Update(_))
    }
}

/// One thing found on a worker's stdout line.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A well-formed response.
    Response(Response),
    /// A JSON object that names a task and a response type but cannot be decoded: nested
    /// deeper than [`MAX_DEPTH`], or not valid JSON. The task it names cannot get this
    /// response; a supervisor fails it with `reason`.
    Undecodable {
        /// The task it names.
        task: TaskId,
        /// The `responseType` it names, as written.
        response_type: String,
        /// Why it cannot be decoded, in a sentence that names the response type.
        reason: String,
        /// The object's text.
        text: String,
    },
    /// Text that is not a response: a stray `print()`, a JSON value without `task` and
    /// `responseType`, a response of an unknown type, or a truncated fragment.
    Noise(String),
}

// ---------------------------------------------------------------------------------------
// Encoding

impl Request {
    /// Encodes the request as one line, without the trailing newline.
    ///
    /// The bytes are what appose-python's service writes: compact separators, keys in the
    /// order `task, requestType, script, inputs, queue`, ASCII only, Python float syntax.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"task\":");
        match self {
            Request::Execute {
                task,
                script,
                inputs,
                queue,
            } => {
                write_json_str(&mut out, task.as_str());
                out.push_str(",\"requestType\":\"EXECUTE\",\"script\":");
                write_json_str(&mut out, script);
                out.push_str(",\"inputs\":");
                write_json_object(&mut out, inputs);
                out.push_str(",\"queue\":");
                match queue {
                    Some(queue) => write_json_str(&mut out, queue),
                    None => out.push_str("null"),
                }
            }
            Request::Cancel { task } => {
                write_json_str(&mut out, task.as_str());
                out.push_str(",\"requestType\":\"CANCEL\"");
            }
        }
        out.push('}');
        out
    }
}

impl Response {
    /// Encodes the response as one line, without the trailing newline.
    ///
    /// Payload keys come first, then `task` and `responseType`, as in appose's
    /// `python_worker` (`response = dict(args); response.update(task=..., responseType=...)`).
    /// An UPDATE always carries `info`, `null` when absent.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push('{');
        match &self.kind {
            ResponseKind::Launch | ResponseKind::Cancelation | ResponseKind::Failure(None) => {}
            ResponseKind::Update(progress) => {
                if let Some(message) = &progress.message {
                    out.push_str("\"message\":");
                    write_json_str(&mut out, message);
                    out.push(',');
                }
                if let Some(current) = progress.current {
                    let _ = write!(out, "\"current\":{current},");
                }
                if let Some(maximum) = progress.maximum {
                    let _ = write!(out, "\"maximum\":{maximum},");
                }
                out.push_str("\"info\":");
                match &progress.info {
                    Some(info) => write_json(&mut out, info),
                    None => out.push_str("null"),
                }
                out.push(',');
            }
            ResponseKind::Completion(outputs) => {
                out.push_str("\"outputs\":");
                write_json_object(&mut out, outputs);
                out.push(',');
            }
            ResponseKind::Failure(Some(error)) => {
                out.push_str("\"error\":");
                write_json_str(&mut out, error);
                out.push(',');
            }
        }
        out.push_str("\"task\":");
        write_json_str(&mut out, self.task.as_str());
        out.push_str(",\"responseType\":\"");
        out.push_str(self.kind.wire_name());
        out.push_str("\"}");
        out
    }
}

/// Writes `value` as Python's `json.dumps(value, separators=(",", ":"))` would.
pub fn write_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                let _ = write!(out, "{int}");
            } else if let Some(int) = number.as_u64() {
                let _ = write!(out, "{int}");
            } else if let Some(float) = number.as_f64() {
                write_python_float(out, float);
            }
        }
        Value::String(text) => write_json_str(out, text),
        Value::Array(items) => {
            out.push('[');
            for (idx, item) in items.iter().enumerate() {
                if idx > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_json_object(out, map),
    }
}

fn write_json_object(out: &mut String, map: &Args) {
    out.push('{');
    for (idx, (key, item)) in map.iter().enumerate() {
        if idx > 0 {
            out.push(',');
        }
        write_json_str(out, key);
        out.push(':');
        write_json(out, item);
    }
    out.push('}');
}

/// Writes a JSON string with Python's `ensure_ascii=True` escaping.
fn write_json_str(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(ch),
            _ => {
                // Everything else, control characters and non-ASCII alike, becomes \uXXXX,
                // astral characters as a surrogate pair, exactly as Python writes them.
                let mut units = [0u16; 2];
                for unit in ch.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Writes a finite float as Python's `repr(float)`: the shortest round-trip digits, in
/// positional notation when the decimal exponent is in `-4..16`, else `d.ddde+XX`.
fn write_python_float(out: &mut String, float: f64) {
    // serde_json numbers are always finite, but stay total anyway.
    if !float.is_finite() {
        out.push_str(if float.is_nan() {
            "NaN"
        } else if float > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        });
        return;
    }
    // Rust's `{:e}` prints the shortest round-trip digits: "-1.2345e302", "5e-324", "0e0".
    let scientific = format!("{float:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always prints an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` prints a decimal exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|ch| *ch != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exponent) {
        if exponent < 0 {
            out.push_str("0.");
            for _ in 0..(-exponent - 1) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let int_len = exponent as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                for _ in digits.len()..int_len {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Decoding

/// consort's heartbeat extension: the line a worker writes every few seconds when its
/// supervisor set [`HEARTBEAT_ENV`] (see `pool`). It names no task, so an Appose decoder
/// would call it noise; consort's supervisor swallows it. Appose's workers are never asked
/// for it.
pub const HEARTBEAT_LINE: &[u8] = b"{\"responseType\":\"HEARTBEAT\"}";

/// The environment variable that asks consort's own workers for [`HEARTBEAT_LINE`]: its
/// value is the interval in seconds. Appose's workers never see it, so they never see a
/// heartbeat.
pub const HEARTBEAT_ENV: &str = "CONSORT_HEARTBEAT_SECS";

/// Decodes one line from a worker's stdout into the responses and noise it holds.
///
/// The line may hold several JSON values back to back, with noise before, between or after
/// them. Decoding resynchronises at each `{` followed by `"`. Bytes that are not UTF-8 are
/// replaced by U+FFFD; `NaN`, `Infinity`, `-Infinity` and numbers beyond the range of
/// `f64` (Python writes `10**400` in full) decode as `null`, since JSON values cannot hold
/// them; lone UTF-16 surrogate escapes (Python writes them for undecodable file names)
/// decode as U+FFFD; other integers beyond 64 bits decode as the nearest float.
///
/// A line nested deeper than serde_json's limit is decoded on a thread of its own, up to
/// [`MAX_DEPTH`] levels; an object that names a task and a response type but is deeper
/// still, or is not valid JSON, is [`Decoded::Undecodable`].
pub fn decode_line(line: &[u8], out: &mut Vec<Decoded>) {
    let line = strip_line_end(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let text = String::from_utf8_lossy(line);
    let mark = out.len();
    // Only Python's non-finite tokens need care, and only when present.
    let text_finite = replace_non_finite(&text);
    // The fast path: the line is exactly one response, as nearly every line is.
    if let Some(response) = decode_single(&text_finite) {
        out.push(Decoded::Response(response));
        return;
    }
    if decode_text(&text_finite, false, out) {
        return;
    }
    // Some candidate did not parse: maybe noise, maybe a value serde_json refuses. Clean
    // those values up everywhere and decode the line again, once; what still fails then
    // is noise, too deep, or a response that is not valid JSON.
    out.truncate(mark);
    decode_text(&sanitize(&text), true, out);
}

/// The fields of a response, read straight from the text: no map is built for the
/// envelope (its hashing was most of a round trip's decoding cost).
#[derive(Deserialize)]
struct Envelope {
    task: Option<Value>,
    #[serde(rename = "responseType")]
    response_type: Option<Value>,
    message: Option<Value>,
    current: Option<Value>,
    maximum: Option<Value>,
    info: Option<Value>,
    outputs: Option<Value>,
    error: Option<Value>,
}

/// Decodes `text` as one response object, or returns `None` for anything else (several
/// objects, noise, a repeated key, an object that is not a response); the general path
/// then decides, so the result is the same, only faster for the common line.
fn decode_single(text: &str) -> Option<Response> {
    let envelope: Envelope = serde_json::from_str(text).ok()?;
    let (Some(Value::String(task)), Some(Value::String(kind))) =
        (envelope.task, envelope.response_type)
    else {
        return None;
    };
    let text_of = |value: Option<Value>| match value {
        Some(Value::String(text)) => Some(text),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let kind = match kind.as_str() {
        "LAUNCH" => ResponseKind::Launch,
        "UPDATE" => ResponseKind::Update(Progress {
            message: text_of(envelope.message),
            current: envelope.current.as_ref().and_then(json_int),
            maximum: envelope.maximum.as_ref().and_then(json_int),
            info: envelope.info.filter(|info| !info.is_null()),
        }),
        "COMPLETION" => match envelope.outputs {
            Some(Value::Object(outputs)) => ResponseKind::Completion(outputs),
            Some(Value::Null) | None => ResponseKind::Completion(Args::new()),
            Some(_) => return None,
        },
        "CANCELATION" => ResponseKind::Cancelation,
        "FAILURE" => ResponseKind::Failure(text_of(envelope.error)),
        _ => return None,
    };
    Some(Response {
        task: TaskId(task),
        kind,
    })
}

/// Decodes `text`; returns false if some `{"` candidate failed to parse. On the `last`
/// pass, a candidate that fails is looked at more closely (`salvage`): decoded if it is
/// only too deep for serde_json, else kept whole as undecodable if it names a task and a
/// response type.
fn decode_text(text: &str, last: bool, out: &mut Vec<Decoded>) -> bool {
    let mut clean = true;
    let mut pos = 0;
    let mut noise_start = 0;
    // What `salvage` may scan on this line in all, so that many failing candidates cost
    // linear time, not quadratic.
    let mut budget = 2 * text.len() + 4096;
    let last_response_type = text.rfind("\"responseType\"");
    while let Some(start) = next_candidate(text, pos) {
        let mut stream =
            serde_json::Deserializer::from_str(&text[start..]).into_iter::<Map<String, Value>>();
        let mut consumed = 0;
        let mut objects = Vec::new();
        let mut failure = None;
        loop {
            match stream.next() {
                Some(Ok(object)) => {
                    consumed = stream.byte_offset();
                    objects.push(object);
                }
                Some(Err(err)) => {
                    clean = false;
                    failure = Some(err);
                    break;
                }
                None => break,
            }
        }
        if objects.is_empty() {
            let salvaged = match failure {
                Some(err) if last => {
                    let may_name_response = last_response_type.is_some_and(|at| at > start);
                    salvage(&text[start..], &err, may_name_response, &mut budget)
                }
                _ => None,
            };
            if let Some((len, item)) = salvaged {
                push_noise(out, &text[noise_start..start]);
                out.push(item);
                pos = start + len;
                noise_start = pos;
                continue;
            }
            // Not JSON from here: look for the next candidate after this brace.
            pos = start + 1;
            continue;
        }
        push_noise(out, &text[noise_start..start]);
        for object in objects {
            match response_from_object(object) {
                Ok(response) => out.push(Decoded::Response(response)),
                Err(object) => out.push(Decoded::Noise(Value::Object(object).to_string())),
            }
        }
        pos = start + consumed;
        noise_start = pos;
    }
    push_noise(out, &text[noise_start..]);
    clean
}

/// Looks again at a candidate (`text` starts with its `{`) that serde_json refused with
/// `err`: returns how many bytes of `text` it takes, and what it is, or `None` to go on
/// looking for the next candidate inside it, as for any noise. `may_name_response`: a
/// `"responseType"` key appears somewhere after the candidate's start.
///
/// A candidate that serde_json refused for its depth is parsed again without the limit (up
/// to [`MAX_DEPTH`]); once it ends, it is taken whole either way, so no part of it is read
/// twice. A candidate that names a task and a response type at its top level is taken
/// whole as [`Decoded::Undecodable`] when it cannot be decoded.
fn salvage(
    text: &str,
    err: &serde_json::Error,
    may_name_response: bool,
    budget: &mut usize,
) -> Option<(usize, Decoded)> {
    // Refused for its depth: as deep as serde_json's limit where it stopped. (Garbage can
    // look deep further on, where serde_json never went.)
    let mut stopped_at = error_offset(text, err).saturating_add(1).min(text.len());
    while !text.is_char_boundary(stopped_at) {
        stopped_at += 1;
    }
    let mut prefix_budget = stopped_at;
    let deep = skim(&text[..stopped_at], &mut prefix_budget)
        .is_some_and(|prefix| prefix.depth > SERDE_DEPTH);
    if !deep && !may_name_response {
        return None;
    }
    let skim = skim(text, budget)?;
    let len = skim.end.unwrap_or(text.len());
    let object = &text[..len];
    let why = if !deep {
        format!("it is not valid JSON ({err})")
    } else if skim.depth > MAX_DEPTH {
        too_deep(skim.depth)
    } else {
        match parse_deep(object, skim.depth) {
            Ok(object) => {
                let item = match response_from_object(object) {
                    Ok(response) => Decoded::Response(response),
                    // Its text as written: printing a deep value again would recurse.
                    Err(_) => Decoded::Noise(text[..len].to_owned()),
                };
                return Some((len, item));
            }
            Err(why) => why,
        }
    };
    match (skim.task, skim.response_type) {
        (Some(task), Some(response_type)) => Some((
            len,
            Decoded::Undecodable {
                task: TaskId(task),
                reason: format!("the worker's {response_type} could not be decoded: {why}"),
                response_type,
                text: object.to_owned(),
            },
        )),
        // A whole object too deep to read, that is not a response: noise, in one piece.
        _ if deep && skim.end.is_some() => Some((len, Decoded::Noise(object.to_owned()))),
        _ => None,
    }
}

/// The byte offset in `text` of where serde_json's error `err` says it stopped.
fn error_offset(text: &str, err: &serde_json::Error) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(str::len)
        .sum();
    line_start.saturating_add(err.column()).min(text.len())
}

fn too_deep(depth: usize) -> String {
    format!("it is nested {depth} levels deep, over the limit of {MAX_DEPTH}")
}

/// What a JSON object says about itself without being parsed (see [`skim`]).
#[derive(Debug, PartialEq)]
struct Skim {
    /// How deep it nests, itself counted as one level.
    depth: usize,
    /// Where it ends (after its closing brace); `None` when it does not.
    end: Option<usize>,
    /// The `task` and `responseType` strings of its top level, when it has them.
    task: Option<String>,
    response_type: Option<String>,
}

/// Reads the object at the start of `text` without recursion and without checking its
/// syntax: how deep it nests, where it ends, and its top-level `task` and `responseType`
/// strings. Scans at most `budget` bytes, and takes them off it; `None` once it is spent.
fn skim(text: &str, budget: &mut usize) -> Option<Skim> {
    // Where the top level of the object is, between its tokens.
    #[derive(PartialEq)]
    enum Expect {
        Key,
        Colon,
        Value,
        Other,
    }
    let bytes = text.as_bytes();
    let limit = bytes.len().min(*budget);
    let mut skim = Skim {
        depth: 0,
        end: None,
        task: None,
        response_type: None,
    };
    let mut depth = 0usize;
    let mut expect = Expect::Other;
    let mut key: &str = "";
    let mut idx = 0;
    while idx < limit {
        match bytes[idx] {
            b'"' => {
                let mut close = idx + 1;
                while close < bytes.len() && bytes[close] != b'"' {
                    close += if bytes[close] == b'\\' { 2 } else { 1 };
                }
                if close >= bytes.len() {
                    // An unterminated string: the object never ends.
                    idx = bytes.len();
                    break;
                }
                let token = &text[idx..=close];
                if depth == 1 {
                    match expect {
                        Expect::Key => {
                            key = token;
                            expect = Expect::Colon;
                        }
                        Expect::Value => {
                            let slot = match key {
                                "\"task\"" => &mut skim.task,
                                "\"responseType\"" => &mut skim.response_type,
                                _ => &mut None,
                            };
                            *slot = serde_json::from_str(token).ok();
                            expect = Expect::Other;
                        }
                        _ => expect = Expect::Other,
                    }
                }
                idx = close + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                skim.depth = skim.depth.max(depth);
                expect = if depth == 1 {
                    Expect::Key
                } else {
                    Expect::Other
                };
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    skim.end = Some(idx + 1);
                    idx += 1;
                    break;
                }
            }
            b':' if depth == 1 && expect == Expect::Colon => expect = Expect::Value,
            b',' if depth == 1 => expect = Expect::Key,
            _ => {}
        }
        idx += 1;
    }
    if skim.end.is_none() && idx < bytes.len() {
        // The budget ran out before the object ended.
        *budget = 0;
        return None;
    }
    *budget -= idx.min(*budget);
    Some(skim)
}

/// Parses `text`, one JSON object nested `depth` levels deep (over serde_json's limit, at
/// most [`MAX_DEPTH`]), without the recursion limit, on a thread whose stack is sized for
/// the depth: the caller's stack, whatever it is, is never at risk.
fn parse_deep(text: &str, depth: usize) -> Result<Map<String, Value>, String> {
    // A debug build takes about 2.4 KiB of stack per level, an optimised one 0.4 KiB.
    let stack = 256 * 1024 + depth * 8 * 1024;
    let parse = || {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        deserializer.disable_recursion_limit();
        Map::<String, Value>::deserialize(&mut deserializer)
            .and_then(|object| deserializer.end().map(|()| object))
            .map_err(|err| format!("it is not valid JSON ({err})"))
    };
    std::thread::scope(|scope| {
        let parser = std::thread::Builder::new()
            .name("consort-deep-json".to_owned())
            .stack_size(stack)
            .spawn_scoped(scope, parse)
            .map_err(|err| {
                format!(
                    "it is nested {depth} levels deep, and no thread could be started to \
                     decode it ({err})"
                )
            })?;
        parser
            .join()
            .unwrap_or_else(|_| Err("decoding it panicked".to_owned()))
    })
}

/// The next `{` at or after `pos` whose next non-blank character is `"`.
fn next_candidate(text: &str, mut pos: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    while let Some(offset) = text[pos..].find('{') {
        let start = pos + offset;
        let next = bytes[start + 1..]
            .iter()
            .find(|byte| !byte.is_ascii_whitespace());
        if next == Some(&b'"') {
            return Some(start);
        }
        pos = start + 1;
    }
    None
}

/// Rewrites, outside strings, non-finite tokens and out-of-range numbers as `null`, and,
/// inside strings, unpaired surrogate escapes as `\ufffd`.
fn sanitize(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut idx = 0;
    let mut in_string = false;
    while idx < bytes.len() {
        let byte = bytes[idx];
        if in_string {
            match byte {
                b'"' => {
                    in_string = false;
                    idx += 1;
                }
                b'\\' if bytes.get(idx + 1) == Some(&b'u') => {
                    let unit = hex4(bytes, idx + 2);
                    match unit {
                        Some(0xD800..=0xDBFF)
                            if bytes.get(idx + 6) == Some(&b'\\')
                                && bytes.get(idx + 7) == Some(&b'u')
                                && matches!(hex4(bytes, idx + 8), Some(0xDC00..=0xDFFF)) =>
                        {
                            idx += 12;
                        }
                        Some(0xD800..=0xDFFF) => {
                            out.push_str(&text[copied..idx]);
                            out.push_str("\\ufffd");
                            idx += 6;
                            copied = idx;
                        }
                        _ => idx += 2,
                    }
                }
                b'\\' => idx += 2,
                _ => idx += 1,
            }
            continue;
        }
        if byte == b'"' {
            in_string = true;
            idx += 1;
            continue;
        }
        let word_before =
            idx > 0 && (bytes[idx - 1].is_ascii_alphanumeric() || bytes[idx - 1] == b'_');
        let token_len = if word_before {
            0
        } else if let Some(token) = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|token| bytes[idx..].starts_with(token))
        {
            token.len()
        } else if byte == b'-' || byte.is_ascii_digit() {
            let len = bytes[idx..]
                .iter()
                .position(|b| {
                    !(b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                })
                .unwrap_or(bytes.len() - idx);
            match text[idx..idx + len].parse::<f64>() {
                Ok(number) if number.is_infinite() => len,
                _ => {
                    idx += len.max(1);
                    continue;
                }
            }
        } else {
            0
        };
        let ends_word = bytes
            .get(idx + token_len)
            .is_some_and(|next| next.is_ascii_alphanumeric() || *next == b'_');
        if token_len == 0 || ends_word {
            idx += 1;
            continue;
        }
        out.push_str(&text[copied..idx]);
        out.push_str("null");
        idx += token_len;
        copied = idx;
    }
    out.push_str(&text[copied..]);
    out
}

fn hex4(bytes: &[u8], at: usize) -> Option<u32> {
    let digits = bytes.get(at..at + 4)?;
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

fn push_noise(out: &mut Vec<Decoded>, fragment: &str) {
    let fragment = fragment.trim();
    if !fragment.is_empty() {
        out.push(Decoded::Noise(fragment.to_owned()));
    }
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Replaces Python's non-standard `NaN`, `Infinity` and `-Infinity` tokens, outside string
/// literals, by `null`. Borrows when there is nothing to replace, which is almost always.
fn replace_non_finite(text: &str) -> std::borrow::Cow<'_, str> {
    if !(text.contains("NaN") || text.contains("Infinity")) {
        return std::borrow::Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut idx = 0;
    let mut copied = 0;
    while idx < bytes.len() {
        let byte = bytes[idx];
        if in_string {
            match byte {
                b'\\' => idx += 1,
                b'"' => in_string = false,
                _ => {}
            }
            idx += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            idx += 1;
            continue;
        }
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|token| bytes[idx..].starts_with(token));
        match token {
            // Only a whole token, not part of a word such as `NaNa` in noise.
            Some(token)
                if !bytes
                    .get(idx + token.len())
                    .is_some_and(|next| next.is_ascii_alphanumeric() || *next == b'_') =>
            {
                out.push_str(&text[copied..idx]);
                out.push_str("null");
                idx += token.len();
                copied = idx;
            }
            _ => idx += 1,
        }
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Interprets a JSON object as a response, or gives it back when it is not one.
fn response_from_object(mut object: Map<String, Value>) -> Result<Response, Map<String, Value>> {
    let (Some(Value::String(task)), Some(Value::String(kind))) =
        (object.get("task"), object.get("responseType"))
    else {
        return Err(object);
    };
    let task = TaskId(task.clone());
    let kind = match kind.as_str() {
        "LAUNCH" => ResponseKind::Launch,
        "UPDATE" => ResponseKind::Update(Progress {
            message: match object.remove("message") {
                Some(Value::String(message)) => Some(message),
                Some(Value::Null) | None => None,
                Some(other) => Some(other.to_string()),
            },
            current: object.get("current").and_then(json_int),
            maximum: object.get("maximum").and_then(json_int),
            info: object.remove("info").filter(|info| !info.is_null()),
        }),
        "COMPLETION" => match object.remove("outputs") {
            Some(Value::Object(outputs)) => ResponseKind::Completion(outputs),
            Some(Value::Null) | None => ResponseKind::Completion(Args::new()),
            Some(other) => {
                object.insert("outputs".to_owned(), other);
                return Err(object);
            }
        },
        "CANCELATION" => ResponseKind::Cancelation,
        "FAILURE" => ResponseKind::Failure(match object.remove("error") {
            Some(Value::String(error)) => Some(error),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        }),
        _ => return Err(object),
    };
    Ok(Response { task, kind })
}

/// Reads a progress number as Python's `int()` would: integers as they are, floats truncated.
fn json_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(number) => number
            .as_i64()
            .or_else(|| number.as_u64().map(|big| big.min(i64::MAX as u64) as i64))
            .or_else(|| number.as_f64().map(|float| float as i64)),
        _ => None,
    }
}

/// Decodes one request line, as a worker does.
///
/// # Errors
/// A message naming what is wrong with the line: not JSON, no `task`, an unknown
/// `requestType`, or inputs that are not an object. The task id is returned with the error
/// when the line had one, so a worker can fail that task instead of going deaf.
pub fn decode_request(line: &[u8]) -> Result<Request, (Option<TaskId>, String)> {
    let line = strip_line_end(line);
    let text = String::from_utf8_lossy(line);
    let text = replace_non_finite(&text);
    let mut object: Map<String, Value> = match serde_json::from_str(&text) {
        Ok(object) => object,
        Err(err) => decode_deep_request(&text, &err)?,
    };
    let task = match object.remove("task") {
        Some(Value::String(task)) => TaskId(task),
        _ => return Err((None, "request has no string \"task\" field".to_owned())),
    };
    match object.get("requestType").and_then(Value::as_str) {
        Some("EXECUTE") => {
            let script = match object.remove("script") {
                Some(Value::String(script)) => script,
                Some(Value::Null) | None => String::new(),
                Some(_) => return Err((Some(task), "\"script\" is not a string".to_owned())),
            };
            let inputs = match object.remove("inputs") {
                Some(Value::Object(inputs)) => inputs,
                Some(Value::Null) | None => Args::new(),
                Some(_) => return Err((Some(task), "\"inputs\" is not an object".to_owned())),
            };
            let queue = match object.remove("queue") {
                Some(Value::String(queue)) => Some(queue),
                _ => None,
            };
            Ok(Request::Execute {
                task,
                script,
                inputs,
                queue,
            })
        }
        Some("CANCEL") => Ok(Request::Cancel { task }),
        Some(other) => Err((Some(task), format!("unknown requestType {other:?}"))),
        None => Err((Some(task), "request has no \"requestType\"".to_owned())),
    }
}

/// A request serde_json refused with `err`: parsed again without the recursion limit if
/// it is only too deep for serde_json, else an error that names the task, when the request
/// has one, and what is wrong.
fn decode_deep_request(
    text: &str,
    err: &serde_json::Error,
) -> Result<Map<String, Value>, (Option<TaskId>, String)> {
    let not_an_object = || format!("request is not a JSON object: {err}");
    let object = text.trim_start();
    if !object.starts_with('{') {
        return Err((None, not_an_object()));
    }
    let mut budget = usize::MAX;
    let Some(skim) = skim(object, &mut budget) else {
        return Err((None, not_an_object()));
    };
    let task = skim.task.map(TaskId);
    if skim.depth > MAX_DEPTH {
        return Err((
            task,
            format!("request could not be decoded: {}", too_deep(skim.depth)),
        ));
    }
    let len = skim.end.unwrap_or(object.len());
    if skim.depth <= SERDE_DEPTH || !object[len..].trim().is_empty() {
        return Err((task, not_an_object()));
    }
    parse_deep(&object[..len], skim.depth)
        .map_err(|why| (task, format!("request could not be decoded: {why}")))
}

// ---------------------------------------------------------------------------------------
// Framing

/// Splits a byte stream into lines of at most `max_line` bytes.
///
/// Feed it whatever `read` returned with [`Framer::push`]; call [`Framer::finish`] at end
/// of input to get a last line that had no newline.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max_line: usize,
    /// Bytes of the current line dropped because it grew past `max_line`.
    discarding: Option<usize>,
}

/// A unit produced by [`Framer`].
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A whole line, newline excluded.
    Line(&'a [u8]),
    /// A line longer than the limit was dropped; `len` is its length once known, or
    /// the length seen so far at end of input.
    Oversize {
        /// The length of the dropped line, in bytes.
        len: usize,
    },
}

impl Framer {
    /// A framer that refuses lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Framer {
        Framer {
            buf: Vec::new(),
            max_line: max_line.max(1),
            discarding: None,
        }
    }

    /// Feeds bytes in; calls `sink` for each line they complete.
    pub fn push(&mut self, mut bytes: &[u8], mut sink: impl FnMut(Frame<'_>)) {
        while !bytes.is_empty() {
            let newline = memchr_newline(bytes);
            let (chunk, rest, complete) = match newline {
                Some(idx) => (&bytes[..idx], &bytes[idx + 1..], true),
                None => (bytes, &bytes[bytes.len()..], false),
            };
            bytes = rest;
            if let Some(dropped) = &mut self.discarding {
                *dropped += chunk.len();
                if complete {
                    let len = *dropped;
                    self.discarding = None;
                    sink(Frame::Oversize { len });
                }
                continue;
            }
            if self.buf.len() + chunk.len() > self.max_line {
                let len = self.buf.len() + chunk.len();
                self.buf = Vec::new();
                if complete {
                    sink(Frame::Oversize { len });
                } else {
                    self.discarding = Some(len);
                }
                continue;
            }
            if complete {
                if self.buf.is_empty() {
                    sink(Frame::Line(chunk));
                } else {
                    self.buf.extend_from_slice(chunk);
                    sink(Frame::Line(&self.buf));
                    self.buf.clear();
                }
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
    }

    /// Ends the stream: yields the unterminated last line, if any.
    pub fn finish(&mut self, mut sink: impl FnMut(Frame<'_>)) {
        if let Some(len) = self.discarding.take() {
            sink(Frame::Oversize { len });
        } else if !self.buf.is_empty() {
            sink(Frame::Line(&self.buf));
        }
        self.buf = Vec::new();
    }

    /// Bytes held for an incomplete line.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes dropped so far of a line that grew past `max_line` and has not ended: such a
    /// line is cut at the limit, and a reader can act on it now rather than at a newline
    /// that may never come. Its [`Frame::Oversize`] still comes at the newline.
    pub fn dropping(&self) -> Option<usize> {
        self.discarding
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|byte| *byte == b'\n')
}

#[cfg(test)]
mod tests;
