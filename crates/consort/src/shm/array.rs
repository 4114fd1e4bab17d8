//! n-d arrays in shared memory, as Appose's `NDArray`: a dtype, a C-order shape and a block,
//! with zero-copy [`ndarray`] views of the right element type.
//!
//! On the wire an array is Appose's flat object
//! `{"appose_type":"ndarray","dtype":"float32","shape":[2,3,4],"shm":{"appose_type":"shm",...}}`.
//! The data starts at offset 0 of the block, in C order (last axis fastest), in native byte
//! order, as numpy's `ndarray(prod(shape), dtype, buffer=shm.buf).reshape(shape)` reads it.
//!
//! # Invariants
//! 1. An [`NDArray`] exists only if `prod(shape) * itemsize` fits in its block's `rsize`
//!    (checked without overflow in [`NDArray::new`], the one constructor the others use).
//! 2. A view of element type `T` is handed out only when `T` is the array's dtype, and a
//!    `bool` view only after every byte was checked to be 0 or 1.
//! 3. Views start at the mapping's first byte, which is page-aligned, so they are aligned
//!    for every element type.
#![allow(unsafe_code)]

use std::fmt;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn};
use num_complex::Complex;
use serde_json::{json, Value};

use super::{SharedMemory, ShmError};

/// An element type that Appose names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// `int8`.
    Int8,
    /// `int16`.
    Int16,
    /// `int32`.
    Int32,
    /// `int64`.
    Int64,
    /// `uint8`.
    Uint8,
    /// `uint16`.
    Uint16,
    /// `uint32`.
    Uint32,
    /// `uint64`.
    Uint64,
    /// `float32`.
    Float32,
    /// `float64`.
    Float64,
    /// `complex64`: two `float32`, real then imaginary.
    Complex64,
    /// `complex128`: two `float64`, real then imaginary.
    Complex128,
    /// `bool`: one byte, 0 or 1.
    Bool,
}

impl DType {
    /// Every dtype, in Appose's documented order.
    pub const ALL: [DType; 13] = [
        DType::Int8,
        DType::Uint8,
        DType::Int16,
        DType::Uint16,
        DType::Int32,
        DType::Uint32,
        DType::Int64,
        DType::Uint64,
        DType::Float32,
        DType::Float64,
        DType::Complex64,
        DType::Complex128,
        DType::Bool,
    ];

    /// The name on the wire, as numpy spells it (`"float32"`).
    pub fn name(self) -> &'static str {
        match self {
            DType::Int8 => "int8",
            DType::Int16 => "int16",
            DType::Int32 => "int32",
            DType::Int64 => "int64",
            DType::Uint8 => "uint8",
            DType::Uint16 => "uint16",
            DType::Uint32 => "uint32",
            DType::Uint64 => "uint64",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Complex64 => "complex64",
            DType::Complex128 => "complex128",
            DType::Bool => "bool",
        }
    }

    /// The dtype with this wire name.
    ///
    /// # Errors
    /// [`ShmError::UnknownDType`] for any other name (numpy's `"<f4"` or `"float16"` too:
    /// Appose's other implementations do not know them either).
    pub fn from_name(name: &str) -> Result<DType, ShmError> {
        DType::ALL
            .into_iter()
            .find(|dtype| dtype.name() == name)
            .ok_or_else(|| ShmError::UnknownDType(name.to_owned()))
    }

    /// The size of one element in bytes.
    pub fn itemsize(self) -> usize {
        match self {
            DType::Int8 | DType::Uint8 | DType::Bool => 1,
            DType::Int16 | DType::Uint16 => 2,
            DType::Int32 | DType::Uint32 | DType::Float32 => 4,
            DType::Int64 | DType::Uint64 | DType::Float64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is the element type of one [`DType`]; implemented for the 13 of them
/// (`Complex<f32>` and `Complex<f64>` for the complex ones) and for nothing else.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The dtype whose elements are `Self`.
    const DTYPE: DType;
}

mod sealed {
    /// Keeps [`super::Element`] closed: every implementation must be valid for any bytes
    /// (or, for `bool`, be checked), have no padding, and need no more than page alignment.
    pub trait Sealed {}
}

macro_rules! element {
    ($($ty:ty => $dtype:ident),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl Element for $ty {
            const DTYPE: DType = DType::$dtype;
        }
    )*};
}

element! {
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    f32 => Float32, f64 => Float64,
    Complex<f32> => Complex64, Complex<f64> => Complex128,
    bool => Bool,
}

