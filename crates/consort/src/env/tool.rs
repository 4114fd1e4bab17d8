//! Running the environment tools (uv, pixi, micromamba): finding them, running one step
//! with its output streamed to subscribers, and the lock and markers that make a build
//! all-or-nothing.
//!
//! Each tool run is a child in its own process group. When it exits (or its time is up)
//! the whole group is SIGKILLed while the leader is still an unreaped zombie, so no
//! helper process it left behind survives the build, and the group id cannot have been
//! reused when we signal it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::{BuildEvent, Common, EnvError, Stream, MARKER};
use crate::python::content_hash;
use crate::sys::{signals, Pgid, Pid};

/// How long the output of a tool that has exited may stay open (held by a process that
/// left its group) before the build goes on without it.
const READER_GRACE: Duration = Duration::from_secs(5);

/// How many lines of a failing tool's output its error quotes.
const TAIL_LINES: usize = 40;

/// The first executable named `name` in `search_path` (default: this process's `PATH`).
pub(crate) fn find_on_path(name: &str, search_path: Option<&OsStr>) -> Option<PathBuf> {
    let path = match search_path {
        Some(path) => path.to_owned(),
        None => std::env::var_os("PATH")?,
    };
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| super::is_executable(candidate))
        .map(|found| super::absolute(&found))
}

/// The tool to use: the builder's own path, else `name` on the search path, else the
/// first of `fallbacks` that exists.
pub(crate) fn find(
    common: &Common,
    name: &'static str,
    fallbacks: &[PathBuf],
    hint: &str,
) -> Result<PathBuf, EnvError> {
    if let Some(path) = &common.tool {
        return if super::is_executable(path) {
            Ok(super::absolute(path))
        } else {
            Err(EnvError::ToolMissing {
                tool: name,
                hint: format!("{} is not an executable file", path.display()),
            })
        };
    }
    if let Some(found) = find_on_path(name, common.search_path.as_deref()) {
        return Ok(found);
    }
    if let Some(found) = fallbacks.iter().find(|path| super::is_executable(path)) {
        return Ok(found.clone());
    }
    Err(EnvError::ToolMissing {
        tool: name,
        hint: format!("not on PATH; {hint}"),
    })
}

/// One tool run: which tool, what it is doing, and where.
pub(crate) struct Run<'a> {
    pub(crate) tool: &'static str,
    pub(crate) program: &'a Path,
    pub(crate) step: &'a str,
    pub(crate) args: Vec<OsString>,
    pub(crate) cwd: Option<&'a Path>,
}

impl Run<'_> {
    /// Runs the tool with stdin closed, streaming each output line to the subscribers,
    /// and waits for it (up to the builder's timeout).
    ///
    /// # Errors
    /// [`EnvError::ToolSpawn`] when it cannot start; [`EnvError::ToolFailed`] when it
    /// exits unsuccessfully or times out, with the end of its output.
    pub(crate) fn run(self, common: &Common) -> Result<(), EnvError> {
        let mut command = Command::new(self.program);
        command
            .args(&self.args)
            .args(&common.flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(cwd) = self.cwd {
            command.current_dir(cwd);
        }
        for (key, value) in &common.vars {
            command.env(key, value);
        }
        tracing::debug!(target: "consort::env", "running {command:?}");
        let mut child = command.spawn().map_err(|err| EnvError::ToolSpawn {
            tool: self.tool,
            path: self.program.to_path_buf(),
            source: Arc::new(err),
        })?;
        let stdout_tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (done_tx, done) = mpsc::channel::<()>();
        let mut n_readers = 0;
        for (output, stream, tail) in [
            (
                child
                    .stdout
                    .take()
                    .map(|out| Box::new(out) as Box<dyn Read + Send>),
                Stream::Stdout,
                &stdout_tail,
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|err| Box::new(err) as Box<dyn Read + Send>),
                Stream::Stderr,
                &stderr_tail,
            ),
        ] {
            let Some(output) = output else { continue };
            let (common, tail, done_tx) = (common.clone(), Arc::clone(tail), done_tx.clone());
            n_readers += 1;
            std::thread::spawn(move || {
                pump(output, stream, &common, &tail);
                let _ = done_tx.send(());
            });
        }
        let outcome = wait(&mut child, common.timeout);
        // The group is dead, so the pipes close unless a process escaped the group (a
        // daemon): then stop waiting for its output after a while rather than hang.
        for _ in 0..n_readers {
            if done.recv_timeout(READER_GRACE).is_err() {
                tracing::debug!(target: "consort::env", "{} output still open after exit", self.tool);
                break;
            }
        }
        let status = match outcome {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => status.to_string(),
            Err(reason) => reason,
        };
        let lines = |tail: &Mutex<VecDeque<String>>| -> Vec<String> {
            tail.lock()
                .map(|tail| tail.iter().cloned().collect())
                .unwrap_or_default()
        };
        let mut message = lines(&stderr_tail);
        if message.iter().all(|line| line.trim().is_empty()) {
            message = lines(&stdout_tail);
        }
        let message = message.join("\n").trim().to_owned();
        Err(EnvError::ToolFailed {
            tool: self.tool,
            step: self.step.to_owned(),
            status,
            message: if message.is_empty() {
                "(no output)".to_owned()
            } else {
                message
            },
        })
    }
}

