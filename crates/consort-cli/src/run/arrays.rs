//! Arrays on `consort run`'s command line: `--input NAME=@FILE.npy` loads a file into a new
//! shared-memory block, and `--save-arrays DIR` writes n-d array outputs to `DIR/NAME.npy`.
//!
//! Ownership follows Appose's rule, the service cleans up, within what the worker may ask:
//! 1. The input blocks are created here and unlinked when their [`NDArray`]s drop, which
//!    `consort run` arranges on every way out (completion, failure, crash, timeout,
//!    Ctrl-C): it returns to `main` instead of calling `std::process::exit`.
//! 2. A block named anywhere in the outputs (nested too) is taken over, saved if asked,
//!    and unlinked when its handle drops at the end of the run, only when the worker made
//!    it for this task: a [`Claim`] checks its name, owner, age and registry record (see
//!    `consort::shm::claim`). Any other block is left alone with a warning that names it
//!    and says why; a block that is one of the inputs is skipped silently (it already has
//!    its owner).
//! 3. A block of the task whose descriptor claims more bytes than it has is unlinked at
//!    once, with a warning; the run fails (exit 2) only if that output was to be saved.
//! 4. When the worker is gone, the blocks it recorded in the creator registry and never
//!    handed back (a crash, or a script that made more than it returned) are unlinked,
//!    with a warning naming them ([`WorkerBlocks`]).
//! 5. A creator registry that cannot be used is said once on stderr, the first time the
//!    run needs it.
//!
//! A SIGKILLed `consort run` cannot unlink anything: its input blocks, and its worker's,
//! stay in the creator registry, where `consort shm gc` finds them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use consort::shm::{npy, registry, Claim, ClaimError};
use consort::{NDArray, SharedMemory};
use serde_json::Value;

/// Loads the `.npy` file `path` into a new block, for the input `name`.
///
/// # Errors
/// A path that does not end in `.npy`, a missing or unreadable file, a file that is not a
/// `.npy` file or holds a dtype or layout Appose arrays cannot, and no shared memory.
pub fn load_input(name: &str, path: &str) -> anyhow::Result<NDArray> {
    if path.is_empty() {
        bail!("--input {name}=@: no file after '@' (expected NAME=@FILE.npy)");
    }
    let path = PathBuf::from(path);
    if path.extension().and_then(|ext| ext.to_str()) != Some("npy") {
        bail!(
            "--input {name}=@{}: only .npy files can be passed as arrays (expected NAME=@FILE.npy)",
            path.display()
        );
    }
    registry_usable();
    npy::load(&path).map_err(|err| naming(err, format!("--input {name}=@{}", path.display())))
}

/// `err` under `context`, which names the file, so the file's own error is not named twice.
fn naming(err: npy::NpyError, context: String) -> anyhow::Error {
    match err {
        npy::NpyError::File { source, .. } => anyhow::Error::new(source),
        npy::NpyError::InFile { source, .. } => anyhow::Error::new(*source),
        other => anyhow::Error::new(other),
    }
    .context(context)
}

/// Whether the creator registry can be used; the first time it cannot, says so on stderr
/// (once per run): blocks made for this run then go unrecorded, so `consort shm ls` does
/// not list them and `consort shm gc` cannot collect them after a SIGKILL.
pub fn registry_usable() -> bool {
    static USABLE: OnceLock<bool> = OnceLock::new();
    *USABLE.get_or_init(|| {
        let registry = registry::Registry::at(registry::default_dir());
        match registry.prepare() {
            Ok(()) => true,
            Err(err) => {
                eprintln!(
                    "consort: warning: the shared-memory registry {} cannot be used ({err}): the blocks of this run are not recorded, so `consort shm ls` will not list them and `consort shm gc` cannot collect them if the run is killed",
                    registry.dir().display()
                );
                false
            }
        }
    })
}

/// The blocks the worker recorded in the creator registry: unlinked, when this guard
/// drops, if they are still there and their creator is dead. Declare it before the
/// service, so that it drops after the worker is reaped, on every way out of the run.
#[derive(Debug, Default)]
pub struct WorkerBlocks {
    worker: Option<u32>,
}

impl WorkerBlocks {
    /// Watches the blocks of the worker `pid` (and of its process group).
    pub fn watch(&mut self, pid: u32) {
        self.worker = Some(pid);
    }
}

