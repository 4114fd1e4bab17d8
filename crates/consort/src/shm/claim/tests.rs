//! Unit tests for `shm::claim`: a block is taken over only when the worker made it for the
//! task; a short one of the task's is unlinked; everything else is left in place.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

fn exists(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

/// A private registry directory and the `/dev/shm` files a test made, all removed on drop,
/// even when the test fails.
struct Scratch {
    dir: PathBuf,
    files: Vec<String>,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let random = crate::sys::random_u64().expect("random");
        let dir = std::env::temp_dir().join(format!("consort-claim-{tag}-{random:016x}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("registry dir");
        Scratch {
            dir,
            files: Vec::new(),
        }
    }

    /// A claim for the blocks this process makes from `start` on, against this registry.
    fn claim(&self, start: Start) -> Claim {
        Claim::new(start, std::process::id()).with_registry(Registry::at(&self.dir))
    }

    /// A block that no handle will unlink on drop (the claim under test decides), in no
    /// registry.
    fn block(&mut self, rsize: usize) -> String {
        let mut block = SharedMemory::create(rsize).expect("create");
        block.keep();
        let name = block.name().to_owned();
        registry::forget(&name);
        self.files.push(name.clone());
        name
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for name in &self.files {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn descriptor(name: &str, rsize: usize) -> Value {
    json!({"appose_type": "shm", "name": name, "rsize": rsize})
}

#[test]
fn worker_names_are_psm_and_hex() {
    for good in [
        "psm_1a2b3c4d",
        "psm_DEADBEEF",
        "psm_0123456789abcdef01234567",
    ] {
        assert!(is_worker_name(good), "{good}");
    }
    for bad in [
        "psm_1a2b3c4",
        "psm_1a2b3c4g",
        "sem.psm_1a2b3c4d",
        "psm-1a2b3c4d",
        "psm_0123456789abcdef0123456789a",
        "consort-cache",
    ] {
        assert!(!is_worker_name(bad), "{bad}");
    }
}

#[test]
fn a_block_made_before_the_start_is_left_alone_and_one_made_after_is_taken() {
    let mut scratch = Scratch::new("age");
    let before = scratch.block(64);
    // A block made in the same tick of the coarse clock as the start counts as made after
    // it (the clock cannot tell): start on the next tick.
    let created = look(&before).expect("look").created.expect("a birth time");
    let start = loop {
        let start = Start::now();
        if start.wall.expect("Linux") > created {
            break start;
        }
        std::thread::yield_now();
    };
    let claim = scratch.claim(start);
    let after = scratch.block(64);

    match claim.take(&descriptor(&before, 64)) {
        Err(ClaimError::Refused {
            reason: Refusal::Older { .. },
            ..
        }) => {}
        other => panic!("{before}: {other:?}"),
    }
    assert!(exists(&before), "a block older than the start stays");
    let taken = claim
        .take(&descriptor(&after, 64))
        .expect("the worker's block");
    assert!(taken.is_owner() && taken.rsize() == 64);
    drop(taken);
    assert!(!exists(&after), "a taken block is unlinked on drop");
}

#[test]
fn names_workers_do_not_give_and_blocks_of_other_creators_are_left_alone() {
    let mut scratch = Scratch::new("names");
    let claim = scratch.claim(Start::now());
    let random = crate::sys::random_u64().expect("random");
    let stranger = format!("consort-claim-{random:016x}");
    scratch.files.push(stranger.clone());
    std::fs::write(Path::new("/dev/shm").join(&stranger), [0u8; 64]).expect("write");
    let recorded = scratch.block(64);
    std::fs::write(scratch.dir.join(&recorded), "pid=1\nstart=-\nrsize=64\n").expect("record");

    for (name, expected) in [
        (&stranger, Refusal::Name),
        (
            &recorded,
            Refusal::RecordedBy {
                pid: 1,
                worker: std::process::id(),
            },
        ),
    ] {
        match claim.take(&descriptor(name, 1)) {
            Err(ClaimError::Refused { reason, .. }) => assert_eq!(reason, expected, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(exists(name), "{name} stays");
    }

    // The same record, naming the worker's process group: the worker's block.
    std::fs::write(
        scratch.dir.join(&recorded),
        format!("pid=1\nstart=-\npgid={}\nrsize=64\n", std::process::id()),
    )
    .expect("record");
    drop(
        claim
            .take(&descriptor(&recorded, 1))
            .expect("a block of the worker's group"),
    );
    assert!(!exists(&recorded));
}

#[test]
fn a_short_block_of_the_task_is_unlinked() {
    let mut scratch = Scratch::new("short");
    let claim = scratch.claim(Start::now());
    let name = scratch.block(100);
    match claim.take(&descriptor(&name, 4096)) {
        Err(err @ ClaimError::Short { .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("100 bytes") && text.contains("4096") && text.contains("unlinked"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!exists(&name), "the short block was unlinked");
}
