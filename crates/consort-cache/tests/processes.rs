//! Real processes on one cache: the SIGKILL storm, a stopped (live) holder that must keep
//! its lock, 16 processes creating the same cache at once, reconfiguring under a live
//! mapping, and the file-safety rules.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use consort_cache::{torture, Cache, Error, Insert};
use support::{config, helper, open, run_helper, wait_until, KillOnDrop, TempDir, Watchdog};

#[test]
fn sigkill_storm_leaves_no_violation_and_no_wrong_value() {
    let _dog = Watchdog::new("storm", Duration::from_secs(120));
    let dir = TempDir::new("storm");
    let (capacity, shards) = (256, 4);
    let cache = open(dir.path(), "storm", capacity, shards);
    let mut spawn = |i: usize| {
        helper()
            .arg(dir.path())
            .arg("storm")
            .arg(format!("{capacity}/{shards}"))
            .args([
                "storm",
                &(i as u64 * 7919 + Instant::now().elapsed().as_nanos() as u64 + 1).to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
    };
    let report = torture::storm(
        &cache,
        2 * capacity as u64,
        2,
        Duration::from_secs(3),
        &mut spawn,
    )
    .unwrap();
    eprintln!("{report:?}");
    assert!(report.kills >= 10, "{report:?}");
    assert_eq!(report.violations, 0, "{report:?}");
    assert_eq!(report.wrong_values, 0, "{report:?}");
    let stats = cache.stats();
    assert!(stats.inserts > 100, "writers made no progress: {stats:?}");
    // No lost capacity: the cache still fills up completely.
    for id in 0..4 * capacity as u64 {
        cache
            .insert(&torture::key(id), &torture::value(id, 1), None)
            .unwrap();
    }
    let report = cache.check_invariants().unwrap();
    assert_eq!(report.live, cache.capacity(), "{report:?}");
}

/// User plus system CPU seconds of a live process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    // after the command: state is field 3, utime 14, stime 15 (1-based in proc(5))
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / rustix::param::clock_ticks_per_second() as f64
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn a_stopped_live_holder_keeps_its_lock() {
    let _dog = Watchdog::new("no false steal", Duration::from_secs(60));
    let dir = TempDir::new("stopped");
    let cache = open(dir.path(), "stopped", 8, 1);
    cache.insert(b"a", b"1", None).unwrap();
    // Stops itself in the middle of its insert transaction, holding the shard lock.
    let mut holder = helper()
        .arg(dir.path())
        .args(["stopped", "8/1", "insert", "held", "--stop", "12"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reaper = KillOnDrop(holder.id());
    assert!(
        wait_until(Duration::from_secs(10), || proc_state(holder.id())
            == Some('T')),
        "the holder never stopped"
    );
    // Four contenders; for 1.5 s none may finish (it would only finish by stealing), and
    // together they must sleep on the futex rather than spin.
    let mut contenders: Vec<_> = (0..4)
        .map(|i| {
            helper()
                .arg(dir.path())
                .args(["stopped", "8/1", "insert", &format!("other{i}")])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        for contender in &mut contenders {
            assert!(
                contender.try_wait().unwrap().is_none(),
                "a contender stole a live lock"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpu: f64 = contenders.iter().map(|c| cpu_seconds(c.id())).sum();
    let window = watch.elapsed().as_secs_f64();
    // Spinning would cost about a core each (at least 2 cores' worth here); futex waits
    // with a 2 ms probe cost about 1%.
    assert!(
        cpu < 0.5 * window,
        "4 waiters used {cpu:.2} s of CPU in {window:.2} s: spinning instead of sleeping"
    );
    // Readers are never blocked by the held lock.
    assert_eq!(cache.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(holder.id() as i32).unwrap(),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    let status = holder.wait().unwrap();
    reaper.0 = 0; // reaped: its pid may be reused now
    assert!(status.success());
    for (i, mut contender) in contenders.into_iter().enumerate() {
        assert!(contender.wait().unwrap().success());
        let key = format!("other{i}");
        assert!(cache.get(key.as_bytes()).unwrap().is_some(), "{key}");
    }
    assert_eq!(
        cache.stats().recoveries,
        0,
        "a live holder's work was rolled back"
    );
    assert_eq!(
        cache.get(b"held").unwrap().as_deref(),
        Some(&b"value-of-held"[..])
    );
    cache.check_invariants().unwrap();
}

/// `try_insert` never waits: it declines a shard whose lock a live process holds, and one a
/// dead writer left locked with its journal open (that is `insert`'s to steal and repair),
/// and writes again once `insert` has done so.
#[test]
fn try_insert_declines_a_held_lock_and_a_dead_writers_work() {
    let _dog = Watchdog::new("try_insert", Duration::from_secs(60));
    let dir = TempDir::new("try");
    let cache = open(dir.path(), "try", 8, 1);
    let mut holder = helper()
        .arg(dir.path())
        .args(["try", "8/1", "insert", "held", "--stop", "12"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut reaper = KillOnDrop(holder.id());
    assert!(
        wait_until(Duration::from_secs(10), || proc_state(holder.id())
            == Some('T')),
        "the holder never stopped"
    );
    // The promise is "never waits": a generous bound, far from a wait on a stopped holder.
    let watch = Instant::now();
    assert_eq!(cache.try_insert(b"k", b"v", None).unwrap(), None);
    assert!(watch.elapsed() < Duration::from_secs(1));
    holder.kill().unwrap();
    holder.wait().unwrap();
    reaper.0 = 0;
    assert_eq!(
        cache.try_insert(b"k", b"v", None).unwrap(),
        None,
        "a dead owner's lock is insert's to steal"
    );
    assert_eq!(cache.insert(b"k", b"v", None).unwrap(), Insert::Stored);
    assert_eq!(cache.stats().recoveries, 1);
    assert_eq!(
        cache.try_insert(b"k2", b"v", None).unwrap(),
        Some(Insert::Stored)
    );
    assert!(
        cache.get(b"held").unwrap().is_none(),
        "the dead insert was rolled back"
    );
    cache.check_invariants().unwrap();
}

/// The holder runs in its own PID namespace (where it is pid 1 and its pid means nothing
/// to us): it must keep its lock exactly as well. Needs `unshare --pid --fork` from
/// util-linux (Debian's `util-linux` package) and the right to use it (root, or user
/// namespaces). CI has both, so their absence fails the test: it never passes unchecked.
#[test]
fn a_stopped_holder_in_another_pid_namespace_keeps_its_lock() {
    let _dog = Watchdog::new("no false steal across namespaces", Duration::from_secs(60));
    let probe = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output()
        .unwrap_or_else(|err| {
            panic!("this test needs `unshare` (util-linux) on PATH, and running it failed: {err}")
        });
    assert!(
        probe.status.success(),
        "this test needs `unshare --pid --fork`, which failed here ({}): {}",
        probe.status,
        String::from_utf8_lossy(&probe.stderr).trim()
    );
    let dir = TempDir::new("pidns");
    let cache = open(dir.path(), "ns", 8, 1);
    // Under a shell, because the namespace's pid 1 ignores its own SIGSTOP.
    let mut unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "sh", "-c", "\"$@\"; exit $?", "sh"])
        .arg(env!("CARGO_BIN_EXE_consort-cache-helper"))
        .arg(dir.path())
        .args(["ns", "8/1", "insert", "held", "--stop", "12"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The helper is unshare's grandchild; find it from here and wait until it has stopped.
    let child_of = |pid: u32| -> Option<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut holder = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            holder = child_of(unshare.id()).and_then(child_of).unwrap_or(0);
            holder != 0 && proc_state(holder) == Some('T')
        }),
        "the namespaced holder never stopped"
    );
    let mut reaper = KillOnDrop(holder);
    let mut contender = helper()
        .arg(dir.path())
        .args(["ns", "8/1", "insert", "other"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        assert!(
            contender.try_wait().unwrap().is_none(),
            "the contender stole a live lock"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(holder as i32).unwrap(),
        rustix::process::Signal::CONT,
    )
    .unwrap();
    let status = unshare.wait().unwrap();
    reaper.0 = 0; // the holder was reaped inside the namespace before unshare exited
    assert!(status.success());
    assert!(contender.wait().unwrap().success());
    assert_eq!(
        cache.stats().recoveries,
        0,
        "a live holder's work was rolled back"
    );
    assert!(cache.get(b"held").unwrap().is_some());
    assert!(cache.get(b"other").unwrap().is_some());
    cache.check_invariants().unwrap();
}

#[test]
fn a_killed_holder_is_recovered_promptly() {
    let _dog = Watchdog::new("dead holder", Duration::from_secs(60));
    let dir = TempDir::new("dead");
    let cache = open(dir.path(), "dead", 8, 1);
    let out = run_helper(dir.path(), "dead", 8, 1, &["insert", "k", "--crash", "12"]);
    assert!(!out.status.success());
    let start = Instant::now();
    assert_eq!(cache.insert(b"k2", b"v", None).unwrap(), Insert::Stored);
    eprintln!("first insert after the kill took {:?}", start.elapsed());
    assert_eq!(cache.stats().recoveries, 1);
    assert_eq!(cache.get(b"k").unwrap(), None);
    cache.check_invariants().unwrap();
}

#[test]
fn sixteen_processes_create_one_cache() {
    let _dog = Watchdog::new("16 creators", Duration::from_secs(120));
    for round in 0..5 {
        let dir = TempDir::new("cold");
        let children: Vec<_> = (0..16)
            .map(|i| {
                helper()
                    .arg(dir.path())
                    .args(["cold", "64/2", "insert", &format!("k{i}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {out:?}");
        }
        let files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(files, ["cold.cache"], "round {round}");
        let cache = open(dir.path(), "cold", 64, 2);
        for i in 0..16 {
            assert!(
                cache.get(format!("k{i}").as_bytes()).unwrap().is_some(),
                "round {round}: k{i}"
            );
        }
        assert_eq!(cache.check_invariants().unwrap().live, 16);
    }
}

#[test]
fn other_parameters_are_a_typed_error_and_recreate_never_pulls_the_rug() {
    let _dog = Watchdog::new("mismatch", Duration::from_secs(60));
    let dir = TempDir::new("mismatch");
    let old = open(dir.path(), "m", 16, 1);
    old.insert(b"k", b"v", None).unwrap();
    let mut other = config(dir.path(), 16, 1);
    other.max_value = 128;
    match Cache::open("m", &other) {
        Err(Error::Mismatch {
            field,
            existing: 64,
            requested: 128,
            ..
        }) => {
            assert_eq!(field, "max_value")
        }
        res => panic!("expected a max_value mismatch, got {res:?}"),
    }
    let mut ttl = config(dir.path(), 16, 1);
    ttl.default_ttl = Some(Duration::from_secs(5));
    assert!(matches!(
        Cache::open("m", &ttl),
        Err(Error::Mismatch { .. })
    ));
    let new = Cache::recreate("m", &other).unwrap();
    // The old mapping stays valid: reads work, writes say it was retired.
    assert_eq!(old.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(old.is_retired());
    assert!(matches!(
        old.insert(b"k", b"w", None),
        Err(Error::Retired(_))
    ));
    assert_eq!(new.get(b"k").unwrap(), None);
    assert_eq!(new.insert(b"k", &[7; 100], None).unwrap(), Insert::Stored);
    assert_eq!(new.insert(b"k", &[7; 129], None).unwrap(), Insert::Oversize);
    let reopened = Cache::open("m", &other).unwrap();
    assert_eq!(
        reopened.get(b"k").unwrap().as_deref(),
        Some(&[7u8; 100][..])
    );
}

#[test]
fn recreate_under_four_busy_writers_retires_them_without_sigbus() {
    let _dog = Watchdog::new("recreate under load", Duration::from_secs(60));
    let dir = TempDir::new("busy");
    let cache = open(dir.path(), "busy", 64, 2);
    let mut writers: Vec<_> = (0..4)
        .map(|i| {
            helper()
                .arg(dir.path())
                .args(["busy", "64/2", "storm", &(i + 1).to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every writer has opened the cache before it is recreated: one that opened it after
    // would fail on the new parameters instead of being retired.
    for writer in &mut writers {
        let mut line = String::new();
        let stdout = writer.stdout.as_mut().unwrap();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
        assert_eq!(line, "storming\n", "a writer did not start");
    }
    let start = cache.stats().inserts;
    assert!(
        wait_until(Duration::from_secs(20), || cache.stats().inserts
            > start + 1000),
        "the writers never got going"
    );
    let mut bigger = config(dir.path(), 64, 2);
    bigger.max_value = 128;
    let new = Cache::recreate("busy", &bigger).unwrap();
    for writer in &mut writers {
        let mut status = None;
        assert!(
            wait_until(Duration::from_secs(20), || {
                status = writer.try_wait().unwrap();
                status.is_some()
            }),
            "a writer kept writing to a retired cache"
        );
        let status = status.unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), None, "a writer died of a signal (SIGBUS?)");
        assert_eq!(status.code(), Some(2));
    }
    for writer in writers {
        let err = String::from_utf8(writer.wait_with_output().unwrap().stderr).unwrap();
        assert!(err.contains("recreated by another process"), "{err}");
    }
    assert_eq!(new.check_invariants().unwrap().live, 0);
    cache.check_invariants().unwrap_err(); // the old handle is retired too
}

#[test]
fn files_are_private_and_names_validated() {
    let _dog = Watchdog::new("files", Duration::from_secs(60));
    let dir = TempDir::new("files");
    let cache = open(dir.path(), "p", 4, 1);
    let mode = std::fs::metadata(cache.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(129)] {
        assert!(
            matches!(
                Cache::open(bad, &config(dir.path(), 4, 1)),
                Err(Error::InvalidName { .. })
            ),
            "{bad:?} was accepted"
        );
    }
    // A symlink in place of the cache file is refused, never followed.
    std::os::unix::fs::symlink(cache.path(), dir.path().join("link.cache")).unwrap();
    assert!(matches!(
        Cache::open("link", &config(dir.path(), 4, 1)),
        Err(Error::NotPrivate { .. })
    ));
    // A directory open to others is refused.
    let open_dir = TempDir::new("opendir");
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(
        Cache::open("p", &config(open_dir.path(), 4, 1)),
        Err(Error::NotPrivate { .. })
    ));
    // A cache file readable by others is refused.
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        Cache::open("p", &config(dir.path(), 4, 1)),
        Err(Error::NotPrivate { .. })
    ));
}

#[test]
fn ttl_stats_and_purge() {
    let _dog = Watchdog::new("ttl", Duration::from_secs(60));
    let dir = TempDir::new("ttl");
    let cache = open(dir.path(), "t", 8, 2);
    cache
        .insert(b"short", b"1", Some(Duration::from_millis(1)))
        .unwrap();
    cache.insert(b"long", b"2", None).unwrap();
    assert!(wait_until(Duration::from_secs(10), || cache
        .get(b"short")
        .unwrap()
        .is_none()));
    assert_eq!(cache.get(b"long").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(cache.get_with(b"long", |v| v.len()).unwrap(), Some(1));
    assert_eq!(cache.purge_expired(10).unwrap(), 1);
    assert!(cache.remove(b"long").unwrap());
    assert!(!cache.remove(b"long").unwrap());
    for i in 0..20u32 {
        cache.insert(&i.to_le_bytes(), b"x", None).unwrap();
    }
    let stats = cache.stats();
    assert_eq!(stats.inserts, 22);
    assert_eq!(stats.expirations, 1);
    assert!(stats.evictions >= 12, "{stats:?}");
    assert!(stats.hits >= 2 && stats.misses >= 1, "{stats:?}");
    assert_eq!(stats.len, 8);
    cache.clear().unwrap();
    assert_eq!(cache.check_invariants().unwrap().live, 0);
}

/// Issue 14: truncating a cache file under running processes killed them with SIGBUS (exit
/// 135). The file is the user's own, so anyone running as the user can do it (`truncate`,
/// `: > file`, a copy over it). Now every process that has it mapped survives: its next
/// operation on the cache returns `Error::Corrupt` naming the truncation, no read returns a
/// value, and `Cache::recreate` makes a working cache under the same name.
#[test]
fn issue_14_truncating_the_file_under_live_processes_is_corrupt_not_sigbus() {
    use std::os::unix::process::ExitStatusExt;
    let _dog = Watchdog::new("truncate under load", Duration::from_secs(60));
    let dir = TempDir::new("truncate");
    let cache = open(dir.path(), "cut", 64, 2);
    let mut writer = helper()
        .arg(dir.path())
        .args(["cut", "64/2", "storm", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reaper = KillOnDrop(writer.id());
    let mut line = String::new();
    let stdout = writer.stdout.as_mut().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line, "storming\n", "the writer did not start");
    let start = cache.stats().inserts;
    assert!(
        wait_until(Duration::from_secs(20), || cache.stats().inserts
            > start + 1000),
        "the writer never got going"
    );
    // Keep the superblock page: the participant table and every shard are cut off.
    std::fs::OpenOptions::new()
        .write(true)
        .open(cache.path())
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            status = writer.try_wait().unwrap();
            status.is_some()
        }),
        "the writer kept writing to a truncated cache"
    );
    reaper.0 = 0;
    let status = status.unwrap();
    let err = String::from_utf8(writer.wait_with_output().unwrap().stderr).unwrap();
    assert_eq!(
        status.signal(),
        None,
        "the writer died of a signal (7 is SIGBUS): {err}"
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("is corrupt") && err.contains("truncated"),
        "{err}"
    );
    // This process has the file mapped too: every operation says so, none faults.
    for _ in 0..3 {
        match cache.get(&torture::key(1)) {
            Err(Error::Corrupt { what, .. }) => assert!(what.contains("truncated"), "{what}"),
            other => panic!("a read of a truncated cache gave {other:?}"),
        }
        assert!(matches!(
            cache.insert(&torture::key(1), &torture::value(1, 1), None),
            Err(Error::Corrupt { .. })
        ));
    }
    assert!(matches!(cache.check_headers(), Err(Error::Corrupt { .. })));
    // Opening it again is refused for its size; a recreate replaces it.
    assert!(matches!(
        Cache::open("cut", &config(dir.path(), 64, 2)),
        Err(Error::Corrupt { .. })
    ));
    let new = Cache::recreate("cut", &config(dir.path(), 64, 2)).unwrap();
    assert_eq!(new.insert(b"k", b"v", None).unwrap(), Insert::Stored);
    assert_eq!(new.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    // Cut to nothing, superblock included, while three threads of this process read and
    // write: each ends on the error, none on a signal, and no read returns a wrong value.
    let cut = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3u64)
            .map(|thread| {
                let (new, cut) = (&new, &cut);
                scope.spawn(move || {
                    let mut rng = torture::Rng::new(thread + 1);
                    loop {
                        let id = rng.below(128);
                        let result = if thread == 0 {
                            new.insert(&torture::key(id), &torture::value(id, 1), None)
                                .map(|_| ())
                        } else {
                            new.get_with(&torture::key(id), |bytes| {
                                assert!(torture::is_valid(id, bytes), "a wrong value");
                            })
                            .map(|_| ())
                        };
                        match result {
                            Ok(()) => {}
                            Err(Error::Corrupt { what, .. }) if cut.load(Ordering::SeqCst) => {
                                return what;
                            }
                            Err(err) => panic!("before the cut: {err}"),
                        }
                    }
                })
            })
            .collect();
        assert!(wait_until(Duration::from_secs(20), || new.stats().inserts > 1000));
        cut.store(true, Ordering::SeqCst);
        std::fs::OpenOptions::new()
            .write(true)
            .open(new.path())
            .unwrap()
            .set_len(0)
            .unwrap();
        for worker in workers {
            let what = worker.join().unwrap();
            assert!(what.contains("truncated"), "{what}");
        }
    });
}