/// Waits for the tool to exit (or the timeout), then kills its process group while the
/// leader is still a zombie, then reaps it.
fn wait(child: &mut Child, timeout: Option<Duration>) -> Result<std::process::ExitStatus, String> {
    let pid = Pid::new(child.id());
    let (exited_tx, exited) = mpsc::channel();
    // The waiter only observes the exit (WNOWAIT); reaping stays here, after the group
    // kill, so the group id is still ours when we signal it.
    std::thread::spawn(move || {
        let _ = exited_tx.send(pid.wait_exited_keep_zombie());
    });
    let timed_out = match timeout {
        Some(limit) => exited.recv_timeout(limit).is_err(),
        None => exited.recv().is_err(),
    };
    let _ = Pgid(child.id()).signal(signals::KILL);
    let status = child
        .wait()
        .map_err(|err| format!("cannot wait for it: {err}"))?;
    match timeout {
        Some(limit) if timed_out => Err(format!(
            "killed after the {} s timeout",
            limit.as_secs_f64()
        )),
        _ => Ok(status),
    }
}

/// Forwards a tool's output, split at `\n` and `\r`, to the subscribers, keeping a tail.
fn pump(output: impl Read, stream: Stream, common: &Common, tail: &Mutex<VecDeque<String>>) {
    let mut reader = BufReader::new(output);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match read_line(&mut reader, &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buffer)
            .trim_end_matches(['\n', '\r'])
            .to_owned();
        if line.is_empty() {
            continue;
        }
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        common.emit(&BuildEvent::Output { stream, line });
    }
}

/// Reads up to and including the next `\n` or `\r`.
fn read_line(reader: &mut impl BufRead, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let mut n_read = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if available.is_empty() {
            return Ok(n_read);
        }
        match available
            .iter()
            .position(|byte| matches!(byte, b'\n' | b'\r'))
        {
            Some(end) => {
                buffer.extend_from_slice(&available[..=end]);
                reader.consume(end + 1);
                return Ok(n_read + end + 1);
            }
            None => {
                let len = available.len();
                buffer.extend_from_slice(available);
                reader.consume(len);
                n_read += len;
            }
        }
    }
}

/// An exclusive lock on building the environment in `dir`, and the markers around it.
#[derive(Debug)]
pub(crate) struct BuildGuard {
    dir: PathBuf,
    building: PathBuf,
    _lock: File,
}

