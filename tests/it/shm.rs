//! Shared-memory blocks between Rust and real Python, both ways, with Appose's worker and
//! consort's: the bytes are the same memory, and nobody unlinks what it does not own.

use std::time::Duration;

use consort::shm::{SharedMemory, ShmError};
use consort::{Service, ServiceBuilder};
use consort_tests::python;

use super::{finish, watchdog};

fn python_workers() -> [(&'static str, ServiceBuilder); 2] {
    let python = python();
    [
        ("appose", Service::appose_python(&python)),
        ("consort", consort::Service::consort_python(&python)),
    ]
}

#[test]
fn python_workers_read_and_write_a_block_rust_created() {
    let _watchdog = watchdog("shm-rust-creates");
    for (worker, builder) in python_workers() {
        let mut block = SharedMemory::create(1 << 20).expect("create");
        for (idx, byte) in block.as_mut_slice().iter_mut().enumerate() {
            *byte = (idx % 251) as u8;
        }
        let expected: u64 = block.as_slice().iter().map(|byte| u64::from(*byte)).sum();
        let service = builder.start().expect("start");
        let script = "total = sum(bytes(block.buf[:block.rsize]))\nblock.buf[0] = 200\nblock.buf[block.rsize - 1] = 201\ntotal";
        let task = service
            .task(script)
            .input("block", block.to_json())
            .submit()
            .expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(
            outputs["result"], expected,
            "{worker}: the worker read the same bytes"
        );
        assert_eq!(
            block.as_slice()[0],
            200,
            "{worker}: Rust sees the worker's write"
        );
        assert_eq!(block.as_slice()[(1 << 20) - 1], 201, "{worker}");
        service.close();
        // The worker attached and exited: the block must still be there (no premature
        // unlink by Python's resource tracker), and the worker said nothing about it.
        assert!(
            SharedMemory::attach(block.name()).is_ok(),
            "{worker} unlinked our block"
        );
        let stderr = service.stderr_lines().join("\n");
        assert!(!stderr.contains("resource_tracker"), "{worker}: {stderr}");
        let name = block.name().to_owned();
        drop(block);
        assert!(
            matches!(SharedMemory::attach(&name), Err(ShmError::NotFound(_))),
            "{worker}: leftover {name}"
        );
    }
}

#[test]
fn rust_attaches_a_block_python_created_without_unlinking_it() {
    let _watchdog = watchdog("shm-python-creates");
    for (worker, builder) in python_workers() {
        let service = builder.start().expect("start");
        let create = "from multiprocessing import shared_memory\nmade = shared_memory.SharedMemory(create=True, size=4096)\nmade.buf[:3] = b'abc'\ntask.export(made=made)\nmade.name.lstrip('/')";
        let outputs = finish(&service.task(create).submit().expect("submit"))
            .unwrap_or_else(|err| panic!("{worker}: {err}"));
        let name = outputs["result"].as_str().expect("a name").to_owned();
        {
            let mut attached = SharedMemory::attach(&name).expect("attach");
            assert!(!attached.is_owner());
            assert_eq!(&attached.as_slice()[..3], b"abc");
            attached.as_mut_slice()[3] = b'd';
        }
        // Dropping our handle did not unlink it: Python still sees it, and our write.
        let check = "bytes(made.buf[:4]).decode()";
        let outputs = finish(&service.task(check).submit().expect("submit"))
            .unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert_eq!(outputs["result"], "abcd", "{worker}");
        finish(
            &service
                .task("made.close()\nmade.unlink()")
                .submit()
                .expect("submit"),
        )
        .unwrap_or_else(|err| panic!("{worker}: {err}"));
        assert!(consort_tests::wait_until(
            Duration::from_secs(10),
            || matches!(SharedMemory::attach(&name), Err(ShmError::NotFound(_)))
        ));
        service.close();
    }
}
