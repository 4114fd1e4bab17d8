//! One long-lived thread that spawns every worker process, and the init script's
//! temporary file that a worker is started with.
//!
//! On Linux a child's parent-death signal fires when the *thread* that forked it exits. If
//! workers were spawned from whatever thread called `start()` (a short-lived thread, a
//! runtime's blocking pool), they would be SIGKILLed when that thread ended. Spawning from
//! this thread, which lives as long as the process, ties them to the process instead.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

use crate::sys;

type Reply = Sender<io::Result<Child>>;

static SPAWNER: OnceLock<Mutex<Sender<(Command, Reply)>>> = OnceLock::new();

/// Spawns `command` in a new process group, tied to the life of this process.
///
/// # Errors
/// What `Command::spawn` returns, or an error if the spawner thread cannot be started.
pub(crate) fn spawn(mut command: Command) -> io::Result<Child> {
    sys::isolate_child(&mut command);
    let requests = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<(Command, Reply)>();
        let started = std::thread::Builder::new()
            .name("consort-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            });
        if let Err(err) = started {
            tracing::error!("cannot start the spawner thread: {err}");
        }
        Mutex::new(requests)
    });
    let (reply, answer) = mpsc::channel();
    requests
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .send((command, reply))
        .map_err(|_| io::Error::other("the consort spawner thread is not running"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the consort spawner thread did not answer"))?
}

/// A temporary file removed on drop, written with mode 0600: the init script a worker
/// reads through `APPOSE_INIT_SCRIPT`.
pub(crate) struct TempPath(PathBuf);

impl TempPath {
    pub(crate) fn write(prefix: &str, contents: &str) -> io::Result<TempPath> {
        let dir = std::env::temp_dir();
        for _ in 0..16 {
            let name = format!("{prefix}{:016x}.txt", sys::random_u64()?);
            let path = dir.join(name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut file) => {
                    file.write_all(contents.as_bytes())?;
                    return Ok(TempPath(path));
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
        Err(io::Error::other("cannot find a free temporary file name"))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        // The worker deletes it after reading it; this covers a worker that never did.
        let _ = std::fs::remove_file(&self.0);
    }
}
