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

/// Issue 14: the blocks consort's own Python worker made were in no registry, so a crashed
/// worker leaked them where neither `shm ls` nor `shm gc` could see them. Now the worker
/// records each block it creates, with its own pid, in the registry its supervisor uses.
#[test]
fn issue_14_gc_removes_the_blocks_of_a_crashed_consort_python_worker() {
    let _watchdog = watchdog("shm-gc-python-worker");
    let random = consort::sys::random_u64().expect("random");
    let dir = std::env::temp_dir().join(format!("consort-shm-gc-py-{random:016x}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("registry dir");
    let registry = Registry::at(&dir);
    let service = consort::Service::consort_python(consort_tests::python())
        .with_env("CONSORT_SHM_REGISTRY", &dir)
        .start()
        .expect("start");
    let script = "made = [NDArray('float32', [256]), SharedMemory(rsize=100, create=True)]
task.export(made=made)
[made[0].shm.name, made[1].name]";
    let outputs = super::run(&service, "consort", script, &[]);
    let mut names: Vec<String> = outputs["result"]
        .as_array()
        .expect("names")
        .iter()
        .map(|name| name.as_str().expect("a name").to_owned())
        .collect();
    names.sort();

    let listed = registry.list().expect("list");
    let listed_names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(listed_names, names, "the worker recorded its blocks");
    for info in &listed {
        assert_eq!(info.creator_pid, service.pid(), "{info:?}");
        assert!(info.creator_alive && !info.kept, "{info:?}");
        assert!(info.size.is_some(), "{info:?}");
    }
    assert_eq!(
        registry.collectable().expect("collectable"),
        Vec::<String>::new(),
        "a live worker's blocks are not collectable"
    );

    service.kill();
    for name in &names {
        assert!(exists(name), "{name}: the crash left it behind");
    }
    let mut collected = registry.gc().expect("gc");
    collected.sort();
    assert_eq!(collected, names, "gc took the dead worker's blocks");
    for name in &names {
        assert!(!exists(name), "{name} was collected");
    }
    assert!(registry.list().expect("list").is_empty());
    std::fs::remove_dir_all(&dir).expect("clean up");
}
