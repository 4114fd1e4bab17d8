//! NumPy's `.npy` files (format versions 1, 2 and 3) read straight into shared-memory
//! blocks and written straight out of them, for the Appose dtypes.
//!
//! A file is the magic `\x93NUMPY`, a version, a header length (2 bytes in version 1,
//! 4 bytes after), and an ASCII (version 3: UTF-8) Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (7, 512, 512), }`, padded with
//! spaces and a newline to a multiple of 64 bytes; the raw elements follow.
//!
//! Only C order and native byte order are accepted, since Appose arrays are exactly that:
//! a Fortran-order or byte-swapped file is a clear error, not a silent copy.
#![deny(unsafe_code)]

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::array::{n_bytes, DType, NDArray};
use super::ShmError;

/// Why a `.npy` file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// Reading or writing a stream failed.
    #[error("npy i/o: {0}")]
    Io(#[from] io::Error),
    /// Opening, reading or writing the file `path` failed ([`load`], [`save`]).
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The bytes are not a `.npy` file.
    #[error("not a .npy file: {0}")]
    Format(String),
    /// A valid `.npy` file that Appose arrays cannot hold.
    #[error("unsupported .npy file: {0}")]
    Unsupported(String),
    /// A [`NpyError::Format`] or [`NpyError::Unsupported`] error of the file `path`
    /// ([`load`]).
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<NpyError>,
    },
    /// The shared-memory block could not be made.
    #[error(transparent)]
    Shm(#[from] ShmError),
}

/// The header of a `.npy` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The element type.
    pub dtype: DType,
    /// The shape, in C order.
    pub shape: Vec<usize>,
}

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Reads a `.npy` file into a new block.
///
/// # Errors
/// [`NpyError::File`]; [`NpyError::InFile`] around [`NpyError::Format`] (a short file
/// included) or [`NpyError::Unsupported`] (Fortran order, a byte order that is not native,
/// a dtype Appose does not name); and [`NpyError::Shm`].
pub fn load(path: impl AsRef<Path>) -> Result<NDArray, NpyError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|err| NpyError::Io(err).in_file(path))?;
    read(BufReader::new(file)).map_err(|err| err.in_file(path))
}

/// Writes `array` as a version 1 `.npy` file (version 2 if the header needs it).
///
/// # Errors
/// [`NpyError::Io`].
pub fn save(array: &NDArray, path: impl AsRef<Path>) -> Result<(), NpyError> {
    let path = path.as_ref();
    let written = File::create(path).map_err(NpyError::Io).and_then(|file| {
        let mut out = BufWriter::new(file);
        write(array, &mut out)?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        Ok(())
    });
    written.map_err(|err| err.in_file(path))
}

impl NpyError {
    /// An error about the file's bytes or I/O becomes one that names `path`
    /// ([`NpyError::File`], [`NpyError::InFile`]); a shared-memory error is kept.
    fn in_file(self, path: &Path) -> NpyError {
        match self {
            NpyError::Io(source) => NpyError::File {
                path: path.to_owned(),
                source,
            },
            err @ (NpyError::Format(_) | NpyError::Unsupported(_)) => NpyError::InFile {
                path: path.to_owned(),
                source: Box::new(err),
            },
            other => other,
        }
    }
}

/// Reads a `.npy` stream into a new block: the elements go from the reader straight into
/// shared memory.
///
/// # Errors
/// As [`load`].
pub fn read(mut reader: impl Read) -> Result<NDArray, NpyError> {
    let header = read_header(&mut reader)?;
    let mut array = NDArray::create(header.dtype, &header.shape)?;
    reader.read_exact(array.as_mut_bytes()).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            NpyError::Format(format!(
                "the file ends before the {} bytes of data its header announces",
                array.n_bytes()
            ))
        } else {
            NpyError::Io(err)
        }
    })?;
    Ok(array)
}

/// Writes `array` as a `.npy` stream.
///
/// # Errors
/// [`NpyError::Io`].
pub fn write(array: &NDArray, mut writer: impl Write) -> Result<(), NpyError> {
    writer.write_all(&encode_header(array.dtype(), array.shape()))?;
    writer.write_all(array.as_bytes())?;
    writer.flush()?;
    Ok(())
}