impl Drop for WorkerBlocks {
    fn drop(&mut self) {
        let Some(pid) = self.worker else {
            return;
        };
        // Nothing to reclaim where nothing was recorded.
        let registry = registry::Registry::at(registry::default_dir());
        if !registry.dir().exists() {
            return;
        }
        match registry.gc_worker(pid) {
            Ok(names) if names.is_empty() => {}
            Ok(names) => {
                let names: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
                eprintln!(
                    "consort: warning: the worker (pid {pid}) left shared memory it never handed back; unlinked {}",
                    names.join(", ")
                );
            }
            // Said already if the run used shared memory; otherwise the worker could not
            // record anything either (consort's says so on its own stderr).
            Err(_) => {}
        }
    }
}

/// Checks that `dir` can receive saved arrays, before any work is done.
///
/// # Errors
/// When `dir` is not an existing directory.
pub fn check_save_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("--save-arrays {}: not an existing directory", dir.display());
    }
    Ok(())
}

/// The output blocks taken over from the worker, and what went wrong.
#[derive(Debug, Default)]
pub struct TakenOutputs {
    /// Adopted blocks: dropping them unlinks them.
    pub adopted: Vec<SharedMemory>,
    /// One message per array that could not be saved: the run did not do what was asked.
    pub errors: Vec<String>,
    /// One message per block that could not be adopted (already gone, say): nothing is
    /// lost that was asked for, but the user should know.
    pub warnings: Vec<String>,
}

/// Takes over every shared-memory block named in `outputs` that is not one of `inputs` and
/// that `claim` shows the worker made for the task, and saves each top-level n-d array
/// output as `save_dir/NAME.npy` when `save_dir` is given.
///
/// Never fails as a whole: each problem is one message in [`TakenOutputs::errors`] or
/// [`TakenOutputs::warnings`], and every block of the task is taken over (or, if short,
/// unlinked at once), so none is left behind.
pub fn take_outputs(
    outputs: &consort::Args,
    inputs: &[NDArray],
    save_dir: Option<&Path>,
    claim: &Claim,
) -> TakenOutputs {
    let mut taken = TakenOutputs::default();
    let mut seen: HashSet<String> = inputs
        .iter()
        .map(|array| array.shm().name().to_owned())
        .collect();
    for (name, value) in outputs {
        if let Some(dir) = save_dir.filter(|_| is_kind(value, "ndarray")) {
            if let Err(err) = save(name, value, dir) {
                taken.errors.push(format!("{err:#}"));
            }
        }
        let mut walk = Walk {
            output: name,
            claim,
            seen: &mut seen,
            taken: &mut taken,
        };
        walk.take_all(value);
    }
    taken
}

/// Saves the array output `name`, described by `value`, as `dir/NAME.npy`.
fn save(name: &str, value: &Value, dir: &Path) -> anyhow::Result<()> {
    // The output name becomes a file name: it must not lead anywhere else.
    if name.is_empty() || name.contains(['/', '\0']) {
        bail!("--save-arrays: the output {name:?} is not usable as a file name");
    }
    let path = dir.join(format!("{name}.npy"));
    let array =
        NDArray::from_json(value).with_context(|| format!("--save-arrays: the output {name:?}"))?;
    npy::save(&array, &path)
        .map_err(|err| naming(err, format!("--save-arrays: writing {}", path.display())))
}

/// One output's walk: the blocks it names are claimed once each.
struct Walk<'a> {
    output: &'a str,
    claim: &'a Claim,
    seen: &'a mut HashSet<String>,
    taken: &'a mut TakenOutputs,
}

impl Walk<'_> {
    /// Takes over the blocks of every `shm` and `ndarray` descriptor in `value` not yet
    /// seen.
    fn take_all(&mut self, value: &Value) {
        match value {
            Value::Object(object) if is_kind(value, "ndarray") => {
                if let Some(shm) = object.get("shm") {
                    self.take_all(shm);
                }
            }
            Value::Object(object) if is_kind(value, "shm") => {
                let Some(name) = object.get("name").and_then(Value::as_str) else {
                    return;
                };
                if !self.seen.insert(name.to_owned()) {
                    return;
                }
                registry_usable();
                let output = self.output;
                match self.claim.take(value) {
                    Ok(block) => self.taken.adopted.push(block),
                    Err(err @ (ClaimError::Refused { .. } | ClaimError::Short { .. })) => self
                        .taken
                        .warnings
                        .push(format!("the output {output:?}: {err}")),
                    Err(err) => self.taken.warnings.push(format!(
                        "the output {output:?}: cannot take over the block {name:?}: {err}"
                    )),
                }
            }
            Value::Object(object) => {
                for item in object.values() {
                    self.take_all(item);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.take_all(item);
                }
            }
            _ => {}
        }
    }
}

fn is_kind(value: &Value, kind: &str) -> bool {
    value.get("appose_type").and_then(Value::as_str) == Some(kind)
}
