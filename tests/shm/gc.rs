//! `shm gc` after a SIGKILLed creator: exactly the dead creator's blocks go; a live
//! creator's blocks, kept blocks and unregistered blocks stay.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use consort::shm::registry::Registry;
use consort::SharedMemory;

use super::{exists, watchdog};

/// Starts `shm_creator` registering into `registry`; returns it and the names it made.
fn creator(registry: &Registry, n_blocks: usize, n_kept: usize) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shm_creator"))
        .args([n_blocks.to_string(), n_kept.to_string()])
        .env("CONSORT_SHM_REGISTRY", registry.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn shm_creator");
    let mut names = Vec::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("read");
        if line == "ready" {
            return (child, names);
        }
        names.push(line);
    }
    panic!("shm_creator exited before it was ready: {:?}", child.wait());
}

#[test]
fn gc_removes_exactly_the_blocks_of_a_sigkilled_creator() {
    let _watchdog = watchdog("shm-gc");
    let random = consort::sys::random_u64().expect("random");
    let dir = std::env::temp_dir().join(format!("consort-shm-gc-{random:016x}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("registry dir");
    let registry = Registry::at(&dir);

    let (mut doomed, doomed_names) = creator(&registry, 3, 1);
    let (mut survivor, survivor_names) = creator(&registry, 2, 0);
    // A block of this process, in the default registry: not this registry's business.
    let bystander = SharedMemory::create(100).expect("create");

    let listed = registry.list().expect("list");
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(listed
        .iter()
        .all(|info| info.creator_alive && info.size.is_some()));

    consort_tests::kill(doomed.id(), 9);
    // Still a zombie (not reaped yet): a zombie holds no mapping, so it counts as dead.
    assert!(consort_tests::wait_until(Duration::from_secs(10), || {
        registry
            .list()
            .expect("list")
            .iter()
            .any(|info| info.name == doomed_names[0] && !info.creator_alive)
    }));
    let mut expected = doomed_names[..2].to_vec();
    expected.sort();
    let mut collectable = registry.collectable().expect("collectable");
    collectable.sort();
    assert_eq!(collectable, expected, "what gc would unlink");
    for name in &doomed_names {
        assert!(
            exists(name),
            "{name}: naming what gc would do unlinks nothing"
        );
    }
    let mut collected = registry.gc().expect("gc");
    collected.sort();
    assert_eq!(
        collected, expected,
        "exactly the dead creator's unkept blocks"
    );
    for name in &doomed_names[..2] {
        assert!(!exists(name), "{name} was collected");
    }
    let kept = &doomed_names[2];
    for name in survivor_names.iter().chain([kept]) {
        assert!(exists(name), "{name} was left alone");
    }
    assert!(exists(bystander.name()));
    let info = registry
        .list()
        .expect("list")
        .into_iter()
        .find(|info| &info.name == kept)
        .expect("the kept block is still listed");
    assert!(info.kept && !info.creator_alive);
    doomed.wait().expect("reap");

    // Asked explicitly, gc takes the dead creator's kept block too, and only it.
    assert_eq!(
        registry.gc_including_kept().expect("gc"),
        vec![kept.clone()]
    );
    assert!(!exists(kept));

    // The survivor ends normally: it unlinks its blocks and removes its records itself.
    drop(survivor.stdin.take());
    survivor.wait().expect("wait");
    for name in &survivor_names {
        assert!(!exists(name), "{name} was unlinked by its creator");
    }
    assert!(registry.list().expect("list").is_empty());
    assert!(registry.gc().expect("gc").is_empty());
    std::fs::remove_dir_all(&dir).expect("clean up");
    let _ = std::io::stdout().flush();
}
