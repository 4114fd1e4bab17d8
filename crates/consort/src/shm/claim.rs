//! Taking over the blocks a worker hands back, but only those it made for this task.
//!
//! Appose's rule is that the service cleans up: a block that a worker names in its outputs
//! becomes the service's to unlink. Taken literally, the rule lets a worker behind a trust
//! boundary (ssh, a sandbox, another user) delete any shared-memory object the supervisor
//! can delete, simply by naming it. A [`Claim`] takes over a named block only when all of
//! these hold:
//! 1. its name is one a worker gives a new block: `psm_` and 8 to 26 hex digits (Python's
//!    `multiprocessing.shared_memory`, Appose, and consort's own blocks), so never a
//!    semaphore (`sem.*`) or another program's object;
//! 2. (Linux) `/dev/shm/<name>` is a regular file, looked at without opening it and
//!    without following a link;
//! 3. it belongs to the user this process runs as (consort starts its worker as itself);
//! 4. (Linux) it was created after the claim's [`Start`], which is taken before the worker
//!    starts: its birth time (its change time where the file system keeps no birth time)
//!    against the kernel's coarse clock, the clock that stamps files;
//! 5. the creator [`registry`] does not record it as made by a process
//!    other than the worker or a member of the worker's process group.
//!
//! Anything else is left alone and the [`Refusal`] says why. A block that passes but whose
//! descriptor claims more bytes than it has is unlinked, since it is the task's and cannot
//! be used: [`ClaimError::Short`].
//!
//! # Caveats
//! - The checks bound what a worker can make consort delete on its word. A worker that can
//!   itself write the supervisor's user's files (the same user on the same machine) could
//!   delete them directly; nothing here stops that.
//! - A block that another process of the same user created after the start, and that no
//!   registry records (a plain Python program, Appose's worker), passes: its name, owner
//!   and age are those of a block the worker could have made.
//! - A worker that switches to another user (a setuid launcher, `sudo -u`) makes blocks
//!   that fail check 3: they are left alone, with a warning.
//! - Check 4 sees time in ticks of the coarse clock (1 to 10 ms): a block created in the
//!   very tick of the start counts as created after it. The run's own input blocks, made
//!   just before, are excluded by name, not by age.
//! - A wall clock stepped back between the start and a block's creation makes the block
//!   look older than the start: it is refused, with a warning, rather than risk the
//!   supervisor's own blocks.
//! - Elsewhere than Linux there is no `/dev/shm` to look at and no creation time: checks 2
//!   and 4 are skipped, and check 3 reads the owner from the open object.
#![deny(unsafe_code)]

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::registry::{self, Registry};
use super::{
    file_size, io_error, map, open_existing, parse_descriptor, validate_name, SharedMemory,
    ShmError,
};

/// The moment from which blocks count as the task's: take it before starting the worker.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// Seconds and nanoseconds of the coarse wall clock (Linux); `None` elsewhere.
    wall: Option<(i64, u32)>,
}

impl fmt::Debug for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wall {
            Some((secs, nanos)) => write!(f, "Start({secs}.{nanos:09})"),
            None => f.write_str("Start(unknown)"),
        }
    }
}

impl Start {
    /// Now, on the clock the kernel stamps shared-memory files with.
    pub fn now() -> Start {
        Start { wall: coarse_now() }
    }
}

/// Takes over the blocks one worker hands back for one task; see the module documentation.
#[derive(Debug, Clone)]
pub struct Claim {
    start: Start,
    worker: u32,
    uid: u32,
    registry: Registry,
}

