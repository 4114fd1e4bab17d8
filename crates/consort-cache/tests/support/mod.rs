//! Shared by this crate's tests: a watchdog, private temp dirs, the helper binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consort_cache::{Cache, Config};

/// Aborts the test process, naming the test, if still armed after `limit`.
#[must_use]
pub struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    pub fn new(name: &str, limit: Duration) -> Watchdog {
        let disarmed = Arc::new(AtomicBool::new(false));
        let flag = disarmed.clone();
        let name = name.to_owned();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("watchdog: {name} still running after {limit:?}");
            std::process::abort();
        });
        Watchdog(disarmed)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls `cond` every 2 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// A private (0700) directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "consort-cache-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn config(dir: &Path, capacity: usize, shards: usize) -> Config {
    consort_cache::torture::config(Some(dir.to_path_buf()), capacity, shards)
}

pub fn open(dir: &Path, name: &str, capacity: usize, shards: usize) -> Cache {
    Cache::open(name, &config(dir, capacity, shards)).unwrap()
}

pub fn helper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consort-cache-helper"))
}

/// Runs the helper to completion: `DIR NAME CAPACITY/SHARDS args...`.
pub fn run_helper(dir: &Path, name: &str, capacity: usize, shards: usize, args: &[&str]) -> Output {
    helper()
        .arg(dir)
        .arg(name)
        .arg(format!("{capacity}/{shards}"))
        .args(args)
        .output()
        .unwrap()
}

/// SIGKILLs a process when dropped, so a failing test leaves no stopped helper behind.
/// Set the pid to 0 once the process is reaped (its pid may then be reused).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 != 0 {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}
