//! Thin wrappers over the few process system calls consort needs: process-group signals,
//! waiting for an exit without reaping it, and the parent-death signal.
//!
//! Everything here is a direct system call through `rustix`; the one `unsafe` block is
//! `CommandExt::pre_exec`, which runs between `fork` and `exec`.
//!
//! # Invariants
//! 1. A process group is signalled only through [`Pgid::signal`], so `kill(-pgid)` exists in
//!    exactly one place.
//! 2. The `pre_exec` hook calls only raw, async-signal-safe system calls and allocates nothing.
#![allow(unsafe_code)]

use std::io;
use std::process::Command;

use rustix::process::{Pid as RawPid, Signal, WaitId, WaitIdOptions};

/// A process id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pid(pub(crate) u32);

impl Pid {
    /// Names the process with this raw id.
    pub fn new(raw: u32) -> Pid {
        Pid(raw)
    }

    /// The raw process id.
    pub fn get(self) -> u32 {
        self.0
    }

    fn raw(self) -> Option<RawPid> {
        RawPid::from_raw(i32::try_from(self.0).ok()?)
    }

    /// Blocks until the process has exited, without reaping it, so that its pid (and its
    /// process group id) cannot be reused while we still signal its group.
    ///
    /// # Errors
    /// `ECHILD` when the process is not our child or was already reaped.
    pub fn wait_exited_keep_zombie(self) -> io::Result<()> {
        let raw = self
            .raw()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        loop {
            match rustix::process::waitid(
                WaitId::Pid(raw),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
            ) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Sends `signal` to this one process.
    ///
    /// # Errors
    /// `ESRCH` when there is no such process.
    pub fn signal(self, signal: i32) -> io::Result<()> {
        let raw = self
            .raw()
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let signal = Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::process::kill_process(raw, signal).map_err(io::Error::from)
    }
}

/// A process group id: the pid of the group's leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pgid(pub(crate) u32);

impl Pgid {
    /// Sends `signal` to every process in the group.
    ///
    /// # Caveats
    /// Call this only while the group leader is not yet reaped: once it is, the id may be
    /// reused by an unrelated group. The service guarantees this with its `reaped` flag.
    ///
    /// # Errors
    /// `ESRCH` when the group is empty.
    pub fn signal(self, signal: i32) -> io::Result<()> {
        let raw = i32::try_from(self.0)
            .ok()
            .and_then(RawPid::from_raw)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let signal = Signal::from_named_raw(signal)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::process::kill_process_group(raw, signal).map_err(io::Error::from)
    }
}

/// Signal numbers used by the supervisor.
pub mod signals {
    /// SIGKILL.
    pub const KILL: i32 = 9;
    /// SIGTERM.
    pub const TERM: i32 = 15;
    /// SIGCONT, so that a stopped worker can act on SIGTERM.
    pub const CONT: i32 = 18;
    /// SIGSTOP.
    pub const STOP: i32 = 19;
}

/// Makes the child die with the thread that spawns it (Linux), and puts it in a new
/// process group of its own.
///
/// # Caveats
/// Linux sends the parent-death signal when the *thread* that forked exits, not the
/// process: spawn from a thread that lives as long as the process (see `service::spawner`).
pub fn isolate_child(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = rustix::process::getpid();
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed. It makes two raw system calls through rustix
        // (prctl and getppid), allocates nothing, takes no lock and touches no shared state.
        unsafe {
            command.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                // The parent may have died between fork and prctl: then nobody will send
                // the signal, so refuse to start instead of becoming an orphan.
                if rustix::process::getppid() != Some(parent) {
                    return Err(io::Error::other("the supervisor exited during spawn"));
                }
                Ok(())
            });
        }
    }
}

/// Random bytes from the kernel.
///
/// # Errors
/// When the kernel's random source is unavailable.
pub fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(io::Error::from)?;
    }
    Ok(u64::from_ne_bytes(bytes))
}
