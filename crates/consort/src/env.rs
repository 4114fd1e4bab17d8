//! Environments: build the Python environment a worker needs (with uv, pixi or
//! micromamba), or wrap one that exists, and start workers in it.
//!
//! This is Appose's first layer (`Builder → Environment → Service`): an [`Environment`] is
//! a directory, the folders that hold its executables, and, for pixi and micromamba, the
//! launcher (`pixi run`, `micromamba run`) that activates it. [`Environment::service`]
//! turns any command into a [`ServiceBuilder`] that runs in it, and the service kills the
//! worker's whole process group on close, so a worker behind a launcher dies too (Appose
//! kills only the launcher).
//!
//! The builders ([`UvBuilder`], [`PixiBuilder`], [`MambaBuilder`]) describe an environment
//! as data; its canonical JSON form (the *state*) and a hash of it are written to
//! `consort-env.json` in the environment once it is built, and a later build whose state is
//! equal does nothing.
//!
//! # Invariants
//! 1. An environment is marked built (its `consort-env.json` written, atomically, by
//!    rename) only after every step of its build succeeded. A failed build leaves no
//!    marker but a sibling `.<name>.building` file, and the next build starts from scratch.
//! 2. A directory is deleted only when consort built it (marker or `.building` file) or
//!    it is empty: never a directory the user made.
//! 3. One build per directory at a time: builds hold an exclusive `flock` on a sibling
//!    `.<name>.lock` file, so two processes building the same environment take turns and
//!    the second finds it built.
//! 4. Nothing is downloaded except by the tools themselves from their package registries;
//!    uv itself may be installed from PyPI with pip.
//!
//! # Boundary
//! With `service`, the only module that creates processes: the short-lived tool runs in
//! `env/tool.rs`, each in its own process group, killed as a group when it ends or times out.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::python::{self, CONDA_VARS};
use crate::service::{Service, ServiceBuilder};

/// The options every builder shares, as `with_*` methods on `$builder` (whose tool is
/// `$tool`).
macro_rules! builder_common {
    ($builder:ident, $tool:literal) => {
        /// Names the environment: it lives in `<envs_dir>/<name>` (default: a name from
        /// the recipe file, else the tool and a hash of the recipe).
        pub fn with_name(mut self, name: impl Into<String>) -> $builder {
            self.common.name = Some(name.into());
            self
        }

        /// Puts the environment in `dir` instead of the environments folder.
        pub fn with_dir(mut self, dir: impl Into<std::path::PathBuf>) -> $builder {
            self.common.dir = Some(dir.into());
            self
        }

        #[doc = concat!("Uses this `", $tool, "` executable instead of looking for one.")]
        pub fn with_tool(mut self, path: impl Into<std::path::PathBuf>) -> $builder {
            self.common.tool = Some(path.into());
            self
        }

        #[doc = concat!("Looks for `", $tool, "` in these folders (a `PATH`-style list) instead of `PATH`.")]
        pub fn with_search_path(mut self, path: impl Into<std::ffi::OsString>) -> $builder {
            self.common.search_path = Some(path.into());
            self
        }

        #[doc = concat!("Adds flags to every `", $tool, "` command the build runs.")]
        pub fn with_flags<S: Into<String>>(mut self, flags: impl IntoIterator<Item = S>) -> $builder {
            self.common.flags.extend(flags.into_iter().map(Into::into));
            self
        }

        #[doc = concat!("Sets a variable for every `", $tool, "` command the build runs.")]
        pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> $builder {
            let key = key.into();
            self.common.vars.retain(|(existing, _)| *existing != key);
            self.common.vars.push((key, value.into()));
            self
        }

        #[doc = concat!("Kills a `", $tool, "` command (its whole process group) that runs longer than `limit`.")]
        pub fn with_timeout(mut self, limit: std::time::Duration) -> $builder {
            self.common.timeout = Some(limit);
            self
        }

        /// Calls `subscriber` with every [`BuildEvent`](crate::env::BuildEvent): steps,
        /// the tool's output lines (from the tool's reader threads), the end.
        pub fn subscribe(
            mut self,
            subscriber: impl Fn(&crate::env::BuildEvent) + Send + Sync + 'static,
        ) -> $builder {
            self.common.subscribers.push(std::sync::Arc::new(subscriber));
            self
        }
    };
}

mod mamba;
mod pixi;
mod tool;
mod uv;

pub use mamba::MambaBuilder;
pub use pixi::PixiBuilder;
pub use uv::UvBuilder;

