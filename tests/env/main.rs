//! Environments: uv for real (a numpy environment built, used, skipped when unchanged and
//! rebuilt when changed), pixi and micromamba against fake executables that record how
//! they were called, the real tools (ignored: they need conda channels that cannot be
//! reached here), and the failures: a missing tool, a failing install, a package that
//! does not exist.
//!
//! Every test runs under a [`Watchdog`] in its own temporary folder and waits with
//! bounds, never with sleeps.

mod fake;
mod real;
mod uv;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consort::env::BuildEvent;
use consort_tests::Watchdog;

fn watchdog(name: &str) -> Watchdog {
    Watchdog::new(name, Duration::from_secs(240))
}

/// A fresh folder under the system's temporary folder, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "consort-env-{tag}-{}-{:x}",
            std::process::id(),
            consort::sys::random_u64().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Collects build events.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<BuildEvent>>>);

impl Events {
    fn subscriber(&self) -> impl Fn(&BuildEvent) + Send + Sync + 'static {
        let events = Arc::clone(&self.0);
        move |event| events.lock().unwrap().push(event.clone())
    }

    fn take(&self) -> Vec<BuildEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn steps(events: &[BuildEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            BuildEvent::Step { title, .. } => Some(title.clone()),
            _ => None,
        })
        .collect()
}

/// Writes an executable shell script.
fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
