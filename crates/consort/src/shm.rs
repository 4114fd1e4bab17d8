//! Named shared-memory blocks that Python's `multiprocessing.shared_memory` and Appose's
//! `SharedMemory` attach to, with explicit ownership.
//!
//! A block is a POSIX shared-memory object named `/psm_<8 hex>`, created 0600, mapped
//! shared. On the wire it is Appose's flat object `{"appose_type":"shm","name":"psm_…",
//! "rsize":N}` (the older `size` key is accepted too).
//!
//! # Invariants
//! 1. Only the creator unlinks, and only when its handle is dropped without
//!    [`SharedMemory::keep`]. Attaching never unlinks.
//! 2. A name reaches `shm_open` only after [`validate_name`]: no `/`, no `..`, no NUL.
//! 3. `rsize` never exceeds the mapped size: an attach whose wire `rsize` does not fit
//!    the object is an error, never an out-of-bounds view.
//! 4. Every block [`SharedMemory::create`] makes is recorded in the creator [`registry`]
//!    before it exists and forgotten after it is unlinked, so a creator that dies leaves a
//!    record that `registry::gc` can act on.
//! 5. A block named by a worker is taken over (unlinked later) only through
//!    [`SharedMemory::adopt`], which trusts the caller, or [`Claim::take`], which checks
//!    that the worker made it for the task.
//!
//! Submodules:
//! - [`array`](mod@array): [`NDArray`] and [`DType`], zero-copy `ndarray` views of a block.
//! - [`claim`]: [`Claim`], taking over only the blocks a worker made for a task.
//! - [`npy`]: NumPy's `.npy` files into and out of blocks.
//! - [`registry`]: who created which block, for `consort shm ls` and `consort shm gc`.
//!
//! `unsafe` lives here (`mmap`) and in `array` (typed views of the mapping); the other
//! submodules deny it.
#![allow(unsafe_code)]

pub mod array;
pub mod claim;
pub mod npy;
pub mod registry;

use std::fmt;
use std::fs::File;

use memmap2::{MmapMut, MmapOptions};
use rustix::fs::Mode;
use rustix::shm::OFlags;
use serde_json::{json, Value};

pub use array::{DType, Element, NDArray};
pub use claim::{Claim, ClaimError, Refusal};
pub use ndarray;
pub use num_complex;

/// Why a shared-memory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// The name cannot be a block name.
    #[error("invalid shared-memory name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No block has this name.
    #[error("no shared-memory block named {0:?}")]
    NotFound(String),
    /// The block is smaller than the size it was described with.
    #[error("shared-memory block {name:?} has {size} bytes, fewer than the {rsize} expected")]
    SizeMismatch {
        /// The block's name.
        name: String,
        /// The size it was described with.
        rsize: usize,
        /// Its actual size.
        size: usize,
    },
    /// A block must have at least one byte (as in Python).
    #[error("a shared-memory block needs a size of at least 1 byte")]
    ZeroSize,
    /// A JSON value is not a shared-memory descriptor.
    #[error("not a shared-memory descriptor: {0}")]
    BadDescriptor(String),
    /// A dtype name that is not one of Appose's.
    #[error("unknown dtype {0:?} (expected one of int8, int16, int32, int64, uint8, uint16, uint32, uint64, float32, float64, complex64, complex128, bool)")]
    UnknownDType(String),
    /// An n-d array's shape needs more bytes than its block holds, or overflows.
    #[error("an ndarray of dtype {dtype} and shape {shape:?} needs {needed} bytes, but its block {name:?} has {rsize}")]
    ShapeMismatch {
        /// The block's name.
        name: String,
        /// The element type.
        dtype: DType,
        /// The shape, in C order.
        shape: Vec<usize>,
        /// The bytes the shape needs (`usize::MAX` when the product overflows).
        needed: usize,
        /// The bytes the block offers.
        rsize: usize,
    },
    /// A view was asked for with an element type that is not the array's dtype.
    #[error("the array holds {actual}, not {requested}")]
    DTypeMismatch {
        /// The array's dtype.
        actual: DType,
        /// The element type of the view asked for.
        requested: DType,
    },
    /// A `bool` array holds a byte that is neither 0 nor 1, which Rust's `bool` cannot hold.
    #[error("the bool array in {name:?} holds the byte {byte} at offset {offset}; only 0 and 1 are booleans")]
    InvalidBool {
        /// The block's name.
        name: String,
        /// Where the byte is.
        offset: usize,
        /// Its value.
        byte: u8,
    },
    /// The operating system refused.
    #[error("shared memory {op} {name:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The block's name.
        name: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// A mapped shared-memory block.