/// The file, inside a built environment, that marks it built and records its state.
pub const MARKER: &str = "consort-env.json";

/// What manages an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EnvKind {
    /// The system's executables, found on `PATH` (plus `<dir>/bin` when wrapping a plain
    /// directory).
    System,
    /// A Python virtual environment (`pyvenv.cfg`): made by uv, `python -m venv`, or
    /// `uv sync` (then in `<dir>/.venv`).
    Venv,
    /// A pixi project (`pixi.toml` or `.pixi/`), run through `pixi run`.
    Pixi,
    /// A conda prefix (`conda-meta/`), run through `micromamba run` when micromamba is
    /// available.
    Conda,
}

impl fmt::Display for EnvKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvKind::System => "system",
            EnvKind::Venv => "venv",
            EnvKind::Pixi => "pixi",
            EnvKind::Conda => "conda",
        })
    }
}

/// Errors from building, wrapping, deleting or using an environment.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// The tool a builder needs could not be found (or installed).
    #[error("{tool} not found: {hint}")]
    ToolMissing {
        /// `uv`, `pixi` or `micromamba`.
        tool: &'static str,
        /// Where it was looked for and how to get it.
        hint: String,
    },
    /// The tool ran and failed; `message` is what it said (the end of its stderr, or of
    /// its stdout when stderr was empty).
    #[error("{tool} failed while {step} ({status}): {message}")]
    ToolFailed {
        /// `uv`, `pixi` or `micromamba`.
        tool: &'static str,
        /// What it was doing, e.g. "installing packages".
        step: String,
        /// How it ended, e.g. "exit status: 1" or "killed after the 600 s timeout".
        status: String,
        /// The tool's own message.
        message: String,
    },
    /// The tool could not be started.
    #[error("cannot run {tool} ({}): {source}", path.display())]
    ToolSpawn {
        /// `uv`, `pixi` or `micromamba`.
        tool: &'static str,
        /// The executable tried.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// A file-system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing".
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Arc<io::Error>,
    },
    /// `wrap` was given a path that is not a directory.
    #[error("no environment at {}: not a directory", .0.display())]
    NotFound(PathBuf),
    /// The directory exists and consort did not build it, or another tool manages it.
    #[error("refusing to use {}: {reason}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The recipe cannot be built (e.g. nothing to install, an unknown file kind).
    #[error("invalid environment recipe: {0}")]
    Invalid(String),
    /// No Python interpreter in the environment.
    #[error("no Python interpreter (python, python3) in {}", dirs_list(.dirs))]
    NoPython {
        /// The folders searched.
        dirs: Vec<PathBuf>,
    },
    /// There is no default place for environments.
    #[error("no environments directory: set CONSORT_ENVS_DIR, APPOSE_ENVS_DIR or HOME, or give a directory")]
    NoHome,
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "PATH".to_owned();
    }
    dirs.iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl EnvError {
    pub(crate) fn io(what: &'static str, path: &Path, source: io::Error) -> EnvError {
        EnvError::Io {
            what,
            path: path.to_path_buf(),
            source: Arc::new(source),
        }
    }
}

/// What a build reports to its subscribers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildEvent {
    /// Step `current` of `maximum` begins (1-based), e.g. "creating the venv"; `0 of 0`
    /// for work outside the count (installing uv itself).
    Step {
        /// What the step does.
        title: String,
        /// Its number, from 1.
        current: u32,
        /// How many steps there are.
        maximum: u32,
    },
    /// A line the tool printed (carriage-return progress redraws count as lines).
    Output {
        /// `Stdout` or `Stderr`.
        stream: Stream,
        /// The line, without its terminator, lossily decoded as UTF-8.
        line: String,
    },
    /// The environment was already built with the same state: nothing was done.
    UpToDate,
    /// The build finished and the environment is marked built.
    Built,
}

/// Which output of a tool a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A build-event subscriber.
pub(crate) type Subscriber = Arc<dyn Fn(&BuildEvent) + Send + Sync>;

/// The default folder for environments: `CONSORT_ENVS_DIR`, else `APPOSE_ENVS_DIR` (so
/// consort and Appose can share one), else `$XDG_DATA_HOME/consort/envs`, else
/// `~/.local/share/consort/envs` (Appose's default is `~/.local/share/appose`).
///
/// # Errors
/// [`EnvError::NoHome`] when none of these variables is set.
pub fn envs_dir() -> Result<PathBuf, EnvError> {
    for var in ["CONSORT_ENVS_DIR", "APPOSE_ENVS_DIR"] {
        if let Some(dir) = std::env::var_os(var).filter(|dir| !dir.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(data).join("consort/envs"));
    }
    match std::env::var_os("HOME").filter(|dir| !dir.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/consort/envs")),
        None => Err(EnvError::NoHome),
    }
}

