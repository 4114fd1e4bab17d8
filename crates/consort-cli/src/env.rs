//! `consort env build|delete`: environments from the command line, with a progress bar
//! and, on request, the tool's own output; and the build behind `--with PKG...`, which
//! starts a worker (of `run`, `map`, `bench`) in such an environment.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use consort::env::{BuildEvent, MambaBuilder, PixiBuilder, Stream, UvBuilder};
use consort::Environment;
use indicatif::{ProgressBar, ProgressStyle};

use crate::exit;

#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// Build an environment (nothing is done when it is up to date) and print its folder.
    Build(BuildArgs),
    /// Delete an environment consort built (a folder it did not build is refused).
    Delete {
        /// The environment's folder.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Tool {
    /// A Python venv with PyPI packages.
    Uv,
    /// A pixi project with conda (and `--pypi`) packages.
    Pixi,
    /// A conda prefix made by micromamba.
    Mamba,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The tool that builds it.
    #[arg(long, value_enum, default_value = "uv")]
    tool: Tool,
    /// A recipe file: requirements.txt or pyproject.toml (uv); pixi.toml, pyproject.toml
    /// or environment.yml (pixi); environment.yml (mamba).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// PyPI packages of a pixi project.
    #[arg(long, value_name = "PKG")]
    pypi: Vec<String>,
    /// Conda channels (pixi, mamba).
    #[arg(short = 'c', long = "channel", value_name = "CHANNEL")]
    channels: Vec<String>,
    /// The Python version or interpreter of a uv venv (`uv venv --python`).
    #[arg(long, value_name = "VERSION")]
    python: Option<String>,
    /// The environment's name, under the environments folder (CONSORT_ENVS_DIR,
    /// APPOSE_ENVS_DIR, or ~/.local/share/consort/envs).
    #[arg(long, conflicts_with = "dir")]
    name: Option<String>,
    /// The environment's folder, instead of one under the environments folder.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The tool's executable (default: found on PATH; uv is installed from PyPI with pip
    /// when it is nowhere).
    #[arg(long, value_name = "PATH")]
    tool_path: Option<PathBuf>,
    /// Kill the tool if one step takes longer than this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Delete and build again even if it is up to date.
    #[arg(long)]
    rebuild: bool,
    /// Show the tool's output.
    #[arg(short, long)]
    verbose: bool,
    /// Packages: PyPI (uv) or conda (pixi, mamba).
    #[arg(value_name = "PKG")]
    packages: Vec<String>,
}

pub fn run(cmd: EnvCmd) -> anyhow::Result<u8> {
    match cmd {
        EnvCmd::Build(args) => {
            let env = build(&args)?;
            println!("{}", env.base().display());
            Ok(exit::COMPLETE)
        }
        EnvCmd::Delete { dir } => {
            consort::env::delete(&dir).with_context(|| format!("deleting {}", dir.display()))?;
            Ok(exit::COMPLETE)
        }
    }
}

/// The uv environment `--with PKG...` asks for, on `python`: built the first time, with a
/// step bar on a terminal, and reused while the list is the same.
///
/// # Errors
/// When the build fails.
pub fn build_with_packages(packages: &[String], python: &OsStr) -> anyhow::Result<Environment> {
    let recipe = UvBuilder::new()
        .packages(packages.iter().cloned())
        .python(python.to_string_lossy());
    let bar = progress(false);
    let built = recipe
        .subscribe(subscriber(bar.clone(), false, false))
        .build();
    bar.finish_and_clear();
    Ok(built?)
}

fn build(args: &BuildArgs) -> anyhow::Result<Environment> {
    let bar = progress(args.verbose);
    let events = subscriber(bar.clone(), args.verbose, true);
    macro_rules! common {
        ($builder:expr) => {{
            let mut builder = $builder.subscribe(events);
            if let Some(name) = &args.name {
                builder = builder.with_name(name.clone());
            }
            if let Some(dir) = &args.dir {
                builder = builder.with_dir(dir.clone());
            }
            if let Some(tool) = &args.tool_path {
                builder = builder.with_tool(tool.clone());
            }
            if let Some(secs) = args.timeout {
                builder = builder.with_timeout(Duration::from_secs(secs));
            }
            if args.rebuild {
                builder.rebuild()
            } else {
                builder.build()
            }
        }};
    }
    let file_name = args
        .file
        .as_ref()
        .and_then(|file| file.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let built = match args.tool {
        Tool::Uv => {
            if !args.pypi.is_empty() || !args.channels.is_empty() {
                bail!("--pypi and --channel are for pixi and mamba; uv takes PyPI packages as arguments");
            }
            let mut builder = UvBuilder::new().packages(args.packages.iter().cloned());
            if let Some(file) = &args.file {
                builder = if file_name.ends_with(".toml") {
                    builder.pyproject(file)
                } else {
                    builder.requirements(file)
                };
            }
            if let Some(python) = &args.python {
                builder = builder.python(python.clone());
            }
            common!(builder)
        }
        Tool::Pixi => {
            let mut builder = PixiBuilder::new()
                .conda(args.packages.iter().cloned())
                .pypi(args.pypi.iter().cloned())
                .channels(args.channels.iter().cloned());
            if let Some(file) = &args.file {
                builder = builder.manifest(file)?;
            }
            common!(builder)
        }
        Tool::Mamba => {
            if !args.pypi.is_empty() {
                bail!("--pypi is for pixi");
            }
            let mut builder = MambaBuilder::new()
                .packages(args.packages.iter().cloned())
                .channels(args.channels.iter().cloned());
            if let Some(file) = &args.file {
                builder = builder.environment_yml(file);
            }
            common!(builder)
        }
    };
    bar.finish_and_clear();
    Ok(built?)
}

/// A step bar on a terminal's stderr (hidden elsewhere: there, steps are printed as lines).
fn progress(verbose: bool) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if !verbose {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar
}

/// Shows steps on the bar (or as lines when there is no terminal), the tool's output
/// lines when `verbose`, and a line for an environment already built when `say_up_to_date`.
fn subscriber(
    bar: ProgressBar,
    verbose: bool,
    say_up_to_date: bool,
) -> impl Fn(&BuildEvent) + Send + Sync + 'static {
    move |event| match event {
        BuildEvent::Step {
            title,
            current,
            maximum,
        } => {
            if bar.is_hidden() {
                eprintln!("consort: [{current}/{maximum}] {title}");
            } else {
                bar.set_length(u64::from(*maximum));
                bar.set_position(u64::from(current.saturating_sub(1)));
                bar.set_message(title.clone());
            }
        }
        BuildEvent::Output { stream, line } if verbose => {
            let tag = match stream {
                Stream::Stdout => "out",
                Stream::Stderr => "err",
            };
            bar.suspend(|| eprintln!("  {tag}: {line}"));
        }
        BuildEvent::UpToDate if say_up_to_date => bar.suspend(|| eprintln!("consort: up to date")),
        BuildEvent::Built => bar.set_position(bar.length().unwrap_or(0)),
        _ => {}
    }
}
