//! The handoff benchmark behind `consort bench ndarray` runs end to end on both Python
//! workers (a smoke test: 1 MiB, one repeat; no timing is asserted).

use consort::shm::bench::{self, NdarrayOptions};

use super::{assert_no_tracker_noise, watchdog, workers};

#[test]
fn the_ndarray_benchmark_runs_on_both_workers() {
    let _watchdog = watchdog("bench-ndarray");
    for (worker, builder) in workers() {
        let service = builder.start().expect("start");
        let mut options = NdarrayOptions::new(1);
        options.repeats = 1;
        let report =
            bench::ndarray(&service, &options).unwrap_or_else(|err| panic!("{worker}: {err}"));
        let json = serde_json::to_value(&report).expect("json");
        for key in ["mib", "shm_ms", "inline_ms", "copy_gbps", "memcpy_gbps"] {
            assert!(json[key].is_number(), "{worker}: {key} in {json}");
        }
        assert!(report.worker_sum_ms <= report.shm_ms, "{worker}: {json}");
        service.close();
        assert_no_tracker_noise(&service, worker);
    }
}
