//! Unit tests for `shm::registry`: records follow blocks, and `gc` touches only the blocks
//! of dead creators that it can prove are the recorded ones.

use std::os::unix::fs::PermissionsExt;

use super::super::{SharedMemory, ShmError};
use super::*;

/// A pid above Linux's largest `pid_max` (2^22): never a running process.
const DEAD_PID: u32 = (1 << 22) + 1;

/// A private, empty registry directory, removed on drop.
struct TempRegistry(Registry);

impl TempRegistry {
    fn new(tag: &str) -> TempRegistry {
        let random = crate::sys::random_u64().expect("random");
        let dir = std::env::temp_dir().join(format!("consort-reg-{tag}-{random:016x}"));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("temp registry");
        TempRegistry(Registry::at(dir))
    }

    fn record(&self, name: &str, text: &str) {
        fs::write(self.0.dir().join(name), text).expect("write record");
    }
}

impl Drop for TempRegistry {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.0.dir());
    }
}

fn ino_of(name: &str) -> u64 {
    inspect(name).expect("inspect").expect("exists").ino
}

fn exists(name: &str) -> bool {
    !matches!(SharedMemory::attach(name), Err(ShmError::NotFound(_)))
}

#[test]
fn records_parse_and_skip_what_they_do_not_know() {
    let entry = Entry::parse("pid=12\nstart=-\npgid=11\nrsize=40\nfuture=x\nino=7\nkept=1\n")
        .expect("entry");
    assert_eq!(
        entry,
        Entry {
            pid: 12,
            start: None,
            pgid: Some(11),
            rsize: 40,
            ino: Some(7),
            kept: true
        }
    );
    assert!(Entry::parse("pid=12\n").is_none());
    assert!(Entry::parse("garbage").is_none());
}

#[test]
fn this_process_is_alive_and_a_recycled_pid_is_not() {
    let me = std::process::id();
    let start = process_start(me);
    assert!(start.is_some(), "this test needs /proc");
    assert!(creator_alive(me, start));
    assert!(creator_alive(me, None));
    assert!(!creator_alive(me, start.map(|start| start + 1)));
    assert!(!creator_alive(DEAD_PID, None));
}

#[test]
fn a_created_block_is_recorded_until_unlinked_and_a_kept_one_is_marked() {
    let block = SharedMemory::create(100).expect("create");
    let name = block.name().to_owned();
    let listed = list().expect("list");
    let info = listed
        .iter()
        .find(|info| info.name == name)
        .expect("the new block is listed");
    assert_eq!(
        (
            info.rsize,
            info.size,
            info.creator_pid,
            info.creator_alive,
            info.kept
        ),
        (100, Some(100), std::process::id(), true, false)
    );
    let record = fs::read_to_string(default_dir().join(&name)).expect("record");
    assert!(
        record.contains(&format!("ino={}\n", ino_of(&name))),
        "{record}"
    );
    let mode = fs::metadata(default_dir())
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    drop(block);
    assert!(
        !default_dir().join(&name).exists(),
        "the record left with the block"
    );

    let mut kept = SharedMemory::create(10).expect("create");
    kept.keep();
    let name = kept.name().to_owned();
    drop(kept);
    let info = list()
        .expect("list")
        .into_iter()
        .find(|info| info.name == name)
        .expect("a kept block stays listed");
    assert!(info.kept && info.size == Some(10));
    SharedMemory::unlink(&name).expect("unlink");
    assert!(
        !default_dir().join(&name).exists(),
        "unlink forgets the record"
    );
}

#[test]
fn gc_unlinks_exactly_the_blocks_of_dead_creators() {
    let registry = TempRegistry::new("gc");
    let me = std::process::id();
    let my_start = process_start(me).expect("/proc");
    let make = || {
        let mut block = SharedMemory::create(64).expect("create");
        block.keep();
        // Its own record in the default registry goes: this test writes its own records.
        forget(block.name());
        block.name().to_owned()
    };
    let orphan = make();
    let recycled = make();
    let alive = make();
    let kept = make();
    let renamed = make();
    let pending = make();
    let gone = "psm_0000dead";
    registry.record(
        &orphan,
        &format!(
            "pid={DEAD_PID}\nstart=5\nrsize=64\nino={}\n",
            ino_of(&orphan)
        ),
    );
    registry.record(
        &recycled,
        &format!(
            "pid={me}\nstart={}\nrsize=64\nino={}\n",
            my_start + 1,
            ino_of(&recycled)
        ),
    );
    registry.record(
        &alive,
        &format!(
            "pid={me}\nstart={my_start}\nrsize=64\nino={}\n",
            ino_of(&alive)
        ),
    );
    registry.record(
        &kept,
        &format!(
            "pid={DEAD_PID}\nstart=-\nrsize=64\nino={}\nkept=1\n",
            ino_of(&kept)
        ),
    );
    // The name now belongs to another object than the one recorded: not ours to unlink.
    registry.record(
        &renamed,
        &format!(
            "pid={DEAD_PID}\nstart=-\nrsize=64\nino={}\n",
            ino_of(&renamed) + 1
        ),
    );
    // The creator died between creating the block and writing its inode.
    registry.record(&pending, &format!("pid={DEAD_PID}\nstart=-\nrsize=64\n"));
    registry.record(gone, &format!("pid={DEAD_PID}\nstart=-\nrsize=64\nino=1\n"));
    registry.record("not-a-record", "pid=1\nrsize=1\n");

    let listed = registry.0.list().expect("list");
    let names: Vec<&str> = listed.iter().map(|info| info.name.as_str()).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    let gone_info = listed
        .iter()
        .find(|info| info.name == gone)
        .expect("listed");
    assert_eq!((gone_info.size, gone_info.creator_alive), (None, false));
    assert!(
        listed
            .iter()
            .find(|info| info.name == alive)
            .expect("listed")
            .creator_alive
    );

    let mut unlinked = registry.0.gc().expect("gc");
    unlinked.sort();
    let mut expected = vec![orphan.clone(), recycled.clone(), pending.clone()];
    expected.sort();
    assert_eq!(unlinked, expected);
    for name in &expected {
        assert!(!exists(name), "{name} was unlinked");
    }
    for name in [&alive, &kept, &renamed] {
        assert!(exists(name), "{name} was left alone");
    }
    let left: Vec<String> = registry
        .0
        .list()
        .expect("list")
        .into_iter()
        .map(|info| info.name)
        .collect();
    assert_eq!(
        left.len(),
        3,
        "stale records went, the others stayed: {left:?}"
    );
    assert!(
        left.contains(&alive) && left.contains(&kept) && left.contains(&"not-a-record".to_owned())
    );

    assert_eq!(
        registry.0.gc_including_kept().expect("gc"),
        vec![kept.clone()]
    );
    assert!(!exists(&kept));
    for name in [alive, renamed] {
        SharedMemory::unlink(&name).expect("clean up");
    }
}

#[test]
fn a_registry_others_can_write_is_refused() {
    let registry = TempRegistry::new("open");
    fs::set_permissions(registry.0.dir(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = registry.0.gc().expect_err("refused");
    assert!(err.to_string().contains("closed to others"), "{err}");
    assert!(Registry::at(registry.0.dir().join("missing"))
        .list()
        .expect("empty")
        .is_empty());
}
