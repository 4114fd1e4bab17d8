//! `UvBuilder`: Python virtual environments made by uv from PyPI packages, a
//! requirements.txt or a pyproject.toml.
//!
//! As Appose's `UvBuilder`: a requirements.txt or a package list gives `uv venv <dir>`
//! then `uv pip install --python <dir>/bin/python ...`; a pyproject.toml is written to
//! `<dir>` and `uv sync` makes `<dir>/.venv`. Unlike Appose, `appose` is not added to the
//! packages (consort's own worker needs only Python), and uv is not downloaded from
//! GitHub: it is found on `PATH`, given, or installed with pip from PyPI (the `uv` wheel
//! carries the binary). Python downloads by uv are off (`UV_PYTHON_DOWNLOADS=never`)
//! unless the caller sets that variable.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::tool::{self, Run};
use super::{Common, EnvError, Environment, Source};

/// How to get uv, for the missing-tool error.
pub(crate) const INSTALL_HINT: &str = "install it with `pip install uv` (or see \
     https://docs.astral.sh/uv/), or give its path with UvBuilder::with_tool";

/// A recipe for a uv-made virtual environment.
#[derive(Debug, Clone, Default)]
pub struct UvBuilder {
    common: Common,
    packages: Vec<String>,
    source: Option<(Kind, Source)>,
    python: Option<String>,
    install_uv: Option<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Requirements,
    Pyproject,
}

impl UvBuilder {
    /// An empty recipe: add packages, a requirements.txt or a pyproject.toml.
    pub fn new() -> UvBuilder {
        UvBuilder::default()
    }

    /// Adds PyPI packages (pip requirement specifiers, e.g. `numpy>=2`).
    pub fn packages<S: Into<String>>(mut self, packages: impl IntoIterator<Item = S>) -> UvBuilder {
        self.packages.extend(packages.into_iter().map(Into::into));
        self
    }

    /// Installs the requirements in `path` (read when building).
    pub fn requirements(mut self, path: impl Into<PathBuf>) -> UvBuilder {
        self.source = Some((Kind::Requirements, Source::File(path.into())));
        self
    }

    /// Installs the requirements in `text`.
    pub fn requirements_content(mut self, text: impl Into<String>) -> UvBuilder {
        self.source = Some((Kind::Requirements, Source::Content(text.into())));
        self
    }

    /// Makes the environment from the pyproject.toml in `path` (read when building) with
    /// `uv sync`; its `[project] name` names the environment.
    pub fn pyproject(mut self, path: impl Into<PathBuf>) -> UvBuilder {
        self.source = Some((Kind::Pyproject, Source::File(path.into())));
        self
    }

    /// As [`UvBuilder::pyproject`], from text.
    pub fn pyproject_content(mut self, text: impl Into<String>) -> UvBuilder {
        self.source = Some((Kind::Pyproject, Source::Content(text.into())));
        self
    }

    /// The Python version or interpreter (`uv venv --python`, e.g. `3.11` or a path).
    pub fn python(mut self, version: impl Into<String>) -> UvBuilder {
        self.python = Some(version.into());
        self
    }

    /// When uv is nowhere to be found, installs it from PyPI with
    /// `python -m pip install --target <envs>/.uv/pip uv` using this interpreter
    /// (default `python3`).
    pub fn with_installer_python(mut self, python: impl Into<OsString>) -> UvBuilder {
        self.install_uv = Some(python.into());
        self
    }

    builder_common!(UvBuilder, "uv");

    /// The canonical description of this recipe; equal states give equal environments.
    ///
    /// # Errors
    /// [`EnvError::Io`] when a recipe file cannot be read.
    pub fn state(&self) -> Result<Value, EnvError> {
        let mut state = self.common.state("uv");
        let (scheme, content) = match &self.source {
            Some((Kind::Requirements, source)) => {
                (json!("requirements.txt"), json!(source.read()?))
            }
            Some((Kind::Pyproject, source)) => (json!("pyproject.toml"), json!(source.read()?)),
            None => (Value::Null, Value::Null),
        };
        state.insert("scheme".into(), scheme);
        state.insert("content".into(), content);
        state.insert("pythonVersion".into(), json!(self.python));
        state.insert("packages".into(), json!(self.packages));
        Ok(Value::Object(state))
    }

