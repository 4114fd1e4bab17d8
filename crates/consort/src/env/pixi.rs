//! `PixiBuilder`: pixi projects from conda and PyPI packages, a pixi.toml, a
//! pyproject.toml or an environment.yml; workers run through `pixi run`.
//!
//! The commands are Appose's: a manifest is written to `<dir>` (an environment.yml is
//! imported with `pixi init --import`); a package list gives `pixi init`, `pixi add`,
//! `pixi add --pypi`; then `pixi install --manifest-path <manifest>`. pixi is found on
//! `PATH` or given; it is never downloaded (Appose fetches it from GitHub).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::tool::{self, Run};
use super::{Common, EnvError, EnvKind, Environment, Source};

/// How to get pixi, for the missing-tool error.
pub(crate) const INSTALL_HINT: &str = "install it from https://pixi.sh (or your package \
     manager), or give its path with PixiBuilder::with_tool";

/// A recipe for a pixi project.
#[derive(Debug, Clone, Default)]
pub struct PixiBuilder {
    common: Common,
    conda: Vec<String>,
    pypi: Vec<String>,
    channels: Vec<String>,
    source: Option<(Kind, Source)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    PixiToml,
    Pyproject,
    EnvironmentYml,
}

impl Kind {
    fn file_name(self) -> &'static str {
        match self {
            Kind::PixiToml => "pixi.toml",
            Kind::Pyproject => "pyproject.toml",
            Kind::EnvironmentYml => "environment.yml",
        }
    }
}

impl PixiBuilder {
    /// An empty recipe: add packages or a manifest.
    pub fn new() -> PixiBuilder {
        PixiBuilder::default()
    }

    /// Adds conda packages (match specs, e.g. `numpy>=2`, `python=3.11`).
    pub fn conda<S: Into<String>>(mut self, packages: impl IntoIterator<Item = S>) -> PixiBuilder {
        self.conda.extend(packages.into_iter().map(Into::into));
        self
    }

    /// Adds PyPI packages (installed by pixi after the conda ones).
    pub fn pypi<S: Into<String>>(mut self, packages: impl IntoIterator<Item = S>) -> PixiBuilder {
        self.pypi.extend(packages.into_iter().map(Into::into));
        self
    }

    /// Adds conda channels (default: pixi's, conda-forge).
    pub fn channels<S: Into<String>>(
        mut self,
        channels: impl IntoIterator<Item = S>,
    ) -> PixiBuilder {
        self.channels.extend(channels.into_iter().map(Into::into));
        self
    }

    /// Uses a manifest file (read when building): `pixi.toml`, `pyproject.toml`, or
    /// `environment.yml`/`.yaml` (imported), told apart by its name.
    ///
    /// # Errors
    /// [`EnvError::Invalid`] for another kind of file.
    pub fn manifest(mut self, path: impl Into<PathBuf>) -> Result<PixiBuilder, EnvError> {
        let path = path.into();
        let kind = kind_of(&path)?;
        self.source = Some((kind, Source::File(path)));
        Ok(self)
    }

    /// Uses manifest text of the kind `file_name` names (`pixi.toml`, `pyproject.toml`,
    /// `environment.yml`).
    ///
    /// # Errors
    /// [`EnvError::Invalid`] for another file name.
    pub fn manifest_content(
        mut self,
        file_name: &str,
        text: impl Into<String>,
    ) -> Result<PixiBuilder, EnvError> {
        let kind = kind_of(Path::new(file_name))?;
        self.source = Some((kind, Source::Content(text.into())));
        Ok(self)
    }

    builder_common!(PixiBuilder, "pixi");

    /// The canonical description of this recipe; equal states give equal environments.
    ///
    /// # Errors
    /// [`EnvError::Io`] when a manifest cannot be read.
    pub fn state(&self) -> Result<Value, EnvError> {
        let mut state = self.common.state("pixi");
        let (scheme, content) = match &self.source {
            Some((kind, source)) => (json!(kind.file_name()), json!(source.read()?)),
            None => (Value::Null, Value::Null),
        };
        state.insert("scheme".into(), scheme);
        state.insert("content".into(), content);
        state.insert("channels".into(), json!(self.channels));
        state.insert("condaPackages".into(), json!(self.conda));
        state.insert("pypiPackages".into(), json!(self.pypi));
        Ok(Value::Object(state))
    }

    /// The directory the project is (or will be) in.
    ///
    /// # Errors
    /// As [`PixiBuilder::state`], and [`EnvError::NoHome`] without a default folder.
    pub fn dir(&self) -> Result<PathBuf, EnvError> {
        let state = self.state()?;
        self.common.dir(|| {
            let content = state["content"].as_str().unwrap_or_default();
            let named = match self.source.as_ref().map(|source| source.0) {
                Some(Kind::EnvironmentYml) => super::yml_name(content),
                Some(_) => super::toml_name(content),
                None => None,
            };
            named.unwrap_or_else(|| super::default_name("pixi", &state))
        })
    }

    /// Builds the project unless it is already built with the same state.
    ///
    /// # Errors
    /// [`EnvError::ToolMissing`] without pixi, [`EnvError::ToolFailed`] with pixi's message
    /// when a step fails (nothing is then marked built), [`EnvError::Invalid`] when the
    /// recipe installs nothing.
    pub fn build(&self) -> Result<Environment, EnvError> {
        self.build_inner(false)
    }