/// An n-d array in a shared-memory block: dtype, C-order shape, block.
///
/// # Caveats
/// As for [`SharedMemory`], another process may write the memory while a view is alive;
/// who writes when is the caller's protocol. A `bool` view is checked when made, so a
/// process that writes bytes other than 0 and 1 into a `bool` array while a view is alive
/// breaks that protocol.
pub struct NDArray {
    dtype: DType,
    shape: Vec<usize>,
    shm: SharedMemory,
}

impl fmt::Debug for NDArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NDArray")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("shm", &self.shm)
            .finish()
    }
}

impl NDArray {
    /// Wraps `shm` as an array of `dtype` and `shape` (C order).
    ///
    /// # Errors
    /// [`ShmError::ShapeMismatch`] when the shape needs more than the block's `rsize`.
    pub fn new(dtype: DType, shape: &[usize], shm: SharedMemory) -> Result<NDArray, ShmError> {
        let needed = n_bytes(dtype, shape).unwrap_or(usize::MAX);
        if needed > shm.rsize() {
            return Err(ShmError::ShapeMismatch {
                name: shm.name().to_owned(),
                dtype,
                shape: shape.to_vec(),
                needed,
                rsize: shm.rsize(),
            });
        }
        Ok(NDArray {
            dtype,
            shape: shape.to_vec(),
            shm,
        })
    }

    /// Creates a zeroed array in a new block of exactly the bytes it needs (one byte for
    /// an empty array, as a block cannot be empty); the block is owned, see
    /// [`SharedMemory::create`].
    ///
    /// # Errors
    /// [`ShmError::ShapeMismatch`] when the size overflows, and those of
    /// [`SharedMemory::create`].
    pub fn create(dtype: DType, shape: &[usize]) -> Result<NDArray, ShmError> {
        let needed = n_bytes(dtype, shape).ok_or_else(|| ShmError::ShapeMismatch {
            name: String::new(),
            dtype,
            shape: shape.to_vec(),
            needed: usize::MAX,
            rsize: 0,
        })?;
        NDArray::new(dtype, shape, SharedMemory::create(needed.max(1))?)
    }

    /// Creates an array holding a copy of `array`, in C order.
    ///
    /// # Errors
    /// Those of [`NDArray::create`].
    pub fn from_array<T: Element>(array: ndarray::ArrayViewD<'_, T>) -> Result<NDArray, ShmError> {
        let mut created = NDArray::create(T::DTYPE, array.shape())?;
        created.view_mut::<T>()?.assign(&array);
        Ok(created)
    }