///
/// # Caveats
/// Other processes may write the block while it is mapped here; [`SharedMemory::as_slice`]
/// and [`SharedMemory::as_mut_slice`] give plain byte views, so coordinating access
/// (who writes when) is the caller's protocol, as with numpy arrays over the same memory.
pub struct SharedMemory {
    name: String,
    rsize: usize,
    map: MmapMut,
    unlink_on_drop: bool,
    /// The creator-registry record of a block this handle created, until it is unlinked.
    record: Option<registry::Record>,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name)
            .field("rsize", &self.rsize)
            .field("size", &self.map.len())
            .field("unlink_on_drop", &self.unlink_on_drop)
            .finish()
    }
}

/// Checks that `name` can name a block: 1 to 30 characters from `[A-Za-z0-9_.-]`, not
/// `.` or `..`, with no leading slash (the wire form).
///
/// # Errors
/// [`ShmError::InvalidName`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<(), ShmError> {
    let invalid = |reason| {
        Err(ShmError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > 30 {
        return invalid("it is longer than 30 characters (macOS allows 31 with the slash)");
    }
    if name.contains('/') {
        return invalid("it contains '/'");
    }
    if name == "." || name == ".." || name.contains("..") {
        return invalid("it contains '..'");
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'))
    {
        return invalid("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

impl SharedMemory {
    /// Creates a new block of `rsize` bytes, zeroed, named `psm_<8 random hex>`; it is
    /// unlinked when this handle is dropped, unless [`SharedMemory::keep`] is called.
    ///
    /// The block is 0600 whatever the umask, its memory is reserved up front where the
    /// system allows (so a full `/dev/shm` fails here, not with SIGBUS on first touch), and
    /// it is recorded in the creator [`registry`] with this process's id.
    ///
    /// # Errors
    /// [`ShmError::ZeroSize`], or [`ShmError::Io`] when the system refuses.
    ///
    /// # Caveats
    /// Only processes of the same user can attach (mode 0600, as in Python).
    /// A registry that cannot be written is logged and skipped: the block still works, but
    /// `consort shm ls` will not show it.
    pub fn create(rsize: usize) -> Result<SharedMemory, ShmError> {
        if rsize == 0 {
            return Err(ShmError::ZeroSize);
        }
        for _ in 0..64 {
            let random = crate::sys::random_u64().map_err(|source| ShmError::Io {
                op: "naming",
                name: String::new(),
                source,
            })?;
            let name = format!("psm_{:08x}", random as u32);
            // The record comes first, so that no block of ours ever exists unrecorded.
            let record = match registry::Record::begin(&name, rsize) {
                Ok(record) => Some(record),
                Err(registry::BeginError::Taken) => continue,
                Err(registry::BeginError::Unavailable(err)) => {
                    tracing::warn!("shared memory {name:?} will not be in the registry: {err}");
                    None
                }
            };
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR;
            let fd = match rustix::shm::open(format!("/{name}").as_str(), flags, Mode::from(0o600))
            {
                Ok(fd) => fd,
                Err(err) => {
                    if let Some(record) = record {
                        record.remove();
                    }
                    if err == rustix::io::Errno::EXIST {
                        continue;
                    }
                    return Err(io_error("create", &name, err));
                }
            };
            // From here on the object exists: unlink it if we fail to set it up.
            let block = set_up(&File::from(fd), &name, rsize);
            return match block {
                Ok((map, ino)) => {
                    let record = record.map(|mut record| {
                        record.commit(ino);
                        record
                    });
                    Ok(SharedMemory {
                        name,
                        rsize,
                        map,
                        unlink_on_drop: true,
                        record,
                    })
                }
                Err(err) => {
                    let _ = rustix::shm::unlink(format!("/{name}").as_str());
                    if let Some(record) = record {
                        record.remove();
                    }
                    Err(err)
                }
            };
        }
        Err(ShmError::Io {
            op: "create",
            name: "psm_*".to_owned(),
            source: std::io::Error::other("64 random names in a row were taken"),
        })
    }

    /// Attaches to an existing block; its whole size is mapped and `rsize` is that size.
    /// Never unlinks it.
    ///
    /// # Errors
    /// [`ShmError::InvalidName`], [`ShmError::NotFound`], or [`ShmError::Io`].
    pub fn attach(name: &str) -> Result<SharedMemory, ShmError> {
        validate_name(name)?;
        let file = open_existing(name)?;
        let size = file_size(&file, name)?;
        if size == 0 {
            return Err(ShmError::SizeMismatch {
                name: name.to_owned(),
                rsize: 1,
                size: 0,
            });
        }
        Ok(SharedMemory {
            name: name.to_owned(),
            rsize: size,
            map: map(&file, name, size)?,
            unlink_on_drop: false,
            record: None,
        })
    }

    /// Attaches to a block described on the wire (`{"appose_type":"shm",...}`), checking
    /// that its `rsize` (or legacy `size`) fits the object.
    ///
    /// # Errors
    /// [`ShmError::BadDescriptor`] for a value that is not one, and those of
    /// [`SharedMemory::attach`] and [`ShmError::SizeMismatch`].
    pub fn from_json(value: &Value) -> Result<SharedMemory, ShmError> {
        let (name, rsize) = parse_descriptor(value)?;
        let mut block = SharedMemory::attach(name)?;
        if rsize > block.map.len() {
            return Err(ShmError::SizeMismatch {
                name: name.to_owned(),
                rsize,
                size: block.map.len(),
            });
        }
        block.rsize = rsize;
        Ok(block)
    }

    /// The descriptor Appose puts on the wire.
    pub fn to_json(&self) -> Value {
        json!({"appose_type": "shm", "name": self.name, "rsize": self.rsize})
    }

    /// The name, without the leading slash (the wire form).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The requested size: the bytes the views cover.
    pub fn rsize(&self) -> usize {
        self.rsize
    }

    /// The mapped size (at least `rsize`; page-rounded on macOS).
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// The first `rsize` bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.map[..self.rsize]
    }

    /// The first `rsize` bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map[..self.rsize]
    }

    /// Whether dropping this handle unlinks the block.
    pub fn is_owner(&self) -> bool {
        self.unlink_on_drop
    }

    /// Keeps the block after this handle is dropped: someone else will unlink it.
    ///
    /// A kept block that consort created stays in the creator registry, marked kept:
    /// `consort shm ls` shows it, and `registry::gc` leaves it alone unless asked to
    /// include kept blocks.
    pub fn keep(&mut self) {
        self.unlink_on_drop = false;
        if let Some(record) = self.record.take() {
            record.mark_kept();
        }
    }

    /// Takes charge of a block attached by name: this handle unlinks it when dropped.
    ///
    /// This is how a service takes ownership of a block a worker created and handed over
    /// (Appose's rule: the service cleans up, the worker never does).
    ///
    /// # Caveats
    /// Nothing is checked: a worker could name any block this process may unlink. To take
    /// over only what the worker made for the task, use [`Claim::take`].
    pub fn adopt(&mut self) {
        self.unlink_on_drop = true;
    }

    /// Removes the block named `name` (mapped views elsewhere stay valid until unmapped).
    ///
    /// # Errors
    /// [`ShmError::InvalidName`], [`ShmError::NotFound`], or [`ShmError::Io`].
    ///
    /// A creator-registry record of the block, if any, is removed too.
    pub fn unlink(name: &str) -> Result<(), ShmError> {
        validate_name(name)?;
        let unlinked = rustix::shm::unlink(format!("/{name}").as_str()).map_err(|err| match err {
            rustix::io::Errno::NOENT => ShmError::NotFound(name.to_owned()),
            err => io_error("unlink", name, err),
        });
        registry::forget(name);
        unlinked
    }
}

impl serde::Serialize for SharedMemory {
    /// Serializes as the wire descriptor, so a block can be a task input as it is.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            if let Err(err) = rustix::shm::unlink(format!("/{}", self.name).as_str()) {
                tracing::warn!("unlinking shared memory {:?}: {err}", self.name);
            }
            // The record goes after the block: a crash in between leaves a record whose
            // block is gone, which `gc` clears, never a block without a record.
            match self.record.take() {
                Some(record) => record.remove(),
                None => registry::forget(&self.name),
            }
        }
    }
}

