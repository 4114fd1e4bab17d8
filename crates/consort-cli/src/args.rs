//! The arguments that several commands share, each defined once: the worker (`--worker`,
//! `--python`), its environment (`--env`, `--with`), the script (`SCRIPT | -f FILE`, `-f -`
//! for stdin), the `--timeout` parser and the rule for input names; and [`Recipe`], what
//! the worker arguments resolve to: the service recipe and the very command it runs.
//!
//! The library's worker constructors are named here and nowhere else in the CLI, so that
//! a rename in the library touches one file.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use consort::{python, Environment, Service, ServiceBuilder};

/// Which worker to run tasks on; shared by `run`, `map` and `bench`.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// `consort` (consort's Python worker, the default), `appose` (Appose's Python
    /// worker; the interpreter needs `appose` installed), or a command line.
    #[arg(long, default_value = "consort")]
    pub worker: String,
    /// The Python interpreter of the `consort` and `appose` workers.
    #[arg(long, default_value = "python3")]
    pub python: OsString,
}

/// The environment the worker runs in; shared by `run`, `map` and `bench`.
#[derive(Debug, Clone, Default, Args)]
pub struct EnvArgs {
    /// Run the worker in this environment: a venv, a uv project, a pixi project or a
    /// conda prefix.
    #[arg(long = "env", value_name = "DIR", conflicts_with_all = ["with", "python"])]
    pub env: Option<PathBuf>,
    /// Run the worker in a uv environment with these PyPI packages (built the first
    /// time, under the environments folder, and reused while the list is the same).
    #[arg(long = "with", value_name = "PKG")]
    pub with: Vec<String>,
}

/// Where the script comes from; shared by `run`, `map` and `bench`.
///
/// Optional here: a command that needs a script says so with
/// `#[command(mut_arg("script", |arg| arg.required_unless_present_any(["file", "script_option"])))]`.
#[derive(Debug, Clone, Args)]
pub struct ScriptArgs {
    /// Read the script from FILE (`-` for stdin).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with_all = ["script", "script_option"]
    )]
    pub file: Option<PathBuf>,
    /// The same as SCRIPT: the spelling `consort bench` had before SCRIPT.
    #[arg(
        long = "script",
        value_name = "SCRIPT",
        hide = true,
        conflicts_with = "script"
    )]
    pub script_option: Option<String>,
    /// The script.
    pub script: Option<String>,
}

impl ScriptArgs {
    /// The script, if one was given; `-f -` reads it from stdin, unless `stdin_is_taken`
    /// (`map` reads its input lines there).
    ///
    /// # Errors
    /// When the file or stdin cannot be read, or `-f -` is given and stdin is taken.
    pub fn read(&self, stdin_is_taken: bool) -> anyhow::Result<Option<String>> {
        let script = match (&self.script, &self.script_option, &self.file) {
            (Some(script), _, _) | (None, Some(script), _) => script.clone(),
            (None, None, Some(path)) if path.as_os_str() == "-" => {
                if stdin_is_taken {
                    bail!("-f -: stdin carries the input lines here; give the script as an argument or in a file");
                }
                let mut script = String::new();
                std::io::stdin()
                    .read_to_string(&mut script)
                    .context("reading the script from stdin")?;
                script
            }
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the script from {}", path.display()))?,
            (None, None, None) => return Ok(None),
        };
        Ok(Some(script))
    }
}

/// Parses a `--timeout` in seconds: a number greater than 0, not NaN nor infinite, and
/// small enough for a [`Duration`] (fractions are fine: `0.5`).
///
/// # Errors
/// The reason, which clap prints after the bad value and the option's name (exit 2).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 30 or 0.5".to_owned())?;
    if secs.is_nan() || secs.is_infinite() {
        return Err("expected a finite number of seconds".to_owned());
    }
    if secs <= 0.0 {
        return Err("must be more than 0 seconds".to_owned());
    }
    match Duration::try_from_secs_f64(secs) {
        // Below a nanosecond, a Duration rounds to nothing.
        Ok(Duration::ZERO) => Err("must be more than 0 seconds".to_owned()),
        Ok(duration) => Ok(duration),
        Err(_) => Err("too large for a timeout".to_owned()),
    }
}

/// Python's keywords (soft keywords such as `match` are names the script can still use).
const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// Why `name` cannot name a task input, if it cannot; shared by `run --input` and `map`'s
/// input lines.
///
/// Inputs become the script's variables (consort's and Appose's Python workers bind them as
/// globals next to `task`), so a name must be one the script can write and that hides
/// nothing the script needs: ASCII letters, digits and `_`, not starting with a digit, not a
/// Python keyword, not `task`, and not a `__dunder__` name (`__builtins__` would take the
/// builtins away).
pub fn input_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !identifier {
        return Some(
            "not an identifier (ASCII letters, digits and `_`, not starting with a digit)",
        );
    }
    if name == "task" {
        return Some("the script's own `task` (its handle on the task) would be hidden");
    }
    if PYTHON_KEYWORDS.contains(&name) {
        return Some("a Python keyword, which the script cannot use as a variable");
    }
    if name.len() > 4 && name.starts_with("__") && name.ends_with("__") {
        return Some("a name Python reserves (`__...__`)");
    }
    None
}