    /// Decodes Appose's `{"appose_type":"ndarray",...}` and attaches to its block.
    ///
    /// # Errors
    /// [`ShmError::BadDescriptor`] when the value is not an ndarray descriptor,
    /// [`ShmError::UnknownDType`], [`ShmError::ShapeMismatch`], and those of
    /// [`SharedMemory::from_json`].
    pub fn from_json(value: &Value) -> Result<NDArray, ShmError> {
        let object = value
            .as_object()
            .filter(|object| object.get("appose_type").and_then(Value::as_str) == Some("ndarray"))
            .ok_or_else(|| ShmError::BadDescriptor(value.to_string()))?;
        let dtype = match object.get("dtype") {
            Some(Value::String(name)) => DType::from_name(name)?,
            _ => {
                return Err(ShmError::BadDescriptor(format!(
                    "no string \"dtype\" in {value}"
                )))
            }
        };
        let shape = object
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|dims| {
                dims.iter()
                    .map(|dim| dim.as_u64().and_then(|dim| usize::try_from(dim).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or_else(|| {
                ShmError::BadDescriptor(format!(
                    "\"shape\" is not a list of non-negative integers in {value}"
                ))
            })?;
        let shm = object
            .get("shm")
            .ok_or_else(|| ShmError::BadDescriptor(format!("no \"shm\" in {value}")))?;
        NDArray::new(dtype, &shape, SharedMemory::from_json(shm)?)
    }

    /// The descriptor Appose puts on the wire.
    pub fn to_json(&self) -> Value {
        json!({
            "appose_type": "ndarray",
            "dtype": self.dtype.name(),
            "shape": self.shape,
            "shm": self.shm.to_json(),
        })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape, in C order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        // No overflow: `new` checked that the byte size fits in a `usize`.
        if self.shape.contains(&0) {
            0
        } else {
            self.shape.iter().product()
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the elements take.
    pub fn n_bytes(&self) -> usize {
        self.len() * self.dtype.itemsize()
    }

    /// The block holding the data.
    pub fn shm(&self) -> &SharedMemory {
        &self.shm
    }

    /// The block holding the data, for [`SharedMemory::keep`] or [`SharedMemory::adopt`].
    pub fn shm_mut(&mut self) -> &mut SharedMemory {
        &mut self.shm
    }

    /// Gives the block back.
    pub fn into_shm(self) -> SharedMemory {
        self.shm
    }

    /// The elements' bytes, in C order.
    pub fn as_bytes(&self) -> &[u8] {
        &self.shm.as_slice()[..self.n_bytes()]
    }

    /// The elements' bytes, writable.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        let n_bytes = self.n_bytes();
        &mut self.shm.as_mut_slice()[..n_bytes]
    }

    /// A zero-copy view of the elements as `T`.
    ///
    /// # Errors
    /// [`ShmError::DTypeMismatch`] when `T` is not the dtype's element type;
    /// [`ShmError::InvalidBool`] for a `bool` array holding a byte other than 0 or 1.
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>, ShmError> {
        self.check::<T>()?;
        let bytes = self.as_bytes();
        let ptr = bytes.as_ptr().cast::<T>();
        // SAFETY: `bytes` is `len() * size_of::<T>()` bytes long (`check` proved `T` is the
        // dtype's element type, whose itemsize is `size_of::<T>()`), lives as long as
        // `&self`, starts at the page-aligned mapping (invariant 3, checked by `check`), and
        // holds valid `T`s: every bit pattern is a valid integer, float or complex, and
        // `check` validated every byte of a `bool` array.
        let elements = unsafe { std::slice::from_raw_parts(ptr, self.len()) };
        ArrayViewD::from_shape(IxDyn(&self.shape), elements).map_err(shape_error)
    }

    /// A zero-copy writable view of the elements as `T`.
    ///
    /// # Errors
    /// As [`NDArray::view`].
    pub fn view_mut<T: Element>(&mut self) -> Result<ArrayViewMutD<'_, T>, ShmError> {
        self.check::<T>()?;
        let n_elements = self.len();
        let shape = self.shape.clone();
        let bytes = self.as_mut_bytes();
        let ptr = bytes.as_mut_ptr().cast::<T>();
        // SAFETY: as in `view`: `check` established the element type, size, alignment and
        // (for `bool`) validity; `bytes` is borrowed mutably from `&mut self`, so this is
        // the only reference into these bytes in this process while the view lives.
        let elements = unsafe { std::slice::from_raw_parts_mut(ptr, n_elements) };
        ArrayViewMutD::from_shape(IxDyn(&shape), elements).map_err(shape_error)
    }

    /// Checks that `T` may view this array (invariants 2 and 3).
    fn check<T: Element>(&self) -> Result<(), ShmError> {
        if T::DTYPE != self.dtype {
            return Err(ShmError::DTypeMismatch {
                actual: self.dtype,
                requested: T::DTYPE,
            });
        }
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.itemsize());
        let bytes = self.as_bytes();
        if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
            // A mapping is page-aligned: this cannot happen, but refuse rather than misread.
            return Err(ShmError::Io {
                op: "view",
                name: self.shm.name().to_owned(),
                source: std::io::Error::other("the mapping is not aligned for the dtype"),
            });
        }
        if self.dtype == DType::Bool {
            if let Some(offset) = bytes.iter().position(|byte| *byte > 1) {
                return Err(ShmError::InvalidBool {
                    name: self.shm.name().to_owned(),
                    offset,
                    byte: bytes[offset],
                });
            }
        }
        Ok(())
    }
}

/// `from_shape` cannot fail once `check` passed and the slice has `len()` elements; say so
/// anyway rather than panic.
fn shape_error(err: ndarray::ShapeError) -> ShmError {
    ShmError::Io {
        op: "view",
        name: String::new(),
        source: std::io::Error::other(err.to_string()),
    }
}

impl serde::Serialize for NDArray {
    /// Serializes as the wire descriptor, so an array can be a task input as it is.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

/// `prod(shape) * itemsize`, or `None` on overflow.
pub(crate) fn n_bytes(dtype: DType, shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape
        .iter()
        .try_fold(dtype.itemsize(), |total, dim| total.checked_mul(*dim))
}

#[cfg(test)]
mod tests;