/// A place workers run: its directory, the folders holding its executables, the launcher
/// that activates it (pixi, micromamba), and variables to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    kind: EnvKind,
    base: PathBuf,
    bin_paths: Vec<PathBuf>,
    launcher: Vec<OsString>,
    vars: Vec<(OsString, OsString)>,
}

impl Environment {
    /// The system's environment: executables from `PATH`, working directory the current
    /// one (as `appose.system()`).
    pub fn system() -> Environment {
        Environment {
            kind: EnvKind::System,
            base: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            bin_paths: Vec::new(),
            launcher: Vec::new(),
            vars: Vec::new(),
        }
    }

    /// An environment that already exists in `dir`, recognised as Appose does: `.pixi/` or
    /// `pixi.toml` is a pixi project (needs `pixi` on `PATH`), `conda-meta/` a conda prefix
    /// (run through `micromamba run` when micromamba is on `PATH`, else directly with
    /// `CONDA_PREFIX` set), `pyvenv.cfg` a venv, `.venv/pyvenv.cfg` a uv project; any other
    /// directory is the system's environment with `<dir>/bin` first on `PATH`.
    ///
    /// # Errors
    /// [`EnvError::NotFound`] when `dir` is not a directory; [`EnvError::ToolMissing`] for a
    /// pixi project when `pixi` is not on `PATH`.
    pub fn wrap(dir: impl AsRef<Path>) -> Result<Environment, EnvError> {
        let dir = absolute(dir.as_ref());
        if !dir.is_dir() {
            return Err(EnvError::NotFound(dir));
        }
        if dir.join(".pixi").is_dir() || dir.join("pixi.toml").is_file() {
            let pixi = tool::find_on_path("pixi", None).ok_or_else(|| EnvError::ToolMissing {
                tool: "pixi",
                hint: format!(
                    "{} is a pixi project; {}",
                    dir.display(),
                    pixi::INSTALL_HINT
                ),
            })?;
            return Ok(pixi::environment(&pixi, &dir));
        }
        if dir.join("conda-meta").is_dir() {
            return Ok(match tool::find_on_path("micromamba", None) {
                Some(micromamba) => mamba::environment(&micromamba, &dir),
                None => Environment {
                    kind: EnvKind::Conda,
                    bin_paths: vec![dir.join("bin")],
                    launcher: Vec::new(),
                    vars: vec![("CONDA_PREFIX".into(), dir.clone().into_os_string())],
                    base: dir,
                },
            });
        }
        if dir.join("pyvenv.cfg").is_file() {
            return Ok(venv(&dir, &dir));
        }
        if dir.join(".venv/pyvenv.cfg").is_file() {
            return Ok(venv(&dir, &dir.join(".venv")));
        }
        let bin = dir.join("bin");
        Ok(Environment {
            kind: EnvKind::System,
            bin_paths: if bin.is_dir() { vec![bin] } else { Vec::new() },
            launcher: Vec::new(),
            vars: Vec::new(),
            base: dir,
        })
    }

    /// What manages this environment.
    pub fn kind(&self) -> EnvKind {
        self.kind
    }

    /// The environment's directory; workers start there.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The folders searched for executables, put first on the worker's `PATH`.
    pub fn bin_paths(&self) -> &[PathBuf] {
        &self.bin_paths
    }

    /// The launcher every command goes through (`pixi run --manifest-path ...`,
    /// `micromamba run -p ...`), empty when commands run directly.
    pub fn launcher(&self) -> &[OsString] {
        &self.launcher
    }

    /// Sets a variable for every command started in this environment.
    pub fn with_env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Environment {
        let key = key.as_ref().to_owned();
        self.vars.retain(|(existing, _)| *existing != key);
        self.vars.push((key, value.as_ref().to_owned()));
        self
    }

