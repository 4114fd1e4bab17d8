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
#![allow(unsafe_code)]

use std::fmt;
use std::fs::File;

use memmap2::{MmapMut, MmapOptions};
use rustix::fs::Mode;
use rustix::shm::OFlags;
use serde_json::{json, Value};

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
    /// # Errors
    /// [`ShmError::ZeroSize`], or [`ShmError::Io`] when the system refuses.
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
            let flags = OFlags::CREATE | OFlags::EXCL | OFlags::RDWR;
            let fd = match rustix::shm::open(format!("/{name}").as_str(), flags, Mode::from(0o600))
            {
                Ok(fd) => fd,
                Err(rustix::io::Errno::EXIST) => continue,
                Err(err) => return Err(io_error("create", &name, err)),
            };
            let file = File::from(fd);
            // From here on the object exists: unlink it if we fail to set it up.
            let block = file
                .set_len(rsize as u64)
                .map_err(|source| ShmError::Io {
                    op: "resize",
                    name: name.clone(),
                    source,
                })
                .and_then(|()| map(&file, &name, rsize));
            return match block {
                Ok(map) => Ok(SharedMemory {
                    name,
                    rsize,
                    map,
                    unlink_on_drop: true,
                }),
                Err(err) => {
                    let _ = rustix::shm::unlink(format!("/{name}").as_str());
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
        let fd = rustix::shm::open(format!("/{name}").as_str(), OFlags::RDWR, Mode::empty())
            .map_err(|err| match err {
                rustix::io::Errno::NOENT => ShmError::NotFound(name.to_owned()),
                err => io_error("attach", name, err),
            })?;
        let file = File::from(fd);
        let size = file
            .metadata()
            .map_err(|source| ShmError::Io {
                op: "stat",
                name: name.to_owned(),
                source,
            })?
            .len();
        let size = usize::try_from(size).map_err(|_| ShmError::SizeMismatch {
            name: name.to_owned(),
            rsize: usize::MAX,
            size: usize::MAX,
        })?;
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
        })
    }

    /// Attaches to a block described on the wire (`{"appose_type":"shm",...}`), checking
    /// that its `rsize` (or legacy `size`) fits the object.
    ///
    /// # Errors
    /// [`ShmError::BadDescriptor`] for a value that is not one, and those of
    /// [`SharedMemory::attach`] and [`ShmError::SizeMismatch`].
    pub fn from_json(value: &Value) -> Result<SharedMemory, ShmError> {
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
    pub fn keep(&mut self) {
        self.unlink_on_drop = false;
    }

    /// Removes the block named `name` (mapped views elsewhere stay valid until unmapped).
    ///
    /// # Errors
    /// [`ShmError::InvalidName`], [`ShmError::NotFound`], or [`ShmError::Io`].
    pub fn unlink(name: &str) -> Result<(), ShmError> {
        validate_name(name)?;
        rustix::shm::unlink(format!("/{name}").as_str()).map_err(|err| match err {
            rustix::io::Errno::NOENT => ShmError::NotFound(name.to_owned()),
            err => io_error("unlink", name, err),
        })
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if self.unlink_on_drop {
            if let Err(err) = rustix::shm::unlink(format!("/{}", self.name).as_str()) {
                tracing::warn!("unlinking shared memory {:?}: {err}", self.name);
            }
        }
    }
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