/// A worker to start: the service recipe, the command it runs, and its interpreter.
#[derive(Debug)]
pub struct Recipe {
    /// The service recipe (the worker's command, its environment, its working directory).
    pub builder: ServiceBuilder,
    /// The `--worker` value, to name the worker in reports.
    pub label: String,
    /// The command `builder` runs, kept to start the same worker without a supervisor.
    command: Command,
    /// The Python interpreter of a Python worker, and the environment it runs in.
    python: Option<(OsString, Option<Environment>)>,
}

impl WorkerArgs {
    /// Whether the worker runs Python scripts (so default scripts are Python).
    pub fn is_python(&self) -> bool {
        matches!(self.worker.as_str(), "consort" | "appose")
    }

    /// The worker to start: in the environment `--env` or `--with` asks for (when `env` is
    /// given and says so), else as `--worker` and `--python` say.
    ///
    /// # Errors
    /// A `--worker` command line that does not parse, an environment that cannot be found
    /// or built, or one without a Python for a Python worker.
    pub fn recipe(&self, env: Option<&EnvArgs>) -> anyhow::Result<Recipe> {
        let environment = match env {
            Some(EnvArgs { env: Some(dir), .. }) => Some(Environment::wrap(dir)?),
            Some(EnvArgs { with, .. }) if !with.is_empty() => Some(
                crate::env::build_with_packages(with, &self.python)
                    .context("building the --with environment")?,
            ),
            _ => None,
        };
        let Some(environment) = environment else {
            let command = self.base_command(&self.python)?;
            let python = self.is_python().then(|| (self.python.clone(), None));
            return Ok(self.finish(command, python));
        };
        let python = if self.is_python() {
            Some(environment.python()?.into_os_string())
        } else {
            None
        };
        let base = self.base_command(python.as_deref().unwrap_or(&self.python))?;
        let mut command = environment.command_from(&base);
        // Appose starts workers in the environment's folder; a command line keeps the
        // user's, so relative paths in a script mean what they mean in the shell.
        command.current_dir(std::env::current_dir().context("reading the current directory")?);
        Ok(self.finish(command, python.map(|python| (python, Some(environment)))))
    }

    /// The worker's command before any environment: consort's or Appose's Python worker
    /// on `python`, or the `--worker` command line.
    fn base_command(&self, python: &OsStr) -> anyhow::Result<Command> {
        Ok(match self.worker.as_str() {
            "consort" => python::consort_worker_command(python),
            "appose" => python::appose_worker_command(python),
            line => command_line(line)?,
        })
    }

    fn finish(&self, command: Command, python: Option<(OsString, Option<Environment>)>) -> Recipe {
        Recipe {
            builder: Service::new(copy(&command)),
            label: self.worker.clone(),
            command,
            python,
        }
    }
}

impl Recipe {
    /// A new copy of the command the service runs: the same program, arguments,
    /// variables and working directory, with no supervisor around it.
    pub fn command(&self) -> Command {
        copy(&self.command)
    }

    /// Whether the worker runs Python scripts.
    pub fn is_python(&self) -> bool {
        self.python.is_some()
    }

    /// A command that runs the worker's Python interpreter (in its environment, behind
    /// its launcher if any), for reference measurements; `None` for other workers.
    pub fn python_command(&self) -> Option<Command> {
        let (python, environment) = self.python.as_ref()?;
        let command = Command::new(python);
        Some(match environment {
            Some(environment) => environment.command_from(&command),
            None => command,
        })
    }
}

/// The command of a `--worker` given as a command line, split as a shell would.
fn command_line(line: &str) -> anyhow::Result<Command> {
    let words =
        shell_words::split(line).map_err(|err| anyhow::anyhow!("--worker {line:?}: {err}"))?;
    let (program, args) = words
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("--worker is empty"))?;
    let mut command = Command::new(program);
    command.args(args);
    Ok(command)
}

/// A copy of `command` as far as a service sees it: program, arguments, variables set or
/// removed, working directory (what `Service::new` takes from a command).
fn copy(command: &Command) -> Command {
    let mut out = Command::new(command.get_program());
    out.args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => out.env(key, value),
            None => out.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        out.current_dir(dir);
    }
    out
}

#[cfg(test)]
mod tests;
