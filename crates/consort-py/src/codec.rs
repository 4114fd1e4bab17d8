//! Keys and values as bytes: a tagged binary encoding for None, bool, int (any size), float,
//! str (lone surrogates included), bytes and tuples of them, and pickle for anything else.
//!
//! A key must mean the same in every process whatever `PYTHONHASHSEED` is, so nothing here
//! uses Python's `hash()`: the encoding is the key, and consort-cache hashes its bytes.
//! Types are taken exactly (`type(x) is int`, not `isinstance`), so `1`, `1.0` and `True`
//! are three keys, and a subclass (an `IntEnum`, a `str` subclass) goes through pickle and
//! comes back as itself.
//!
//! ```text
//! PICKLE 0x00 pickle bytes (protocol 5)     NONE 0x01   FALSE 0x02   TRUE 0x03
//! INT    0x04 i64 LE                        BIGINT 0x05 u32 LE length, two's complement LE
//! FLOAT  0x06 f64 bits LE                   STR 0x07 u32 LE length, UTF-8
//! WTF8   0x08 u32 LE length, UTF-8 with surrogates ("surrogatepass"; only for str that
//!             UTF-8 cannot encode, so a str has one encoding)
//! BYTES  0x09 u32 LE length, bytes          TUPLE 0x0A u32 LE count, then the items
//! KWARGS 0x0B u32 LE count, then (STR name, item) pairs sorted by name: a call's keywords
//! FROZENSET 0x0C / SET 0x0D  u32 LE count, then the items' encodings sorted bytewise
//! ```
//!
//! Sets are encoded in a canonical order (their items' encodings, sorted), because their
//! iteration order, and so their pickle, changes with `PYTHONHASHSEED`. A pickled key is
//! only as stable as pickle's bytes: a set inside a list, say, is not.
//!
//! Tuples nest up to [`MAX_DEPTH`]; deeper, or holding anything else, the whole key (or
//! value) is pickled. Decoding checks every length against the bytes it has: a corrupt
//! entry gives a `ValueError`, never a read past the end.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PySet, PyString, PyTuple};

const TAG_PICKLE: u8 = 0x00;
const TAG_NONE: u8 = 0x01;
const TAG_FALSE: u8 = 0x02;
const TAG_TRUE: u8 = 0x03;
const TAG_INT: u8 = 0x04;
const TAG_BIGINT: u8 = 0x05;
const TAG_FLOAT: u8 = 0x06;
const TAG_STR: u8 = 0x07;
const TAG_WTF8: u8 = 0x08;
const TAG_BYTES: u8 = 0x09;
const TAG_TUPLE: u8 = 0x0A;
const TAG_KWARGS: u8 = 0x0B;
const TAG_FROZENSET: u8 = 0x0C;
const TAG_SET: u8 = 0x0D;

/// How deep tuples nest before the encoding gives up and pickles.
pub(crate) const MAX_DEPTH: usize = 32;

/// The pickle protocol of every pickled key and value: fixed, so a key pickled by one
/// Python version means the same to another that reads the same cache.
const PICKLE_PROTOCOL: u8 = 5;

/// Bytes kept on the stack before a [`Buf`] moves to the heap.
const INLINE: usize = 128;

/// An output buffer that stays on the stack for small keys (most are).
pub(crate) struct Buf {
    inline: [u8; INLINE],
    len: usize,
    heap: Vec<u8>,
}