/// Reads and checks the magic, version and header; leaves `reader` at the first element.
///
/// # Errors
/// As [`load`].
pub fn read_header(mut reader: impl Read) -> Result<Header, NpyError> {
    let mut preamble = [0u8; 8];
    reader.read_exact(&mut preamble).map_err(short)?;
    if &preamble[..6] != MAGIC {
        return Err(NpyError::Format("no \\x93NUMPY magic".to_owned()));
    }
    let header_len = match preamble[6] {
        1 => {
            let mut len = [0u8; 2];
            reader.read_exact(&mut len).map_err(short)?;
            usize::from(u16::from_le_bytes(len))
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).map_err(short)?;
            usize::try_from(u32::from_le_bytes(len))
                .map_err(|_| NpyError::Format("header length".to_owned()))?
        }
        major => {
            return Err(NpyError::Unsupported(format!(
                "format version {major}.{}",
                preamble[7]
            )))
        }
    };
    if header_len > 1 << 20 {
        return Err(NpyError::Format(format!("a header of {header_len} bytes")));
    }
    let mut text = vec![0u8; header_len];
    reader.read_exact(&mut text).map_err(short)?;
    let text = String::from_utf8(text)
        .map_err(|_| NpyError::Format("the header is not text".to_owned()))?;
    parse_header(&text)
}