    /// The Python interpreter: the bare name `python` behind a launcher (which resolves
    /// it), else the first `python` or `python3` in the bin folders (for the system's
    /// environment, on `PATH`), by absolute path without resolving symlinks (a venv's
    /// `python` must stay a symlink).
    ///
    /// # Errors
    /// [`EnvError::NoPython`] when there is none.
    pub fn python(&self) -> Result<PathBuf, EnvError> {
        if !self.launcher.is_empty() {
            return Ok(PathBuf::from("python"));
        }
        let mut dirs = self.bin_paths.clone();
        if self.kind == EnvKind::System {
            dirs.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
        }
        for name in ["python", "python3"] {
            if let Some(found) = dirs
                .iter()
                .map(|dir| dir.join(name))
                .find(|p| is_executable(p))
            {
                return Ok(absolute(&found));
            }
        }
        Err(EnvError::NoPython {
            dirs: self.bin_paths.clone(),
        })
    }

    /// A recipe for consort's own Python worker ([`python::consort_worker_command`]) in
    /// this environment; it needs nothing installed but Python 3.9+.
    ///
    /// # Errors
    /// [`EnvError::NoPython`] when the environment has no Python.
    pub fn consort_python_service(&self) -> Result<ServiceBuilder, EnvError> {
        Ok(self.service(python::consort_worker_command(self.python()?)))
    }

    /// A recipe for Appose's Python worker ([`python::appose_worker_command`]) in this
    /// environment (`appose` must be installed in it).
    ///
    /// # Errors
    /// [`EnvError::NoPython`] when the environment has no Python.
    pub fn appose_python_service(&self) -> Result<ServiceBuilder, EnvError> {
        Ok(self.service(python::appose_worker_command(self.python()?)))
    }

    /// A recipe for a worker running `command` in this environment.
    ///
    /// The program goes behind the launcher if there is one; otherwise a bare program
    /// name found in the bin folders is run by its absolute path. The worker starts in
    /// the environment's directory unless `command` sets one; the bin folders come first
    /// on its `PATH`; the environment's variables are set; and the conda variables
    /// ([`CONDA_VARS`]) are removed unless `command` or the environment sets them.
    pub fn service(&self, command: Command) -> ServiceBuilder {
        Service::new(self.command_from(&command))
    }

    /// The command `command` becomes in this environment (see [`Environment::service`]).
    pub fn command_from(&self, command: &Command) -> Command {
        let program = command.get_program();
        let mut out = match self.launcher.split_first() {
            Some((launcher, launcher_args)) => {
                let mut out = Command::new(launcher);
                out.args(launcher_args).arg(program);
                out
            }
            None => Command::new(self.resolve(program)),
        };
        out.args(command.get_args());
        out.current_dir(command.get_current_dir().unwrap_or(&self.base));
        let mut set_by_caller: Vec<&OsStr> = Vec::new();
        let mut path = std::env::var_os("PATH");
        for (key, value) in command.get_envs() {
            if key == "PATH" {
                path = value.map(OsStr::to_owned);
            }
            if value.is_some() {
                set_by_caller.push(key);
            }
        }
        for var in CONDA_VARS {
            let var = OsStr::new(var);
            if !set_by_caller.contains(&var) && !self.vars.iter().any(|(key, _)| key == var) {
                out.env_remove(var);
            }
        }
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => out.env(key, value),
                None => out.env_remove(key),
            };
        }
        for (key, value) in &self.vars {
            if !set_by_caller.contains(&key.as_os_str()) {
                out.env(key, value);
            }
        }
        if !self.bin_paths.is_empty() {
            let mut dirs = self.bin_paths.clone();
            dirs.extend(std::env::split_paths(&path.unwrap_or_default()));
            if let Ok(joined) = std::env::join_paths(dirs) {
                out.env("PATH", joined);
            }
        }
        out
    }

    /// `program` by absolute path when it is a bare name found in the bin folders.
    fn resolve(&self, program: &OsStr) -> OsString {
        if Path::new(program).components().count() != 1 {
            return program.to_owned();
        }
        self.bin_paths
            .iter()
            .map(|dir| dir.join(program))
            .find(|path| is_executable(path))
            .map_or_else(
                || program.to_owned(),
                |path| absolute(&path).into_os_string(),
            )
    }
}

/// A venv-style environment whose base is `base` and whose venv is `venv`.
fn venv(base: &Path, venv: &Path) -> Environment {
    Environment {
        kind: EnvKind::Venv,
        base: base.to_path_buf(),
        bin_paths: vec![venv.join("bin")],
        launcher: Vec::new(),
        vars: Vec::new(),
    }
}