impl Buf {
    pub(crate) fn new() -> Buf {
        Buf {
            inline: [0; INLINE],
            len: 0,
            heap: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.heap
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        if self.heap.is_empty() {
            self.len
        } else {
            self.heap.len()
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if self.heap.is_empty() {
            if let Some(end) = self.len.checked_add(bytes.len()).filter(|&e| e <= INLINE) {
                self.inline[self.len..end].copy_from_slice(bytes);
                self.len = end;
                return;
            }
            self.heap.reserve(self.len + bytes.len());
            self.heap.extend_from_slice(&self.inline[..self.len]);
        }
        self.heap.extend_from_slice(bytes);
    }

    /// Like `push`, for a fixed-size piece: the copy is a few moves, not a `memcpy` call.
    #[inline(always)]
    fn push_array<const N: usize>(&mut self, bytes: [u8; N]) {
        if self.heap.is_empty() && self.len + N <= INLINE {
            self.inline[self.len..self.len + N].copy_from_slice(&bytes);
            self.len += N;
        } else {
            self.push(&bytes);
        }
    }

    #[inline(always)]
    fn byte(&mut self, byte: u8) {
        self.push_array([byte]);
    }

    fn truncate(&mut self, len: usize) {
        if self.heap.is_empty() {
            self.len = len;
        } else if len <= INLINE {
            self.inline[..len].copy_from_slice(&self.heap[..len]);
            self.len = len;
            self.heap = Vec::new();
        } else {
            self.heap.truncate(len);
        }
    }
}

/// `len` as the encoding's u32 length, or `None` when it does not fit (then: pickle).
#[inline]
fn len32(len: usize) -> Option<[u8; 4]> {
    u32::try_from(len).ok().map(u32::to_le_bytes)
}

/// Encodes `obj` (tagged when it can, else pickled) into `out`.
///
/// # Errors
/// `TypeError` naming the type when pickle refuses the object.
pub(crate) fn encode(py: Python<'_>, obj: &Bound<'_, PyAny>, out: &mut Buf) -> PyResult<()> {
    let start = out.len();
    if !tagged(obj, out, 0)? {
        out.truncate(start);
        pickled(py, obj, out)?;
    }
    Ok(())
}

/// Encodes a call's arguments as one key: the positional arguments as a tuple, then the
/// keywords (sorted by name) when there are any. Pickled as `(args, sorted items)` when an
/// argument has no tagged encoding.
pub(crate) fn encode_call(
    py: Python<'_>,
    args: &Bound<'_, PyTuple>,
    kwargs: Option<&Bound<'_, PyDict>>,
    out: &mut Buf,
) -> PyResult<()> {
    let start = out.len();
    let kwargs = kwargs.filter(|kw| !kw.is_empty());
    if tagged_tuple(args, out, 0)? && kwargs.is_none_or(|kw| tagged_kwargs(kw, out)) {
        return Ok(());
    }
    out.truncate(start);
    let key = match kwargs {
        None => args.clone().into_any(),
        Some(kw) => {
            let items = kw.items();
            items.sort()?;
            PyTuple::new(py, [args.as_any().clone(), items.into_any()])?.into_any()
        }
    };
    pickled(py, &key, out)
}

/// The key of a call with positional arguments only, as [`encode_call`] makes it for the
/// tuple of `args`, when every argument has a tagged encoding: `Ok(false)`, with `out` as it
/// was, when one has not (the caller then makes the tuple and calls `encode_call`, which
/// pickles it).
#[inline]
pub(crate) fn encode_positional<'a, 'py: 'a>(
    args: impl ExactSizeIterator<Item = Borrowed<'a, 'py, PyAny>>,
    out: &mut Buf,
) -> PyResult<bool> {
    let start = out.len();
    let Some(c) = len32(args.len()) else {
        return Ok(false);
    };
    out.push_array([TAG_TUPLE, c[0], c[1], c[2], c[3]]);
    for item in args {
        if !tagged(&item, out, 1)? {
            out.truncate(start);
            return Ok(false);
        }
    }
    Ok(true)
}

/// Sorted `(name, value)` pairs under the KWARGS tag; `false` if a value has no tagged
/// encoding.
fn tagged_kwargs(kwargs: &Bound<'_, PyDict>, out: &mut Buf) -> bool {
    let mut items: Vec<(String, Bound<'_, PyAny>)> = Vec::with_capacity(kwargs.len());
    for (name, value) in kwargs.iter() {
        let Ok(name) = name.extract::<String>() else {
            return false;
        };
        items.push((name, value));
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let Some(count) = len32(items.len()) else {
        return false;
    };
    out.byte(TAG_KWARGS);
    out.push(&count);
    for (name, value) in &items {
        let Some(len) = len32(name.len()) else {
            return false;
        };
        out.byte(TAG_STR);
        out.push(&len);
        out.push(name.as_bytes());
        if !matches!(tagged(value, out, 1), Ok(true)) {
            return false;
        }
    }
    true
}

/// The tagged encoding of `obj`; `Ok(false)` (with `out` partly written: the caller
/// truncates) when some part has none.
fn tagged(obj: &Bound<'_, PyAny>, out: &mut Buf, depth: usize) -> PyResult<bool> {
    // The most common argument first; each check is one compare of the type pointer.
    if obj.is_exact_instance_of::<PyInt>() {
        match obj.extract::<i64>() {
            Ok(value) => {
                let b = value.to_le_bytes();
                out.push_array([TAG_INT, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            }
            Err(_) => return big_int(obj, out),
        }
    } else if obj.is_none() {
        out.byte(TAG_NONE);
    } else if obj.is_exact_instance_of::<PyBool>() {
        out.byte(if obj.is_truthy()? {
            TAG_TRUE
        } else {
            TAG_FALSE
        });
    } else if obj.is_exact_instance_of::<PyFloat>() {
        let value: f64 = obj.extract()?;
        let b = value.to_bits().to_le_bytes();
        out.push_array([TAG_FLOAT, b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    } else if obj.is_exact_instance_of::<PyString>() {
        let text = obj.cast::<PyString>()?;
        match text.to_str() {
            Ok(text) => {
                let Some(len) = len32(text.len()) else {
                    return Ok(false);
                };
                out.byte(TAG_STR);
                out.push(&len);
                out.push(text.as_bytes());
            }
            // Lone surrogates (e.g. `os.fsdecode` of a non-UTF-8 name): UTF-8 refuses them,
            // "surrogatepass" keeps them, under a tag of their own.
            Err(_) => {
                let bytes = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
                let bytes = bytes.cast::<PyBytes>()?.as_bytes();
                let Some(len) = len32(bytes.len()) else {
                    return Ok(false);
                };
                out.byte(TAG_WTF8);
                out.push(&len);
                out.push(bytes);
            }
        }
    } else if obj.is_exact_instance_of::<PyBytes>() {
        let bytes = obj.cast::<PyBytes>()?.as_bytes();
        let Some(len) = len32(bytes.len()) else {
            return Ok(false);
        };
        out.byte(TAG_BYTES);
        out.push(&len);
        out.push(bytes);
    } else if obj.is_exact_instance_of::<PyTuple>() {
        if depth >= MAX_DEPTH {
            return Ok(false);
        }
        return tagged_tuple(obj.cast::<PyTuple>()?, out, depth);
    } else if obj.is_exact_instance_of::<PyFrozenSet>() || obj.is_exact_instance_of::<PySet>() {
        if depth >= MAX_DEPTH {
            return Ok(false);
        }
        let tag = if obj.is_exact_instance_of::<PySet>() {
            TAG_SET
        } else {
            TAG_FROZENSET
        };
        let mut items = Vec::new();
        for item in obj.try_iter()? {
            let mut encoded = Buf::new();
            if !tagged(&item?, &mut encoded, depth + 1)? {
                return Ok(false);
            }
            items.push(encoded.as_slice().to_vec());
        }
        items.sort_unstable();
        let Some(count) = len32(items.len()) else {
            return Ok(false);
        };
        out.byte(tag);
        out.push(&count);
        for item in &items {
            out.push(item);
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// A tuple's items under the TUPLE tag, each borrowed (no reference counting).
#[inline]
fn tagged_tuple(tuple: &Bound<'_, PyTuple>, out: &mut Buf, depth: usize) -> PyResult<bool> {
    let len = tuple.len();
    let Some(c) = len32(len) else {
        return Ok(false);
    };
    out.push_array([TAG_TUPLE, c[0], c[1], c[2], c[3]]);
    for index in 0..len {
        let item = tuple.get_borrowed_item(index)?;
        if !tagged(&item, out, depth + 1)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// An int beyond i64: its two's complement bytes, little-endian, as few as hold it.
fn big_int(obj: &Bound<'_, PyAny>, out: &mut Buf) -> PyResult<bool> {
    let bits: usize = obj.call_method0("bit_length")?.extract()?;
    let len = bits / 8 + 1;
    // `to_bytes(signed=True)`: abi3 has no direct call for it.
    let kwargs = PyDict::new(obj.py());
    kwargs.set_item("signed", true)?;
    let bytes = obj.call_method("to_bytes", (len, "little"), Some(&kwargs))?;
    let bytes = bytes.cast::<PyBytes>()?.as_bytes();
    let Some(len) = len32(bytes.len()) else {
        return Ok(false);
    };
    out.byte(TAG_BIGINT);
    out.push(&len);
    out.push(bytes);
    Ok(true)
}

/// The pickle module's `dumps` and `loads`, looked up once.
fn pickle(py: Python<'_>) -> PyResult<&(Py<PyAny>, Py<PyAny>)> {
    static PICKLE: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
    PICKLE.get_or_try_init(py, || {
        let module = py.import("pickle")?;
        Ok((
            module.getattr("dumps")?.unbind(),
            module.getattr("loads")?.unbind(),
        ))
    })
}

/// `PICKLE` and `pickle.dumps(obj, 5)` into `out`.
///
/// # Errors
/// `TypeError("cannot pickle ...")` with pickle's own error as the cause.
fn pickled(py: Python<'_>, obj: &Bound<'_, PyAny>, out: &mut Buf) -> PyResult<()> {
    let (dumps, _) = pickle(py)?;
    let bytes = dumps
        .bind(py)
        .call1((obj, PICKLE_PROTOCOL))
        .map_err(|err| {
            let type_name = obj
                .get_type()
                .fully_qualified_name()
                .map_or_else(|_| "?".to_owned(), |name| name.to_string());
            let error = PyTypeError::new_err(format!(
                "cannot store a {type_name} in a shared cache: it has no built-in encoding \
                 and pickle refuses it ({err})"
            ));
            error.set_cause(py, Some(err));
            error
        })?;
    out.byte(TAG_PICKLE);
    out.push(bytes.cast::<PyBytes>()?.as_bytes());
    Ok(())
}

/// Decodes one whole encoded value.
///
/// # Errors
/// `ValueError` when the bytes are not an encoding (a corrupt entry, or one another program
/// wrote), or whatever `pickle.loads` raises.
pub(crate) fn decode<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    if data.first() == Some(&TAG_PICKLE) {
        let (_, loads) = pickle(py)?;
        return loads.bind(py).call1((PyBytes::new(py, &data[1..]),));
    }
    let mut rest = data;
    let value = decode_one(py, &mut rest, 0)?;
    if !rest.is_empty() {
        return Err(not_an_encoding("bytes after the value"));
    }
    Ok(value)
}

fn not_an_encoding(what: &str) -> PyErr {
    PyValueError::new_err(format!(
        "the cached bytes are not a consort encoding: {what}"
    ))
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> PyResult<&'a [u8]> {
    if rest.len() < n {
        return Err(not_an_encoding("truncated"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_len(rest: &mut &[u8]) -> PyResult<usize> {
    let bytes = take(rest, 4)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize)
}

fn decode_one<'py>(py: Python<'py>, rest: &mut &[u8], depth: usize) -> PyResult<Bound<'py, PyAny>> {
    let tag = take(rest, 1)?[0];
    Ok(match tag {
        TAG_NONE => py.None().into_bound(py),
        TAG_FALSE => PyBool::new(py, false).to_owned().into_any(),
        TAG_TRUE => PyBool::new(py, true).to_owned().into_any(),
        TAG_INT => {
            let bytes: [u8; 8] = take(rest, 8)?.try_into().expect("8 bytes");
            i64::from_le_bytes(bytes).into_pyobject(py)?.into_any()
        }
        TAG_BIGINT => {
            let len = take_len(rest)?;
            let bytes = PyBytes::new(py, take(rest, len)?);
            let kwargs = PyDict::new(py);
            kwargs.set_item("signed", true)?;
            py.get_type::<PyInt>()
                .call_method("from_bytes", (bytes, "little"), Some(&kwargs))?
        }
        TAG_FLOAT => {
            let bytes: [u8; 8] = take(rest, 8)?.try_into().expect("8 bytes");
            PyFloat::new(py, f64::from_bits(u64::from_le_bytes(bytes))).into_any()
        }
        TAG_STR => {
            let len = take_len(rest)?;
            let text = std::str::from_utf8(take(rest, len)?)
                .map_err(|_| not_an_encoding("a str that is not UTF-8"))?;
            PyString::new(py, text).into_any()
        }
        TAG_WTF8 => {
            let len = take_len(rest)?;
            PyBytes::new(py, take(rest, len)?).call_method1("decode", ("utf-8", "surrogatepass"))?
        }
        TAG_BYTES => {
            let len = take_len(rest)?;
            PyBytes::new(py, take(rest, len)?).into_any()
        }
        TAG_TUPLE if depth < MAX_DEPTH => {
            let count = take_len(rest)?;
            if count > rest.len() {
                return Err(not_an_encoding("a tuple longer than its bytes"));
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_one(py, rest, depth + 1)?);
            }
            PyTuple::new(py, items)?.into_any()
        }
        TAG_FROZENSET | TAG_SET if depth < MAX_DEPTH => {
            let count = take_len(rest)?;
            if count > rest.len() {
                return Err(not_an_encoding("a set longer than its bytes"));
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_one(py, rest, depth + 1)?);
            }
            if tag == TAG_SET {
                PySet::new(py, items)?.into_any()
            } else {
                PyFrozenSet::new(py, items)?.into_any()
            }
        }
        TAG_KWARGS => return Err(not_an_encoding("a call's keywords are a key, not a value")),
        _ => return Err(not_an_encoding("an unknown tag")),
    })
}