/// Sizes a freshly created object, makes it 0600, reserves its memory and maps it; returns
/// the mapping and the object's inode number (for the registry).
fn set_up(file: &File, name: &str, rsize: usize) -> Result<(MmapMut, u64), ShmError> {
    let os_error = |op| move |err: rustix::io::Errno| io_error(op, name, err);
    // The umask may have cleared bits of 0600 or the platform may ignore the mode: set it.
    rustix::fs::fchmod(file, Mode::from(0o600)).map_err(os_error("chmod"))?;
    file.set_len(rsize as u64).map_err(|source| ShmError::Io {
        op: "resize",
        name: name.to_owned(),
        source,
    })?;
    #[cfg(target_os = "linux")]
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, rsize as u64) {
        // Some file systems cannot reserve: then a full disk shows on first touch, as in
        // Python.
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
        Err(err) => return Err(io_error("reserve", name, err)),
    }
    let ino = rustix::fs::fstat(file).map_err(os_error("stat"))?.st_ino;
    Ok((map(file, name, rsize)?, ino as u64))
}

/// The name and `rsize` (or legacy `size`) of a wire descriptor, unchecked.
fn parse_descriptor(value: &Value) -> Result<(&str, usize), ShmError> {
    let object = value
        .as_object()
        .filter(|object| object.get("appose_type").and_then(Value::as_str) == Some("shm"))
        .ok_or_else(|| ShmError::BadDescriptor(value.to_string()))?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ShmError::BadDescriptor(format!("no string \"name\" in {value}")))?;
    let rsize = object
        .get("rsize")
        .or_else(|| object.get("size"))
        .and_then(Value::as_u64)
        .and_then(|rsize| usize::try_from(rsize).ok())
        .ok_or_else(|| ShmError::BadDescriptor(format!("no \"rsize\" in {value}")))?;
    Ok((name, rsize))
}

