//! Bad n-d array inputs reach consort's Python worker as clear task failures, never as a
//! lost request; the same descriptors are clear errors on the Rust side.

use consort::shm::ShmError;
use consort::{NDArray, SharedMemory, TaskError};
use serde_json::json;

use super::{finish, watchdog};

#[test]
fn bad_ndarrays_fail_their_task_with_the_reason() {
    let _watchdog = watchdog("ndarray-bad-input");
    let block = SharedMemory::create(16).expect("create");
    let shm = block.to_json();
    let cases = [
        (
            json!({"appose_type": "ndarray", "dtype": "float32", "shape": [5], "shm": shm}),
            "needs 20 bytes",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "float16", "shape": [2], "shm": shm}),
            "unknown dtype",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [2],
                   "shm": {"appose_type": "shm", "name": "../psm_x", "rsize": 2}}),
            "invalid shared-memory name",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [2],
                   "shm": {"appose_type": "shm", "name": "a..b", "rsize": 2}}),
            "invalid shared-memory name",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [2],
                   "shm": {"appose_type": "shm", "name": "psm_00000000", "rsize": 2}}),
            "No such file",
        ),
        (
            json!({"appose_type": "ndarray", "dtype": "uint8", "shape": [2],
                   "shm": {"appose_type": "shm", "name": block.name(), "rsize": 17}}),
            "fewer than the rsize 17",
        ),
    ];
    let service = consort::Service::consort_python(consort_tests::python())
        .start()
        .expect("start");
    for (descriptor, expected) in &cases {
        // Rust refuses it too, with its own words.
        assert!(NDArray::from_json(descriptor).is_err(), "{descriptor}");
        let task = service
            .task("data.ndarray()")
            .input("data", descriptor)
            .submit()
            .expect("submit");
        match finish(&task) {
            Err(TaskError::Failed { message, .. }) => {
                assert!(message.contains(expected), "{descriptor}: {message}");
            }
            other => panic!("{descriptor}: expected a failure, got {other:?}"),
        }
    }
    // The worker is still serving.
    let outputs = finish(&service.task("1 + 1").submit().expect("submit")).expect("still alive");
    assert_eq!(outputs["result"], 2);
    assert!(matches!(
        NDArray::from_json(&cases[2].0),
        Err(ShmError::InvalidName { .. })
    ));
}