    /// The directory the environment is (or will be) in.
    ///
    /// # Errors
    /// As [`UvBuilder::state`], and [`EnvError::NoHome`] without a default folder.
    pub fn dir(&self) -> Result<PathBuf, EnvError> {
        let state = self.state()?;
        self.common.dir(|| match &state["content"] {
            Value::String(text) if self.source.as_ref().map(|s| s.0) == Some(Kind::Pyproject) => {
                super::toml_name(text).unwrap_or_else(|| super::default_name("uv", &state))
            }
            _ => super::default_name("uv", &state),
        })
    }

    /// Builds the environment unless it is already built with the same state.
    ///
    /// # Errors
    /// [`EnvError::ToolMissing`] when uv cannot be found or installed,
    /// [`EnvError::ToolFailed`] with uv's message when a step fails (nothing is then
    /// marked built), [`EnvError::Invalid`] when the recipe installs nothing.
    pub fn build(&self) -> Result<Environment, EnvError> {
        self.build_inner(false)
    }

    /// Deletes the environment and builds it again.
    ///
    /// # Errors
    /// As [`UvBuilder::build`].
    pub fn rebuild(&self) -> Result<Environment, EnvError> {
        self.build_inner(true)
    }

    /// Deletes the environment (only one consort built).
    ///
    /// # Errors
    /// As [`super::delete`].
    pub fn delete(&self) -> Result<(), EnvError> {
        super::delete(self.dir()?)
    }

    fn build_inner(&self, force: bool) -> Result<Environment, EnvError> {
        if self.packages.is_empty() && self.source.is_none() {
            return Err(EnvError::Invalid(
                "a uv environment needs packages, a requirements.txt or a pyproject.toml".into(),
            ));
        }
        if !self.packages.is_empty() && matches!(self.source, Some((Kind::Pyproject, _))) {
            return Err(EnvError::Invalid(
                "packages cannot be added to a pyproject.toml environment; list them in its dependencies".into(),
            ));
        }
        let state = self.state()?;
        let dir = self.dir()?;
        let mut common = self.common.clone();
        if !common
            .vars
            .iter()
            .any(|(key, _)| key == "UV_PYTHON_DOWNLOADS")
        {
            common
                .vars
                .push(("UV_PYTHON_DOWNLOADS".into(), "never".into()));
        }
        tool::build(&common, &dir, &state, force, || {
            let uv = self.find_uv(&common)?;
            self.run_steps(&common, &uv, &dir, &state)
        })?;
        Ok(environment(&dir))
    }

    fn run_steps(
        &self,
        common: &Common,
        uv: &Path,
        dir: &Path,
        state: &Value,
    ) -> Result<(), EnvError> {
        let python_args = |args: &mut Vec<OsString>| {
            if let Some(python) = &self.python {
                args.push("--python".into());
                args.push(python.into());
            }
        };
        let content = state["content"].as_str().unwrap_or_default();
        if let Some((Kind::Pyproject, _)) = self.source {
            tool::step(common, "writing pyproject.toml", 1, 2);
            tool::create_dir(dir)?;
            tool::write(&dir.join("pyproject.toml"), content)?;
            tool::step(common, "syncing the project (uv sync)", 2, 2);
            let mut args: Vec<OsString> = vec!["sync".into()];
            python_args(&mut args);
            return Run {
                tool: "uv",
                program: uv,
                step: "syncing the project",
                args,
                cwd: Some(dir),
            }
            .run(common);
        }
        let n_steps = 1 + u32::from(!self.packages.is_empty()) + u32::from(self.source.is_some());
        tool::step(common, "creating the venv (uv venv)", 1, n_steps);
        let mut args: Vec<OsString> = vec!["venv".into(), "--allow-existing".into()];
        python_args(&mut args);
        args.push(dir.into());
        Run {
            tool: "uv",
            program: uv,
            step: "creating the venv",
            args,
            cwd: None,
        }
        .run(common)?;
        let python = dir.join("bin/python");
        let mut current = 1;
        if self.source.is_some() {
            current += 1;
            let requirements = dir.join("requirements.txt");
            tool::write(&requirements, content)?;
            tool::step(
                common,
                "installing requirements.txt (uv pip install)",
                current,
                n_steps,
            );
            let args: Vec<OsString> = vec![
                "pip".into(),
                "install".into(),
                "--python".into(),
                python.clone().into(),
                "-r".into(),
                requirements.into(),
            ];
            Run {
                tool: "uv",
                program: uv,
                step: "installing requirements.txt",
                args,
                cwd: Some(dir),
            }
            .run(common)?;
        }
        if !self.packages.is_empty() {
            current += 1;
            tool::step(
                common,
                "installing packages (uv pip install)",
                current,
                n_steps,
            );
            let mut args: Vec<OsString> = vec![
                "pip".into(),
                "install".into(),
                "--python".into(),
                python.into(),
            ];
            args.extend(self.packages.iter().map(OsString::from));
            Run {
                tool: "uv",
                program: uv,
                step: "installing packages",
                args,
                cwd: Some(dir),
            }
            .run(common)?;
        }
        Ok(())
    }

