//! `consort shm ls` and `consort shm gc`: the shared-memory blocks consort and its Python
//! worker created, as the creator registry records them, and the removal of those whose
//! creator is dead.
//!
//! Both read the registry of `consort::shm::registry` (`$CONSORT_SHM_REGISTRY`, else
//! `$XDG_RUNTIME_DIR/consort/shm`, else `/tmp/consort-<uid>/shm`). Nothing outside it is
//! touched: a block consort did not create, or one whose creator is alive or that was kept,
//! is never unlinked.

use std::io::Write;

use anyhow::Context;
use clap::Subcommand;
use consort::shm::registry;

#[derive(Debug, Subcommand)]
pub enum ShmCmd {
    /// List the blocks consort and its Python worker created that are still recorded:
    /// name, size, creator pid, and whether the creator is alive.
    Ls {
        /// Print one JSON array of objects (name, rsize, size, creator_pid, creator_alive,
        /// kept) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Unlink the blocks whose creator is dead (not those it asked to keep); print their
    /// names.
    Gc {
        /// Print what would be unlinked, and unlink nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(cmd: ShmCmd) -> anyhow::Result<()> {
    let dir = registry::default_dir();
    let context = || format!("reading the shared-memory registry {}", dir.display());
    let mut stdout = std::io::stdout().lock();
    match cmd {
        ShmCmd::Ls { json: true } => {
            let blocks = registry::list().with_context(context)?;
            serde_json::to_writer(&mut stdout, &blocks)?;
            writeln!(stdout)?;
        }
        ShmCmd::Ls { json: false } => {
            let blocks = registry::list().with_context(context)?;
            writeln!(
                stdout,
                "{:<14} {:>14} {:>8}  creator",
                "name", "size", "pid"
            )?;
            for block in &blocks {
                // A record whose block is gone (its creator died between unlink and
                // record removal) is shown as such; `gc` removes the record.
                let size = block
                    .size
                    .map_or_else(|| "gone".to_owned(), |size| size.to_string());
                let state = if block.creator_alive { "alive" } else { "dead" };
                let kept = if block.kept { ", kept" } else { "" };
                writeln!(
                    stdout,
                    "{:<14} {:>14} {:>8}  {state}{kept}",
                    block.name, size, block.creator_pid
                )?;
            }
        }
        ShmCmd::Gc { dry_run } => {
            let names = if dry_run {
                registry::collectable()
            } else {
                registry::gc()
            }
            .with_context(context)?;
            for name in names {
                writeln!(stdout, "{name}")?;
            }
        }
    }
    stdout.flush()?;
    Ok(())
}