/// Why a block named by a worker was not taken over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not a name workers give new blocks.
    #[error("its name is not one a worker gives a new block (psm_ and 8 to 26 hex digits)")]
    Name,
    /// Not a regular file in `/dev/shm` (a link, a directory, a device, a FIFO).
    #[error("it is not a regular file")]
    NotARegularFile,
    /// Another user's block.
    #[error(
        "it belongs to uid {owner}, not to uid {uid}, the user this run and its worker run as"
    )]
    Owner {
        /// Its owner.
        owner: u32,
        /// The user this process runs as.
        uid: u32,
    },
    /// It existed before the worker started.
    #[error("it existed before this task's worker started (created {earlier:.3?} earlier)")]
    Older {
        /// How long before the start it was created.
        earlier: Duration,
    },
    /// The creator registry names another process as its creator.
    #[error("the shared-memory registry records it as made by process {pid}, not by this task's worker (pid {worker}) or its process group")]
    RecordedBy {
        /// The recorded creator.
        pid: u32,
        /// The worker.
        worker: u32,
    },
    /// The name was given to another object while it was being checked.
    #[error("it was replaced while it was being checked")]
    Replaced,
}

/// Why [`Claim::take`] did not return a block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The block is not the task's: it was left alone.
    #[error("left the block {name:?} alone: {reason}")]
    Refused {
        /// The block's name.
        name: String,
        /// Why.
        reason: Refusal,
    },
    /// The block is the task's, but smaller than its descriptor says: it was unlinked.
    #[error("the block {name:?} has {size} bytes, fewer than the {rsize} its descriptor claims; it was this task's block, so it was unlinked")]
    Short {
        /// The block's name.
        name: String,
        /// The size the descriptor claims.
        rsize: usize,
        /// The block's size.
        size: usize,
    },
    /// The descriptor is not one, the name is invalid, or no such block exists.
    #[error(transparent)]
    Shm(#[from] ShmError),
}

impl Claim {
    /// A claim on the blocks that the worker `worker` (its pid, which is also its process
    /// group: see `sys::Pgid`) creates from `start` on, checked against the default
    /// creator registry.
    pub fn new(start: Start, worker: u32) -> Claim {
        Claim {
            start,
            worker,
            uid: rustix::process::geteuid().as_raw(),
            registry: Registry::at(registry::default_dir()),
        }
    }

    /// Checks records against `registry` instead of the default one.
    pub fn with_registry(mut self, registry: Registry) -> Claim {
        self.registry = registry;
        self
    }