/// The bytes of a header for `dtype` and `shape`: version 1, or 2 when longer than 64 KiB.
pub fn encode_header(dtype: DType, shape: &[usize]) -> Vec<u8> {
    let shape_text = match shape {
        [single] => format!("({single},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}",
        descr(dtype)
    );
    let (version, len_bytes) = if dict.len() + 64 > usize::from(u16::MAX) {
        (2u8, 4)
    } else {
        (1u8, 2)
    };
    // Pad with spaces so that magic + version + length + dict + '\n' is a multiple of 64.
    let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = Vec::with_capacity(unpadded + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(dict.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out
}

/// The numpy type string of `dtype` in native byte order.
fn descr(dtype: DType) -> String {
    let (kind, size) = match dtype {
        DType::Bool => return "|b1".to_owned(),
        DType::Int8 => return "|i1".to_owned(),
        DType::Uint8 => return "|u1".to_owned(),
        DType::Int16 | DType::Int32 | DType::Int64 => ('i', dtype.itemsize()),
        DType::Uint16 | DType::Uint32 | DType::Uint64 => ('u', dtype.itemsize()),
        DType::Float32 | DType::Float64 => ('f', dtype.itemsize()),
        DType::Complex64 | DType::Complex128 => ('c', dtype.itemsize()),
    };
    format!("{NATIVE}{kind}{size}")
}

#[cfg(target_endian = "little")]
const NATIVE: char = '<';
#[cfg(target_endian = "big")]
const NATIVE: char = '>';

/// The dtype of a numpy type string such as `<f4`, `|b1` or `=i8`.
fn dtype_of(descr: &str) -> Result<DType, NpyError> {
    let mut chars = descr.chars();
    let (order, rest) = match chars.next() {
        Some(order @ ('<' | '>' | '|' | '=')) => (order, chars.as_str()),
        _ => ('=', descr),
    };
    let dtype = match rest {
        "b1" | "?" => DType::Bool,
        "i1" => DType::Int8,
        "u1" => DType::Uint8,
        "i2" => DType::Int16,
        "u2" => DType::Uint16,
        "i4" => DType::Int32,
        "u4" => DType::Uint32,
        "i8" => DType::Int64,
        "u8" => DType::Uint64,
        "f4" => DType::Float32,
        "f8" => DType::Float64,
        "c8" => DType::Complex64,
        "c16" => DType::Complex128,
        _ => {
            return Err(NpyError::Unsupported(format!(
                "dtype {descr:?} (Appose arrays are int8..int64, uint8..uint64, float32, float64, complex64, complex128 or bool)"
            )))
        }
    };
    let native = order == '=' || order == NATIVE || dtype.itemsize() == 1;
    if !native {
        return Err(NpyError::Unsupported(format!(
            "byte order of {descr:?} is not this machine's ({NATIVE}); convert it with numpy's astype(dtype.newbyteorder('='))"
        )));
    }
    Ok(dtype)
}

/// Parses the header dict: `descr`, `fortran_order` and `shape`, in any order.
fn parse_header(text: &str) -> Result<Header, NpyError> {
    let bad = |what: &str| NpyError::Format(format!("header {text:?}: {what}"));
    let mut parser = Literal {
        text: text.trim_end(),
        pos: 0,
    };
    parser.expect('{').ok_or_else(|| bad("not a dict"))?;
    let (mut dtype, mut fortran, mut shape) = (None, None, None);
    loop {
        parser.skip_blank();
        if parser.eat('}') {
            break;
        }
        let key = parser
            .string()
            .ok_or_else(|| bad("a key is not a string"))?;
        parser
            .expect(':')
            .ok_or_else(|| bad("no ':' after a key"))?;
        match key.as_str() {
            "descr" => {
                let descr = parser
                    .string()
                    .ok_or_else(|| NpyError::Unsupported("a structured dtype".to_owned()))?;
                dtype = Some(dtype_of(&descr)?);
            }
            "fortran_order" => {
                fortran = Some(parser.boolean().ok_or_else(|| bad("fortran_order"))?);
            }
            "shape" => shape = Some(parser.shape().map_err(|what| bad(&what))?),
            _ => return Err(bad(&format!("unexpected key {key:?}"))),
        }
        parser.skip_blank();
        if !parser.eat(',') {
            parser.expect('}').ok_or_else(|| bad("no '}'"))?;
            break;
        }
    }
    if fortran.ok_or_else(|| bad("no fortran_order"))? {
        return Err(NpyError::Unsupported(
            "Fortran order (Appose arrays are C order); save it with numpy.ascontiguousarray"
                .to_owned(),
        ));
    }
    let dtype = dtype.ok_or_else(|| bad("no descr"))?;
    let shape = shape.ok_or_else(|| bad("no shape"))?;
    if n_bytes(dtype, &shape).is_none() {
        return Err(bad("the shape is too large"));
    }
    Ok(Header { dtype, shape })
}

/// A tiny reader of the Python literals a header holds.
struct Literal<'a> {
    text: &'a str,
    pos: usize,
}

impl Literal<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_blank(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, ch: char) -> bool {
        self.skip_blank();
        if self.rest().starts_with(ch) {
            self.pos += ch.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, ch: char) -> Option<()> {
        self.eat(ch).then_some(())
    }

    /// A quoted string without escapes (dtype strings and keys have none).
    fn string(&mut self) -> Option<String> {
        self.skip_blank();
        let quote = self
            .rest()
            .chars()
            .next()
            .filter(|ch| *ch == '\'' || *ch == '"')?;
        let body = &self.rest()[1..];
        let end = body.find(quote)?;
        let value = body[..end].to_owned();
        if value.contains('\\') {
            return None;
        }
        self.pos += 1 + end + 1;
        Some(value)
    }

    fn boolean(&mut self) -> Option<bool> {
        self.skip_blank();
        for (word, value) in [("True", true), ("False", false)] {
            if self.rest().starts_with(word) {
                self.pos += word.len();
                return Some(value);
            }
        }
        None
    }

    /// A shape: a tuple of non-negative integers, `()`, `(3,)`, `(2, 3)`; the error says
    /// which dimension is wrong and what it holds.
    fn shape(&mut self) -> Result<Vec<usize>, String> {
        if !self.eat('(') {
            return Err("the shape is not a tuple".to_owned());
        }
        let mut dims = Vec::new();
        loop {
            if self.eat(')') {
                return Ok(dims);
            }
            self.skip_blank();
            let dim_idx = dims.len();
            // The dimension's text runs to the next ',' or ')'.
            let token_len = self.rest().find([',', ')']).unwrap_or(self.rest().len());
            let token = self.rest()[..token_len].trim_end();
            // Python 2 era files write `3L`.
            let number = token.strip_suffix('L').unwrap_or(token);
            let magnitude = number.strip_prefix('-').unwrap_or(number);
            if magnitude.is_empty() || !magnitude.bytes().all(|byte| byte.is_ascii_digit()) {
                let shown: String = token.chars().take(40).collect();
                return Err(format!(
                    "dimension {dim_idx} of the shape is {shown:?}, not an integer"
                ));
            }
            if number.starts_with('-') {
                return Err(format!(
                    "dimension {dim_idx} of the shape is {number}, and a dimension cannot be negative"
                ));
            }
            let dim = number.parse().map_err(|_| {
                format!("dimension {dim_idx} of the shape is {number}, too large for this machine")
            })?;
            self.pos += token_len;
            dims.push(dim);
            if !self.eat(',') {
                if !self.eat(')') {
                    return Err("the shape's tuple is not closed".to_owned());
                }
                return Ok(dims);
            }
        }
    }
}

fn short(err: io::Error) -> NpyError {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        NpyError::Format("the file ends inside the header".to_owned())
    } else {
        NpyError::Io(err)
    }
}

#[cfg(test)]
mod tests;