    /// Deletes the project and builds it again.
    ///
    /// # Errors
    /// As [`PixiBuilder::build`].
    pub fn rebuild(&self) -> Result<Environment, EnvError> {
        self.build_inner(true)
    }

    /// Deletes the project (only one consort built).
    ///
    /// # Errors
    /// As [`super::delete`].
    pub fn delete(&self) -> Result<(), EnvError> {
        super::delete(self.dir()?)
    }

    fn build_inner(&self, force: bool) -> Result<Environment, EnvError> {
        if self.conda.is_empty() && self.pypi.is_empty() && self.source.is_none() {
            return Err(EnvError::Invalid(
                "a pixi environment needs packages or a manifest (pixi.toml, pyproject.toml, environment.yml)".into(),
            ));
        }
        let state = self.state()?;
        let dir = self.dir()?;
        // The launcher needs pixi even when nothing is built.
        let pixi = tool::find(&self.common, "pixi", &[], INSTALL_HINT)?;
        let common = &self.common;
        tool::build(common, &dir, &state, force, || {
            let run = |step: &str, args: Vec<OsString>| {
                Run {
                    tool: "pixi",
                    program: &pixi,
                    step,
                    args,
                    cwd: None,
                }
                .run(common)
            };
            let content = state["content"].as_str().unwrap_or_default();
            let manifest = manifest_path(&dir, self.source.as_ref().map(|source| source.0));
            let n_steps = match self.source {
                Some(_) => 2,
                None => 2 + u32::from(!self.conda.is_empty()) + u32::from(!self.pypi.is_empty()),
            };
            match self.source.as_ref().map(|source| source.0) {
                Some(Kind::EnvironmentYml) => {
                    tool::step(
                        common,
                        "importing environment.yml (pixi init --import)",
                        1,
                        2,
                    );
                    tool::create_dir(&dir)?;
                    let yml = dir.join("environment.yml");
                    tool::write(&yml, content)?;
                    run(
                        "importing environment.yml",
                        vec![
                            "init".into(),
                            "--import".into(),
                            yml.into(),
                            dir.clone().into(),
                        ],
                    )?;
                }
                Some(kind) => {
                    tool::step(common, &format!("writing {}", kind.file_name()), 1, 2);
                    tool::create_dir(&dir)?;
                    tool::write(&manifest, content)?;
                }
                None => {
                    tool::step(common, "creating the project (pixi init)", 1, n_steps);
                    let mut args: Vec<OsString> = vec!["init".into()];
                    for channel in &self.channels {
                        args.push("--channel".into());
                        args.push(channel.into());
                    }
                    args.push(dir.clone().into());
                    run("creating the project", args)?;
                    let mut current = 1;
                    for (packages, pypi) in [(&self.conda, false), (&self.pypi, true)] {
                        if packages.is_empty() {
                            continue;
                        }
                        current += 1;
                        let what = if pypi { "PyPI" } else { "conda" };
                        tool::step(
                            common,
                            &format!("adding {what} packages (pixi add)"),
                            current,
                            n_steps,
                        );
                        let mut args: Vec<OsString> = vec![
                            "add".into(),
                            "--manifest-path".into(),
                            manifest.clone().into(),
                        ];
                        if pypi {
                            args.push("--pypi".into());
                        }
                        args.extend(packages.iter().map(OsString::from));
                        run(&format!("adding {what} packages"), args)?;
                    }
                }
            }
            tool::step(common, "installing (pixi install)", n_steps, n_steps);
            run(
                "installing",
                vec![
                    "install".into(),
                    "--manifest-path".into(),
                    manifest.clone().into(),
                ],
            )
        })?;
        Ok(environment(&pixi, &dir))
    }
}

fn kind_of(path: &Path) -> Result<Kind, EnvError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    if name.ends_with("pixi.toml") {
        Ok(Kind::PixiToml)
    } else if name.ends_with("pyproject.toml") {
        Ok(Kind::Pyproject)
    } else if name.ends_with(".yml") || name.ends_with(".yaml") {
        Ok(Kind::EnvironmentYml)
    } else {
        Err(EnvError::Invalid(format!(
            "{} is not a pixi.toml, pyproject.toml or environment.yml",
            path.display()
        )))
    }
}

/// The manifest of a project in `dir`: pyproject.toml when that is what it was made
/// from (or all it has), else pixi.toml.
fn manifest_path(dir: &Path, kind: Option<Kind>) -> PathBuf {
    let pyproject = dir.join("pyproject.toml");
    if kind == Some(Kind::Pyproject) || (!dir.join("pixi.toml").exists() && pyproject.exists()) {
        pyproject
    } else {
        dir.join("pixi.toml")
    }
}

/// The pixi project in `dir`, run through `pixi run --manifest-path <manifest>`.
pub(crate) fn environment(pixi: &Path, dir: &Path) -> Environment {
    let manifest = manifest_path(dir, None);
    Environment {
        kind: EnvKind::Pixi,
        base: dir.to_path_buf(),
        bin_paths: vec![dir.join(".pixi/envs/default/bin")],
        launcher: vec![
            pixi.into(),
            "run".into(),
            "--manifest-path".into(),
            manifest.into(),
        ],
        vars: Vec::new(),
    }
}
