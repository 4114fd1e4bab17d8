//! Rust and real Python share n-d arrays both ways, with Appose's worker and consort's: the
//! same memory, writes seen on both sides, nobody unlinking what it does not own, nothing
//! left in `/dev/shm` afterwards, and no resource-tracker warning.

use consort::{DType, NDArray};
use serde_json::json;

use super::{assert_no_tracker_noise, exists, run, watchdog, workers};

const SHAPE: [usize; 3] = [7, 512, 512];

/// The test pattern: exact in `float32`, and its sum is exact in `float64`.
fn pattern(idx: usize) -> f32 {
    ((idx as u64 * 7919) % 1000) as f32 * 0.25
}

const PYTHON_PATTERN: &str = "(numpy.arange(7 * 512 * 512, dtype=numpy.int64) * 7919 % 1000).astype(numpy.float32).reshape(7, 512, 512) * numpy.float32(0.25)";

fn checksums(array: &NDArray) -> (f64, u64) {
    let view = array.view::<f32>().expect("view");
    let sum = view.iter().map(|value| f64::from(*value)).sum();
    let xor = view.iter().fold(0u32, |acc, value| acc ^ value.to_bits());
    (sum, u64::from(xor))
}

#[test]
fn python_workers_read_and_write_an_array_rust_created() {
    let _watchdog = watchdog("ndarray-rust-creates");
    let script = "import numpy
a = data.ndarray()
task.outputs['dtype'] = str(a.dtype)
task.outputs['shape'] = list(a.shape)
task.outputs['sum'] = float(a.sum(dtype=numpy.float64))
task.outputs['xor'] = int(numpy.bitwise_xor.reduce(a.view(numpy.uint32).ravel()))
a[3, 100, 200] = 42.5
a[6, 511, 511] = -1.0
del a";
    for (worker, builder) in workers() {
        let mut array = NDArray::create(DType::Float32, &SHAPE).expect("create");
        for (idx, value) in array
            .view_mut::<f32>()
            .expect("view")
            .iter_mut()
            .enumerate()
        {
            *value = pattern(idx);
        }
        let (sum, xor) = checksums(&array);
        let service = builder.start().expect("start");
        let outputs = run(&service, worker, script, &[("data", array.to_json())]);
        assert_eq!(outputs["dtype"], "float32", "{worker}");
        assert_eq!(outputs["shape"], json!(SHAPE), "{worker}");
        assert_eq!(
            outputs["sum"].as_f64(),
            Some(sum),
            "{worker}: the same values"
        );
        assert_eq!(
            outputs["xor"].as_u64(),
            Some(xor),
            "{worker}: the same bits"
        );
        let view = array.view::<f32>().expect("view");
        assert_eq!(
            view[[3, 100, 200]],
            42.5,
            "{worker}: Rust sees the worker's writes"
        );
        assert_eq!(view[[6, 511, 511]], -1.0, "{worker}");
        assert_eq!(view[[6, 511, 510]], pattern(7 * 512 * 512 - 2), "{worker}");
        drop(view);

        service.close();
        let name = array.shm().name().to_owned();
        assert!(exists(&name), "{worker} unlinked the block when it exited");
        assert_no_tracker_noise(&service, worker);
        drop(array);
        assert!(!exists(&name), "{worker}: leftover {name}");
    }
}

#[test]
fn rust_attaches_an_array_python_created_and_owns_it_once_adopted() {
    let _watchdog = watchdog("ndarray-python-creates");
    let appose_ndarray = "import appose\nmake = appose.NDArray\n";
    let consort_ndarray = "import sys\nmake = sys.modules[type(task).__module__].NDArray\n";
    let [(_, appose_worker), (_, consort_worker)] = workers();
    let cases = [
        (
            "appose worker, appose.NDArray",
            &appose_worker,
            appose_ndarray,
        ),
        (
            "consort worker, its NDArray",
            &consort_worker,
            consort_ndarray,
        ),
        (
            "consort worker, appose.NDArray",
            &consort_worker,
            appose_ndarray,
        ),
    ];
    for (case, builder, make) in cases {
        let service = builder.start().expect("start");
        let create = format!(
            "{make}import numpy
made = make('float32', [7, 512, 512])
view = made.ndarray()
view[...] = {PYTHON_PATTERN}
del view
task.export(made=made)
task.outputs['array'] = made"
        );
        let outputs = run(&service, case, &create, &[]);
        let mut array = NDArray::from_json(&outputs["array"]).expect("attach");
        assert!(!array.shm().is_owner(), "{case}: attaching never owns");
        assert_eq!((array.dtype(), array.shape()), (DType::Float32, &SHAPE[..]));
        let expected: f64 = (0..7 * 512 * 512).map(|idx| f64::from(pattern(idx))).sum();
        assert_eq!(
            checksums(&array).0,
            expected,
            "{case}: the values Python wrote"
        );
        array.view_mut::<f32>().expect("view")[[0, 0, 0]] = 1234.0;
        let outputs = run(&service, case, "float(made.ndarray()[0, 0, 0])", &[]);
        assert_eq!(
            outputs["result"], 1234.0,
            "{case}: Python sees Rust's write"
        );

        service.close();
        let name = array.shm().name().to_owned();
        assert!(
            exists(&name),
            "{case}: the worker unlinked its block at exit; the service owns cleanup"
        );
        assert_no_tracker_noise(&service, case);
        array.shm_mut().adopt();
        drop(array);
        assert!(!exists(&name), "{case}: leftover {name}");
    }
}
