//! One long-lived thread that spawns every worker process.
//!
//! On Linux a child's parent-death signal fires when the *thread* that forked it exits. If
//! workers were spawned from whatever thread called `start()` (a short-lived thread, a
//! runtime's blocking pool), they would be SIGKILLed when that thread ended. Spawning from
//! this thread, which lives as long as the process, ties them to the process instead.

use std::io;
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
