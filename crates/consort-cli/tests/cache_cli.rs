//! `consort cache`: torture's JSON report, stats, and check finding (and exit-coding) a
//! corrupted cache.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use consort_tests::Watchdog;
use serde_json::Value;

fn consort() -> Command {
    Command::new(env!("CARGO_BIN_EXE_consort"))
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let path =
            std::env::temp_dir().join(format!("consort-cache-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn torture_reports_json_and_stats_and_check_agree() {
    let _dog = Watchdog::new("cache torture", Duration::from_secs(60));
    let dir = Dir::new("torture");
    let out = consort()
        .args([
            "cache",
            "torture",
            "t",
            "--seconds",
            "1",
            "--writers",
            "2",
            "--json",
            "--dir",
        ])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "kills",
        "violations",
        "wrong_values",
        "max_recovery_ms",
        "ops",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}");
    }
    assert!(report["kills"].as_u64().unwrap() >= 5, "{report}");
    assert_eq!(report["violations"], 0, "{report}");
    assert_eq!(report["wrong_values"], 0, "{report}");
    assert!(report["ops"].as_u64().unwrap() > 0, "{report}");

    let out = consort()
        .args(["cache", "stats", "t", "--json", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["capacity"], 1024, "{stats}");
    assert!(stats["inserts"].as_u64().unwrap() > 0, "{stats}");

    let out = consort()
        .args(["cache", "check", "t", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("ok: 4 shards"),
        "{out:?}"
    );
}

#[test]
fn check_exits_1_on_a_corrupt_cache_and_errors_name_the_problem() {
    let _dog = Watchdog::new("cache check", Duration::from_secs(60));
    let dir = Dir::new("check");
    // Make a cache via a short torture, then break shard 0's `len`.
    let out = consort()
        .args([
            "cache",
            "torture",
            "c",
            "--seconds",
            "0.2",
            "--json",
            "--dir",
        ])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.0.join("c.cache"))
        .unwrap();
    // superblock page + participant table (3 pages), journal, then meta: len at +32
    file.write_at(&999_999u64.to_ne_bytes(), 3 * 4096 + 128 + 64 * 16 + 32)
        .unwrap();
    let out = consort()
        .args(["cache", "check", "c", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CORRUPT"),
        "{out:?}"
    );

    let out = consort().args(["cache", "stats", "../x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid cache name"),
        "{out:?}"
    );
    let out = consort()
        .args(["cache", "stats", "missing", "--dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no cache"),
        "{out:?}"
    );
}

#[test]
fn bench_cache_json_has_every_key() {
    let _dog = Watchdog::new("bench cache", Duration::from_secs(120));
    let out = consort()
        .args(["bench", "cache", "--gets", "20000", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "consort_get_per_s",
        "lmdb_get_per_s",
        "moka_get_per_s",
        "redis_get_per_s", // null when redis-server is not installed
        "consort_get_p99_ns",
        "consort_insert_per_s",
    ] {
        assert!(report.get(key).is_some(), "no {key} in {report}");
    }
    assert!(
        report["consort_get_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["consort_insert_per_s"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    // CI installs Redis (.ci/run, Debian's redis-server): the comparison must really have
    // run, and a machine without redis-server fails here rather than passing unchecked.
    assert!(
        report["redis_get_per_s"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0),
        "no Redis figure (.ci/run installs redis-server with apt-get): {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
