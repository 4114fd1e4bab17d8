//! Thin wrappers over the few process system calls consort needs: process-group signals,
//! waiting for an exit without reaping it, the parent-death signal, and finding a worker's
//! descendants by the lineage tag in their environment.
//!
//! Everything here is a direct system call through `rustix`; the one `unsafe` block is
//! `CommandExt::pre_exec`, which runs between `fork` and `exec`.
//!
//! # Invariants
//! 1. A process group is signalled only through [`Pgid::signal`], so `kill(-pgid)` exists in
//!    exactly one place.
//! 2. The `pre_exec` hook calls only raw, async-signal-safe system calls and allocates nothing.
//! 3. [`kill_lineage`] signals only a process that carries the tag: through a pidfd opened
//!    before its environment is read again, so a recycled pid is never signalled.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::io::{self, Read};
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

/// The environment variable that carries a process's lineage: the tags of the consort
/// workers it descends from, `:`-separated. The supervisor appends a fresh tag for each
/// worker it starts, and whatever the worker starts inherits it, in whatever process group
/// or session it ends up (see [`kill_lineage`]).
pub const LINEAGE_ENV: &str = "CONSORT_LINEAGE";

/// A fresh lineage tag: 16 hex digits from the kernel's random source (the time, should
/// that fail).
pub fn new_lineage_tag() -> String {
    let random = random_u64().unwrap_or_else(|_| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32)
    });
    format!("{random:016x}")
}

/// The most rounds [`kill_lineage`] makes: each round finds what the last one's processes
/// forked before they died.
const LINEAGE_ROUNDS: usize = 16;

/// SIGKILLs every process whose environment carries `tag` in [`LINEAGE_ENV`]: a worker's
/// descendants, wherever they went (another process group, another session, reparented to
/// init). Scans `/proc` round after round while a round finds new ones, at most
/// `LINEAGE_ROUNDS` times; returns how many processes were signalled.
///
/// # Caveats
/// Linux only (`/proc/<pid>/environ`, pidfds); elsewhere it finds nothing. A process that
/// cleared or rewrote its environment, runs as another user, or made itself undumpable
/// (`prctl(PR_SET_DUMPABLE, 0)`, which hides its environment) is not found.
pub fn kill_lineage(tag: &str) -> usize {
    if !cfg!(target_os = "linux") || tag.is_empty() {
        return 0;
    }
    let me = std::process::id();
    let mut signalled = HashSet::new();
    let mut environ = Vec::new();
    for _round in 0..LINEAGE_ROUNDS {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            break;
        };
        let mut found_new = false;
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me
                || signalled.contains(&pid)
                || !carries_tag(pid, tag, &mut environ)
                || !kill_if_tagged(Pid(pid), tag, &mut environ)
            {
                continue;
            }
            signalled.insert(pid);
            found_new = true;
        }
        if !found_new {
            break;
        }
    }
    signalled.len()
}

/// Whether `/proc/<pid>/environ` carries `tag` in [`LINEAGE_ENV`]; `environ` is scratch.
fn carries_tag(pid: u32, tag: &str, environ: &mut Vec<u8>) -> bool {
    environ.clear();
    let read = std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|mut file| file.read_to_end(environ));
    if read.is_err() {
        // Gone, another user's, or undumpable.
        return false;
    }
    let key = LINEAGE_ENV.as_bytes();
    environ
        .split(|byte| *byte == 0)
        .filter_map(|entry| entry.strip_prefix(key)?.strip_prefix(b"="))
        .any(|lineage| {
            lineage
                .split(|byte| *byte == b':')
                .any(|one| one == tag.as_bytes())
        })
}

/// SIGKILLs `pid` if it still carries `tag`, checked through a pidfd opened first: the
/// pidfd names one process for good, so if the pid was recycled in between, the environment
/// read is the new process's, which does not carry the tag. Returns whether it was signalled.
#[cfg(target_os = "linux")]
fn kill_if_tagged(pid: Pid, tag: &str, environ: &mut Vec<u8>) -> bool {
    use rustix::process::{pidfd_open, pidfd_send_signal, PidfdFlags};
    let Some(raw) = pid.raw() else {
        return false;
    };
    match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(pidfd) => {
            carries_tag(pid.get(), tag, environ) && pidfd_send_signal(&pidfd, Signal::KILL).is_ok()
        }
        // A kernel before 5.3: the pid, then, and the tiny window between reading and
        // signalling is left open.
        Err(rustix::io::Errno::NOSYS) => pid.signal(signals::KILL).is_ok(),
        Err(_) => false,
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_if_tagged(_pid: Pid, _tag: &str, _environ: &mut Vec<u8>) -> bool {
    false
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