impl BuildGuard {
    /// Takes the lock (`.<name>.lock` next to `dir`), waiting for another build of the
    /// same environment to finish.
    pub(crate) fn lock(dir: &Path) -> Result<BuildGuard, EnvError> {
        let name = dir
            .file_name()
            .ok_or_else(|| EnvError::Invalid(format!("{} has no file name", dir.display())))?
            .to_string_lossy()
            .into_owned();
        let parent = dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(|err| EnvError::io("creating", parent, err))?;
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|err| EnvError::io("opening", &lock_path, err))?;
        loop {
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(err) => return Err(EnvError::io("locking", &lock_path, err.into())),
            }
        }
        Ok(BuildGuard {
            dir: dir.to_path_buf(),
            building: parent.join(format!(".{name}.building")),
            _lock: lock,
        })
    }

    /// Fails with [`EnvError::Refused`] when `dir` is a non-empty directory consort did
    /// not build (no marker, no `.building` file beside it).
    pub(crate) fn check_ours(dir: &Path) -> Result<(), EnvError> {
        let building = building_path(dir);
        let ours = dir.join(MARKER).exists() || building.is_some_and(|path| path.exists());
        let empty = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
        if ours || empty {
            return Ok(());
        }
        Err(EnvError::Refused {
            path: dir.to_path_buf(),
            reason: format!(
                "the directory is not empty and consort did not build it (no {MARKER})"
            ),
        })
    }

    /// Whether the environment is built with exactly `state`.
    pub(crate) fn is_current(&self, state: &Value) -> bool {
        !self.building.exists() && super::built_state(&self.dir).as_ref() == Some(state)
    }

    /// Removes the environment if consort built it or began to, or if it is empty.
    pub(crate) fn wipe(&self) -> Result<(), EnvError> {
        match std::fs::read_dir(&self.dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(EnvError::io("reading", &self.dir, err)),
            Ok(_) => {
                BuildGuard::check_ours(&self.dir)?;
                std::fs::remove_dir_all(&self.dir)
                    .map_err(|err| EnvError::io("removing", &self.dir, err))?;
            }
        }
        match std::fs::remove_file(&self.building) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(EnvError::io("removing", &self.building, err))
            }
            _ => Ok(()),
        }
    }

    /// Wipes the old environment and marks the directory as being built; the directory
    /// itself is left to the tool (micromamba refuses to create a prefix that exists).
    pub(crate) fn begin(&self) -> Result<(), EnvError> {
        self.wipe()?;
        File::create(&self.building)
            .map(drop)
            .map_err(|err| EnvError::io("creating", &self.building, err))
    }

    /// Marks the environment built with `state`: the marker is written to a temporary
    /// file and renamed into place, then the `.building` file goes.
    pub(crate) fn finish(&self, state: &Value) -> Result<(), EnvError> {
        let text = serde_json::to_string(state).unwrap_or_default();
        let marker = json!({ "hash": content_hash(&text), "state": state });
        let temporary = self.dir.join(format!(".{MARKER}.tmp"));
        let write = || -> io::Result<()> {
            let mut file = File::create(&temporary)?;
            serde_json::to_writer_pretty(&mut file, &marker)?;
            file.write_all(b"\n")?;
            file.sync_all()
        };
        write().map_err(|err| EnvError::io("writing", &temporary, err))?;
        let target = self.dir.join(MARKER);
        std::fs::rename(&temporary, &target)
            .map_err(|err| EnvError::io("writing", &target, err))?;
        std::fs::remove_file(&self.building)
            .map_err(|err| EnvError::io("removing", &self.building, err))
    }
}

/// Runs a build: takes the lock; if the environment is current (and `force` is false),
/// reports [`BuildEvent::UpToDate`]; otherwise wipes it, runs `steps`, and marks it built.
pub(crate) fn build(
    common: &Common,
    dir: &Path,
    state: &Value,
    force: bool,
    steps: impl FnOnce() -> Result<(), EnvError>,
) -> Result<(), EnvError> {
    if dir.exists() {
        // A user's directory is refused before a lock file is put beside it.
        BuildGuard::check_ours(dir)?;
    }
    let guard = BuildGuard::lock(dir)?;
    if !force && guard.is_current(state) {
        common.emit(&BuildEvent::UpToDate);
        return Ok(());
    }
    guard.begin()?;
    steps()?;
    guard.finish(state)?;
    common.emit(&BuildEvent::Built);
    Ok(())
}

/// Emits step `current` of `maximum`.
pub(crate) fn step(common: &Common, title: &str, current: u32, maximum: u32) {
    common.emit(&BuildEvent::Step {
        title: title.to_owned(),
        current,
        maximum,
    });
}

/// Writes `content` to `path`.
pub(crate) fn write(path: &Path, content: &str) -> Result<(), EnvError> {
    std::fs::write(path, content).map_err(|err| EnvError::io("writing", path, err))
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<(), EnvError> {
    std::fs::create_dir_all(dir).map_err(|err| EnvError::io("creating", dir, err))
}

/// The `.<name>.building` file beside `dir`.
fn building_path(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_string_lossy();
    Some(dir.parent()?.join(format!(".{name}.building")))
}