/// Opens the existing block `name` (already validated) for reading and writing.
fn open_existing(name: &str) -> Result<File, ShmError> {
    let fd = rustix::shm::open(format!("/{name}").as_str(), OFlags::RDWR, Mode::empty()).map_err(
        |err| match err {
            rustix::io::Errno::NOENT => ShmError::NotFound(name.to_owned()),
            err => io_error("attach", name, err),
        },
    )?;
    Ok(File::from(fd))
}

/// The size of an open block, as a `usize`.
fn file_size(file: &File, name: &str) -> Result<usize, ShmError> {
    let size = file
        .metadata()
        .map_err(|source| ShmError::Io {
            op: "stat",
            name: name.to_owned(),
            source,
        })?
        .len();
    usize::try_from(size).map_err(|_| ShmError::SizeMismatch {
        name: name.to_owned(),
        rsize: usize::MAX,
        size: usize::MAX,
    })
}

fn io_error(op: &'static str, name: &str, err: rustix::io::Errno) -> ShmError {
    ShmError::Io {
        op,
        name: name.to_owned(),
        source: err.into(),
    }
}

fn map(file: &File, name: &str, len: usize) -> Result<MmapMut, ShmError> {
    // SAFETY: `file` is a shared-memory object of at least `len` bytes (we sized it in
    // `create`, or read its size with fstat in `attach`), so the mapping never touches
    // pages beyond the object. Other processes may write these bytes while they are mapped:
    // the views expose them as `u8`, for which every bit pattern is valid, and the type's
    // caveat leaves coordinating writers to the caller, as memmap2's own docs do.
    let map = unsafe { MmapOptions::new().len(len).map_mut(file) };
    map.map_err(|source| ShmError::Io {
        op: "map",
        name: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests;
