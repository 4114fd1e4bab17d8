//! Arrays on `consort run`'s command line: `--input NAME=@FILE.npy` loads a file into a new
//! shared-memory block, and `--save-arrays DIR` writes n-d array outputs to `DIR/NAME.npy`.
//!
//! Ownership follows Appose's rule, the service cleans up:
//! 1. The input blocks are created here and unlinked when their [`NDArray`]s drop, which
//!    `consort run` arranges on every way out (completion, failure, crash, timeout,
//!    Ctrl-C): it returns to `main` instead of calling `std::process::exit`.
//! 2. Every other block named in the outputs was made by the worker (or reached through
//!    it), which never unlinks it; it is adopted here, saved if asked, and unlinked when
//!    its handle drops at the end of the run. A block that is one of the inputs is not
//!    adopted: it already has its owner.
//!
//! A SIGKILLed `consort run` cannot unlink anything: its input blocks stay in the creator
//! registry, where `consort shm gc` finds them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use consort::shm::npy;
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

/// Adopts every shared-memory block named in `outputs` that is not one of `inputs`, and
/// saves each top-level n-d array output as `save_dir/NAME.npy` when `save_dir` is given.
///
/// Never fails as a whole: each problem is one message in [`TakenOutputs::errors`] or
/// [`TakenOutputs::warnings`], and every block that could be attached is adopted, so none
/// is left behind.
pub fn take_outputs(
    outputs: &consort::Args,
    inputs: &[NDArray],
    save_dir: Option<&Path>,
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
        adopt_all(value, &mut seen, &mut taken);
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

/// Adopts the blocks of every `shm` and `ndarray` descriptor in `value` not yet `seen`.
fn adopt_all(value: &Value, seen: &mut HashSet<String>, taken: &mut TakenOutputs) {
    match value {
        Value::Object(object) if is_kind(value, "ndarray") => {
            if let Some(shm) = object.get("shm") {
                adopt_all(shm, seen, taken);
            }
        }
        Value::Object(object) if is_kind(value, "shm") => {
            let Some(name) = object.get("name").and_then(Value::as_str) else {
                return;
            };
            if !seen.insert(name.to_owned()) {
                return;
            }
            match SharedMemory::from_json(value) {
                Ok(mut block) => {
                    block.adopt();
                    taken.adopted.push(block);
                }
                Err(err) => taken
                    .warnings
                    .push(format!("cannot take over the output block {name:?}: {err}")),
            }
        }
        Value::Object(object) => {
            for item in object.values() {
                adopt_all(item, seen, taken);
            }
        }
        Value::Array(items) => {
            for item in items {
                adopt_all(item, seen, taken);
            }
        }
        _ => {}
    }
}

fn is_kind(value: &Value, kind: &str) -> bool {
    value.get("appose_type").and_then(Value::as_str) == Some(kind)
}
