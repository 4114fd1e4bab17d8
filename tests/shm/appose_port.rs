//! Appose's `test_ndarray`, ported.
//!
//! Provenance: apposed/appose-python, tests/test_shm.py (the protocol of appose 0.12.0).
//! Licence of the original: BSD-2-Clause, "Copyright (c) 2023 - 2026, Appose developers.
//! All rights reserved."
//!
//! Changes from the original:
//! - the service is consort's `Service`, and the test runs against the real appose 0.12.0
//!   worker and against consort's Python worker;
//! - `appose.SharedMemory(create=True, rsize=2000)` becomes `SharedMemory::create(2000)`
//!   and `appose.NDArray("uint16", [2, 20, 25], shm)` becomes `NDArray::new`;
//! - the wait is bounded and the test runs under a watchdog;
//! - after the task, the block must still exist (the worker did not unlink it) and must be
//!   gone once the Rust handle is dropped.

use consort::{DType, NDArray, SharedMemory};

use super::{exists, finish, watchdog, workers};

const NDARRAY_INSPECT: &str = "
task.outputs[\"rsize\"] = data.shm.rsize
task.outputs[\"size\"] = data.shm.size
task.outputs[\"dtype\"] = data.dtype
task.outputs[\"shape\"] = data.shape
task.outputs[\"sum\"] = sum(v for v in data.shm.buf)
";

#[test]
fn test_ndarray() {
    let _watchdog = watchdog("test_ndarray");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let mut shm = SharedMemory::create(2 * 2 * 20 * 25).expect("create");
        // Construct the data.
        shm.as_mut_slice()[0] = 123;
        shm.as_mut_slice()[456] = 78;
        shm.as_mut_slice()[1999] = 210;
        let data = NDArray::new(DType::Uint16, &[2, 20, 25], shm).expect("ndarray");

        // Run the task.
        let task = service
            .task(NDARRAY_INSPECT)
            .input("data", &data)
            .submit()
            .expect("submit");
        let outputs = finish(&task).unwrap_or_else(|err| panic!("{worker}: {err}"));

        // Validate the execution result.
        // The requested size is 2*20*25*2=2000, but actual allocated
        // shm size varies by platform; e.g. on macOS it is 16384.
        assert_eq!(outputs["rsize"], 2 * 20 * 25 * 2, "{worker}");
        assert!(
            outputs["size"].as_u64() >= outputs["rsize"].as_u64(),
            "{worker}"
        );
        assert_eq!(outputs["dtype"], "uint16", "{worker}");
        assert_eq!(outputs["shape"], serde_json::json!([2, 20, 25]), "{worker}");
        assert_eq!(outputs["sum"], 123 + 78 + 210, "{worker}");

        service.close();
        let name = data.shm().name().to_owned();
        assert!(exists(&name), "{worker} unlinked the block");
        drop(data);
        assert!(!exists(&name), "{worker}: leftover {name}");
    }
}