/// `path` made absolute against the current directory, without resolving symlinks.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// What every builder has: where, with which tool, with which extra flags and variables,
/// who listens, and how long a tool may run.
#[derive(Clone, Default)]
pub(crate) struct Common {
    pub(crate) name: Option<String>,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) tool: Option<PathBuf>,
    pub(crate) search_path: Option<OsString>,
    pub(crate) flags: Vec<String>,
    pub(crate) vars: Vec<(String, String)>,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) timeout: Option<Duration>,
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("tool", &self.tool)
            .field("flags", &self.flags)
            .field("vars", &self.vars)
            .field("n_subscribers", &self.subscribers.len())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Common {
    pub(crate) fn emit(&self, event: &BuildEvent) {
        for subscriber in &self.subscribers {
            // A panicking subscriber must not break the build or lose later events.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| subscriber(event)));
        }
    }

    /// The environment's directory: the one given, else `<envs_dir>/<name>`, where the
    /// name is the one given, else `default_name`.
    pub(crate) fn dir(&self, default_name: impl FnOnce() -> String) -> Result<PathBuf, EnvError> {
        if let Some(dir) = &self.dir {
            return Ok(absolute(dir));
        }
        let name = self.name.clone().unwrap_or_else(default_name);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(EnvError::Invalid(format!(
                "environment name {name:?} is not a plain file name"
            )));
        }
        Ok(absolute(&envs_dir()?.join(name)))
    }

    /// The shared part of every state: builder, flags, variables.
    pub(crate) fn state(&self, builder: &str) -> serde_json::Map<String, Value> {
        let mut state = serde_json::Map::new();
        state.insert("builder".into(), json!(builder));
        state.insert("flags".into(), json!(self.flags));
        let vars: serde_json::Map<String, Value> = self
            .vars
            .iter()
            .map(|(key, value)| (key.clone(), json!(value)))
            .collect();
        state.insert("envVars".into(), Value::Object(vars));
        state
    }
}

/// Where a recipe's file comes from: a path read at build time, or text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    File(PathBuf),
    Content(String),
}

impl Source {
    pub(crate) fn read(&self) -> Result<String, EnvError> {
        match self {
            Source::File(path) => {
                std::fs::read_to_string(path).map_err(|err| EnvError::io("reading", path, err))
            }
            Source::Content(text) => Ok(text.clone()),
        }
    }
}

/// The name of an environment whose recipe names none: the tool and 12 hex digits of the
/// hash of its state.
fn default_name(tool: &str, state: &Value) -> String {
    let text = serde_json::to_string(state).unwrap_or_default();
    format!("{tool}-{}", &python::content_hash(&text)[..12])
}

/// The `name` of a TOML manifest's `[project]`, `[workspace]` or `[tool.poetry]` table,
/// read line by line (enough for the names Appose reads; not a TOML parser).
pub(crate) fn toml_name(content: &str) -> Option<String> {
    let mut in_table = false;
    for line in content.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = matches!(line, "[project]" | "[workspace]");
            continue;
        }
        if in_table {
            if let Some(rest) = line.strip_prefix("name") {
                let value = rest.trim_start().strip_prefix('=')?.trim();
                let value = value.trim_matches(|c| c == '"' || c == '\'');
                return plain_name(value);
            }
        }
    }
    None
}

/// The top-level `name:` of an environment.yml.
pub(crate) fn yml_name(content: &str) -> Option<String> {
    content.lines().find_map(|line| {
        let value = line.strip_prefix("name:")?.trim();
        plain_name(value.trim_matches(|c| c == '"' || c == '\''))
    })
}

fn plain_name(value: &str) -> Option<String> {
    (!value.is_empty() && !value.contains('/') && value != "." && value != "..")
        .then(|| value.to_owned())
}

/// The state file of a built environment, if it is one.
pub fn built_state(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let marker: Value = serde_json::from_str(&text).ok()?;
    marker.get("state").cloned()
}

/// Deletes the environment in `dir` if consort built it (or began to), or if it is
/// empty; does nothing when it does not exist.
///
/// # Errors
/// [`EnvError::Refused`] for a directory consort did not build; [`EnvError::Io`] when
/// removing fails.
pub fn delete(dir: impl AsRef<Path>) -> Result<(), EnvError> {
    let dir = absolute(dir.as_ref());
    if !dir.exists() {
        return Ok(());
    }
    // Refuse before taking the lock, so a refused directory gets no lock file beside it.
    tool::BuildGuard::check_ours(&dir)?;
    tool::BuildGuard::lock(&dir)?.wipe()
}

#[cfg(test)]
mod tests;