    /// Takes over the block that `descriptor` (`{"appose_type":"shm",...}`) names, when it
    /// passes every check of the module documentation: the returned handle unlinks it when
    /// dropped, and the block's registry record, if any, goes with it.
    ///
    /// # Errors
    /// [`ClaimError::Refused`] (the block was left alone), [`ClaimError::Short`] (the block
    /// was unlinked), and [`ClaimError::Shm`] for a bad descriptor or name, a missing block,
    /// or a system error.
    pub fn take(&self, descriptor: &Value) -> Result<SharedMemory, ClaimError> {
        let (name, rsize) = parse_descriptor(descriptor)?;
        validate_name(name)?;
        let refuse = |reason| ClaimError::Refused {
            name: name.to_owned(),
            reason,
        };
        if !is_worker_name(name) {
            return Err(refuse(Refusal::Name));
        }
        #[cfg(target_os = "linux")]
        let seen = {
            let seen = look(name)?;
            if !seen.regular {
                return Err(refuse(Refusal::NotARegularFile));
            }
            if seen.uid != self.uid {
                return Err(refuse(Refusal::Owner {
                    owner: seen.uid,
                    uid: self.uid,
                }));
            }
            if let (Some(created), Some(start)) = (seen.created, self.start.wall) {
                if created < start {
                    return Err(refuse(Refusal::Older {
                        earlier: difference(start, created),
                    }));
                }
            }
            seen
        };
        match self.registry.creator_of(name) {
            Ok(Some(creator))
                if creator.pid != self.worker && creator.pgid != Some(self.worker) =>
            {
                return Err(refuse(Refusal::RecordedBy {
                    pid: creator.pid,
                    worker: self.worker,
                }));
            }
            Ok(_) => {}
            // The caller says whether the registry works (`Registry::prepare`); the other
            // checks still hold without it.
            Err(err) => tracing::debug!("shm claim: no registry check for {name:?}: {err}"),
        }
        let file = open_existing(name)?;
        let stat = rustix::fs::fstat(&file).map_err(|err| io_error("stat", name, err))?;
        #[cfg(target_os = "linux")]
        {
            if stat.st_ino as u64 != seen.ino {
                return Err(refuse(Refusal::Replaced));
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            if stat.st_uid != self.uid {
                return Err(refuse(Refusal::Owner {
                    owner: stat.st_uid,
                    uid: self.uid,
                }));
            }
        }
        let size = file_size(&file, name)?;
        if rsize > size || size == 0 {
            // The task's block, and unusable: ours to remove now.
            SharedMemory::unlink(name)?;
            return Err(ClaimError::Short {
                name: name.to_owned(),
                rsize: rsize.max(1),
                size,
            });
        }
        Ok(SharedMemory {
            name: name.to_owned(),
            rsize,
            map: map(&file, name, size)?,
            unlink_on_drop: true,
            record: None,
        })
    }
}

/// Whether `name` is `psm_` and 8 to 26 hex digits, as workers name new blocks.
pub fn is_worker_name(name: &str) -> bool {
    name.strip_prefix("psm_").is_some_and(|digits| {
        (8..=26).contains(&digits.len()) && digits.bytes().all(|byte| byte.is_ascii_hexdigit())
    })
}

/// What `statx` says about `/dev/shm/<name>`, the link itself if it is one.
#[cfg(target_os = "linux")]
struct Seen {
    ino: u64,
    uid: u32,
    regular: bool,
    /// Birth time, else change time, as seconds and nanoseconds.
    created: Option<(i64, u32)>,
}

#[cfg(target_os = "linux")]
fn look(name: &str) -> Result<Seen, ShmError> {
    use rustix::fs::{AtFlags, FileType, StatxFlags, CWD};

    let path = format!("/dev/shm/{name}");
    let mask = StatxFlags::BASIC_STATS | StatxFlags::BTIME;
    match rustix::fs::statx(CWD, path.as_str(), AtFlags::SYMLINK_NOFOLLOW, mask) {
        Ok(statx) => {
            let stamp = if statx.stx_mask & StatxFlags::BTIME.bits() != 0 {
                statx.stx_btime
            } else {
                statx.stx_ctime
            };
            Ok(Seen {
                ino: statx.stx_ino,
                uid: statx.stx_uid,
                regular: FileType::from_raw_mode(u32::from(statx.stx_mode))
                    == FileType::RegularFile,
                created: Some((stamp.tv_sec, stamp.tv_nsec)),
            })
        }
        Err(rustix::io::Errno::NOENT) => Err(ShmError::NotFound(name.to_owned())),
        // Kernels before 4.11 have no statx: the change time of lstat.
        Err(rustix::io::Errno::NOSYS) => {
            let stat = rustix::fs::lstat(path.as_str()).map_err(|err| match err {
                rustix::io::Errno::NOENT => ShmError::NotFound(name.to_owned()),
                err => io_error("stat", name, err),
            })?;
            Ok(Seen {
                ino: stat.st_ino as u64,
                uid: stat.st_uid,
                regular: FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile,
                created: u32::try_from(stat.st_ctime_nsec)
                    .ok()
                    .map(|nanos| (stat.st_ctime as i64, nanos)),
            })
        }
        Err(err) => Err(io_error("stat", name, err)),
    }
}

/// The coarse wall clock, which is what stamps files on Linux: a block created after this
/// reading has a stamp at least as late (the fine clock could be ahead of the stamp).
#[cfg(target_os = "linux")]
fn coarse_now() -> Option<(i64, u32)> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    u32::try_from(now.tv_nsec)
        .ok()
        .map(|nanos| (now.tv_sec as i64, nanos))
}

#[cfg(not(target_os = "linux"))]
fn coarse_now() -> Option<(i64, u32)> {
    None
}

/// `later - earlier`, for two (seconds, nanoseconds) stamps with `earlier < later`.
#[cfg(target_os = "linux")]
fn difference(later: (i64, u32), earlier: (i64, u32)) -> Duration {
    let nanos = |(secs, nanos): (i64, u32)| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let diff = (nanos(later) - nanos(earlier)).max(0);
    Duration::from_nanos(u64::try_from(diff).unwrap_or(u64::MAX))
}

#[cfg(all(test, target_os = "linux"))]
mod tests;