    /// uv from the builder, `PATH`, `<envs>/.uv/bin/uv` (Appose's place) or a previous
    /// pip install, else installed now with pip.
    fn find_uv(&self, common: &Common) -> Result<PathBuf, EnvError> {
        let envs = super::envs_dir().ok();
        let installed = envs.as_ref().map(|envs| envs.join(".uv/pip/bin/uv"));
        let fallbacks: Vec<PathBuf> = envs
            .iter()
            .map(|envs| envs.join(".uv/bin/uv"))
            .chain(installed.clone())
            .collect();
        match tool::find(common, "uv", &fallbacks, INSTALL_HINT) {
            Ok(uv) => Ok(uv),
            Err(missing) if common.tool.is_some() => Err(missing),
            Err(missing) => {
                let (Some(envs), Some(installed)) = (envs, installed) else {
                    return Err(missing);
                };
                self.install_uv(common, &envs.join(".uv/pip"))?;
                if super::is_executable(&installed) {
                    Ok(installed)
                } else {
                    Err(EnvError::ToolMissing {
                        tool: "uv",
                        hint: format!(
                            "pip installed it but {} is missing; {INSTALL_HINT}",
                            installed.display()
                        ),
                    })
                }
            }
        }
    }

    /// `python -m pip install --target <target> uv`, from PyPI.
    fn install_uv(&self, common: &Common, target: &Path) -> Result<(), EnvError> {
        let python = self.install_uv.clone().unwrap_or_else(|| "python3".into());
        let python_path = if Path::new(&python).components().count() == 1 {
            tool::find_on_path(&python.to_string_lossy(), common.search_path.as_deref())
        } else {
            Some(PathBuf::from(&python))
        };
        let Some(python_path) = python_path else {
            return Err(EnvError::ToolMissing {
                tool: "uv",
                hint: format!(
                    "not on PATH, and no {} to install it with pip; {INSTALL_HINT}",
                    python.to_string_lossy()
                ),
            });
        };
        tool::step(common, "installing uv from PyPI (pip install uv)", 0, 0);
        let args: Vec<OsString> = vec![
            "-m".into(),
            "pip".into(),
            "install".into(),
            "--disable-pip-version-check".into(),
            "--no-input".into(),
            "--upgrade".into(),
            "--target".into(),
            target.into(),
            "uv".into(),
        ];
        // pip gets none of the builder's flags, which are uv's.
        let pip_common = Common {
            flags: Vec::new(),
            ..common.clone()
        };
        Run {
            tool: "uv",
            program: &python_path,
            step: "installing uv with pip",
            args,
            cwd: None,
        }
        .run(&pip_common)
        .map_err(|err| match err {
            EnvError::ToolFailed { message, .. } => EnvError::ToolMissing {
                tool: "uv",
                hint: format!(
                    "not on PATH, and `pip install uv` failed: {message}; {INSTALL_HINT}"
                ),
            },
            other => other,
        })
    }
}

/// The environment uv made in `dir`: `<dir>/.venv` after `uv sync`, else `<dir>` itself.
fn environment(dir: &Path) -> Environment {
    let venv = dir.join(".venv");
    if venv.join("pyvenv.cfg").is_file() {
        super::venv(dir, &venv)
    } else {
        super::venv(dir, dir)
    }
}
