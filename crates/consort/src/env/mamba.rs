//! `MambaBuilder`: conda prefixes made by micromamba from conda packages or an
//! environment.yml; workers run through `micromamba run -p <prefix>`.
//!
//! The commands are Appose's: an environment.yml gives `micromamba create -y --no-rc
//! --prefix <dir>`, the file written to `<dir>/environment.yml`, then `micromamba env
//! update -y --no-rc --prefix <dir> -f <file>`. Beyond Appose, a package list with
//! channels gives one `micromamba create -y --no-rc --prefix <dir> -c <channel>...
//! <package>...`. micromamba is found on `PATH` or given; it is never downloaded.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::tool::{self, Run};
use super::{Common, EnvError, EnvKind, Environment, Source};

/// How to get micromamba, for the missing-tool error.
pub(crate) const INSTALL_HINT: &str = "install it from https://mamba.readthedocs.io \
     (or your package manager), or give its path with MambaBuilder::with_tool";

/// A recipe for a conda prefix made by micromamba.
#[derive(Debug, Clone, Default)]
pub struct MambaBuilder {
    common: Common,
    packages: Vec<String>,
    channels: Vec<String>,
    environment_yml: Option<Source>,
}

impl MambaBuilder {
    /// An empty recipe: add packages or an environment.yml.
    pub fn new() -> MambaBuilder {
        MambaBuilder::default()
    }

    /// Adds conda packages (match specs, e.g. `numpy>=2`, `python=3.11`).
    pub fn packages<S: Into<String>>(
        mut self,
        packages: impl IntoIterator<Item = S>,
    ) -> MambaBuilder {
        self.packages.extend(packages.into_iter().map(Into::into));
        self
    }

    /// Adds conda channels, searched in order (`-c`).
    pub fn channels<S: Into<String>>(
        mut self,
        channels: impl IntoIterator<Item = S>,
    ) -> MambaBuilder {
        self.channels.extend(channels.into_iter().map(Into::into));
        self
    }

    /// Makes the prefix from the environment.yml in `path` (read when building); its
    /// `name:` names the environment.
    pub fn environment_yml(mut self, path: impl Into<PathBuf>) -> MambaBuilder {
        self.environment_yml = Some(Source::File(path.into()));
        self
    }

    /// As [`MambaBuilder::environment_yml`], from text.
    pub fn environment_yml_content(mut self, text: impl Into<String>) -> MambaBuilder {
        self.environment_yml = Some(Source::Content(text.into()));
        self
    }

    builder_common!(MambaBuilder, "micromamba");

    /// The canonical description of this recipe; equal states give equal environments.
    ///
    /// # Errors
    /// [`EnvError::Io`] when the environment.yml cannot be read.
    pub fn state(&self) -> Result<Value, EnvError> {
        let mut state = self.common.state("mamba");
        let (scheme, content) = match &self.environment_yml {
            Some(source) => (json!("environment.yml"), json!(source.read()?)),
            None => (Value::Null, Value::Null),
        };
        state.insert("scheme".into(), scheme);
        state.insert("content".into(), content);
        state.insert("channels".into(), json!(self.channels));
        state.insert("packages".into(), json!(self.packages));
        Ok(Value::Object(state))
    }

    /// The directory the prefix is (or will be) in.
    ///
    /// # Errors
    /// As [`MambaBuilder::state`], and [`EnvError::NoHome`] without a default folder.
    pub fn dir(&self) -> Result<PathBuf, EnvError> {
        let state = self.state()?;
        self.common.dir(|| {
            state["content"]
                .as_str()
                .and_then(super::yml_name)
                .unwrap_or_else(|| super::default_name("mamba", &state))
        })
    }

    /// Builds the prefix unless it is already built with the same state.
    ///
    /// # Errors
    /// [`EnvError::ToolMissing`] without micromamba, [`EnvError::ToolFailed`] with
    /// micromamba's message when a step fails (nothing is then marked built),
    /// [`EnvError::Invalid`] when the recipe installs nothing.
    pub fn build(&self) -> Result<Environment, EnvError> {
        self.build_inner(false)
    }

    /// Deletes the prefix and builds it again.
    ///
    /// # Errors
    /// As [`MambaBuilder::build`].
    pub fn rebuild(&self) -> Result<Environment, EnvError> {
        self.build_inner(true)
    }

    /// Deletes the prefix (only one consort built).
    ///
    /// # Errors
    /// As [`super::delete`].
    pub fn delete(&self) -> Result<(), EnvError> {
        super::delete(self.dir()?)
    }

    fn build_inner(&self, force: bool) -> Result<Environment, EnvError> {
        if self.packages.is_empty() && self.environment_yml.is_none() {
            return Err(EnvError::Invalid(
                "a micromamba environment needs packages or an environment.yml".into(),
            ));
        }
        let state = self.state()?;
        let dir = self.dir()?;
        // The launcher needs micromamba even when nothing is built.
        let micromamba = tool::find(&self.common, "micromamba", &[], INSTALL_HINT)?;
        let common = &self.common;
        tool::build(common, &dir, &state, force, || {
            let run = |step: &str, args: Vec<OsString>| {
                Run {
                    tool: "micromamba",
                    program: &micromamba,
                    step,
                    args,
                    cwd: None,
                }
                .run(common)
            };
            let mut create: Vec<OsString> = vec![
                "create".into(),
                "-y".into(),
                "--no-rc".into(),
                "--prefix".into(),
                dir.clone().into(),
            ];
            for channel in &self.channels {
                create.push("-c".into());
                create.push(channel.into());
            }
            let Some(content) = state["content"].as_str() else {
                tool::step(common, "creating the prefix (micromamba create)", 1, 1);
                create.extend(self.packages.iter().map(OsString::from));
                return run("creating the prefix", create);
            };
            let n_steps = 2 + u32::from(!self.packages.is_empty());
            tool::step(
                common,
                "creating the prefix (micromamba create)",
                1,
                n_steps,
            );
            run("creating the prefix", create)?;
            let yml = dir.join("environment.yml");
            tool::write(&yml, content)?;
            tool::step(
                common,
                "installing environment.yml (micromamba env update)",
                2,
                n_steps,
            );
            let update: Vec<OsString> = vec![
                "env".into(),
                "update".into(),
                "-y".into(),
                "--no-rc".into(),
                "--prefix".into(),
                dir.clone().into(),
                "-f".into(),
                yml.into(),
            ];
            run("installing environment.yml", update)?;
            if self.packages.is_empty() {
                return Ok(());
            }
            tool::step(
                common,
                "installing packages (micromamba install)",
                3,
                n_steps,
            );
            let mut install: Vec<OsString> = vec![
                "install".into(),
                "-y".into(),
                "--no-rc".into(),
                "--prefix".into(),
                dir.clone().into(),
            ];
            for channel in &self.channels {
                install.push("-c".into());
                install.push(channel.into());
            }
            install.extend(self.packages.iter().map(OsString::from));
            run("installing packages", install)
        })?;
        Ok(environment(&micromamba, &dir))
    }
}

/// The conda prefix `dir`, run through `micromamba run -p <dir>`.
pub(crate) fn environment(micromamba: &Path, dir: &Path) -> Environment {
    Environment {
        kind: EnvKind::Conda,
        base: dir.to_path_buf(),
        bin_paths: vec![dir.join("bin")],
        launcher: vec![micromamba.into(), "run".into(), "-p".into(), dir.into()],
        vars: Vec::new(),
    }
}
