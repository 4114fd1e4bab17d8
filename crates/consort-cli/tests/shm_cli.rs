//! Shared memory from the command line (issue 5): `consort run --input NAME=@FILE.npy` and
//! `--save-arrays` on both Python workers, the input block unlinked however the run ends,
//! `consort shm ls` and `consort shm gc` after a SIGKILLed `consort run`, and a smoke run
//! of `consort bench ndarray`.
//!
//! Each test uses its own creator registry (`CONSORT_SHM_REGISTRY`), so blocks made by
//! other tests or programs on the machine are never counted or collected.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use consort_tests::{python, slowdown, wait_until, Watchdog};
use serde_json::Value;

/// A private scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let random = consort::sys::random_u64().expect("random");
        let dir = std::env::temp_dir().join(format!("consort-{what}-{random:016x}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("scratch dir");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join("registry"))
            .expect("registry dir");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The names recorded in this scratch's creator registry.
    fn records(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("registry"))
            .expect("read the registry")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with("psm_"))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `consort ARGS` with this scratch's registry.
fn consort(scratch: &Scratch, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consort"));
    command
        .args(args)
        .env("CONSORT_SHM_REGISTRY", scratch.path("registry"))
        .stdin(Stdio::null());
    command
}

/// `consort run --worker WORKER --python PYTHON ARGS`.
fn run(scratch: &Scratch, worker: &str, python: &Path, args: &[&str]) -> Command {
    let mut command = consort(scratch, &["run", "--worker", worker, "--python"]);
    command.arg(python).args(args);
    command
}

fn block_exists(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A JSON string literal, for `--input NAME=JSON`.
fn json_string(path: &Path) -> String {
    serde_json::to_string(path.to_str().expect("UTF-8 path")).expect("JSON")
}

/// Writes a float32 [3, 50, 70] array with awkward values (-0.0, inf, nan, subnormals) as
/// `path` with numpy.
fn write_npy(path: &Path) {
    let status = Command::new(python())
        .arg("-c")
        .arg(
            "import sys, numpy
a = (numpy.arange(3 * 50 * 70, dtype='float32') * numpy.float32(1.37) - 5).reshape(3, 50, 70)
a[0, 0, :4] = [-0.0, numpy.inf, numpy.nan, 1e-45]
numpy.save(sys.argv[1], a)",
        )
        .arg(path)
        .status()
        .expect("run python");
    assert!(status.success(), "numpy wrote {}", path.display());
}

/// The consort worker on the test Python started with `-S`: no site-packages, so neither
/// numpy nor appose, only the standard library.
fn bare_python(scratch: &Scratch) -> PathBuf {
    let wrapper = scratch.path("bare-python");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", python().display()),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    wrapper
}

/// Waits for the file a script writes its input block's name into, and reads it.
fn read_name(child: &mut Child, path: &Path) -> String {
    let limit = Duration::from_secs(60) * slowdown();
    let written = wait_until(limit, || {
        std::fs::read_to_string(path).is_ok_and(|text| text.ends_with('\n'))
            || child.try_wait().expect("try_wait").is_some()
    });
    assert!(
        written,
        "no block name in {} within {limit:?}",
        path.display()
    );
    let name = std::fs::read_to_string(path).unwrap_or_else(|err| {
        panic!(
            "consort run ended ({:?}) before its script wrote {}: {err}",
            child.try_wait(),
            path.display()
        )
    });
    name.trim_end().to_owned()
}

#[test]
fn an_npy_input_round_trips_bit_for_bit_through_both_workers_and_leaves_no_block() {
    let _watchdog = Watchdog::new("shm-cli-round-trip", Duration::from_secs(120));
    let scratch = Scratch::new("shm-cli-round-trip");
    let input = scratch.path("a.npy");
    write_npy(&input);
    let original = std::fs::read(&input).expect("read a.npy");

    // An Appose script that makes its output array; `same` hands the input back.
    let numpy_script = "from appose import NDArray
out = NDArray(a.dtype, a.shape)
out.ndarray()[:] = a.ndarray()
task.outputs['out'] = out
task.outputs['same'] = a
a.shape";
    // The same without numpy or appose installed: consort's worker alone.
    let stdlib_script = "from appose import NDArray
import appose
assert appose.SharedMemory is SharedMemory, 'a plain name, as NDArray is'
out = NDArray(a.dtype, a.shape)
out.shm.buf[:a.shm.rsize] = a.shm.buf[:a.shm.rsize]
task.outputs['out'] = out
task.outputs['same'] = a
import sys
assert 'numpy' not in sys.modules and not hasattr(sys.modules['appose'], '__file__')
a.shape";
    let bare = bare_python(&scratch);
    let cases = [
        ("consort", python(), numpy_script),
        ("appose", python(), numpy_script),
        ("consort", bare, stdlib_script),
    ];
    for (case_idx, (worker, interpreter, script)) in cases.iter().enumerate() {
        let saved = scratch.path(&format!("saved-{case_idx}"));
        std::fs::create_dir(&saved).expect("mkdir");
        let input_spec = format!("a=@{}", input.display());
        let output = run(
            &scratch,
            worker,
            interpreter,
            &[
                "--input",
                &input_spec,
                "--save-arrays",
                saved.to_str().expect("UTF-8"),
                script,
            ],
        )
        .output()
        .expect("run consort");
        let case = format!("{worker} on {}", interpreter.display());
        assert_eq!(output.status.code(), Some(0), "{case}: {}", stderr(&output));

        // The outputs print as Appose ndarray descriptors.
        let outputs: Value = serde_json::from_slice(&output.stdout).expect("JSON outputs");
        assert_eq!(outputs["result"], serde_json::json!([3, 50, 70]), "{case}");
        for name in ["out", "same"] {
            let descriptor = &outputs[name];
            assert_eq!(descriptor["appose_type"], "ndarray", "{case}: {outputs}");
            assert_eq!(descriptor["dtype"], "float32", "{case}: {outputs}");
            assert_eq!(
                descriptor["shape"],
                serde_json::json!([3, 50, 70]),
                "{case}"
            );
            let block = descriptor["shm"]["name"].as_str().expect("a block name");
            assert!(!block_exists(block), "{case}: {block} was unlinked");
            let file = saved.join(format!("{name}.npy"));
            let bytes = std::fs::read(&file).expect("the saved array");
            assert!(
                bytes == original,
                "{case}: {} differs from a.npy",
                file.display()
            );
        }
        assert_ne!(
            outputs["out"]["shm"]["name"],
            outputs["same"]["shm"]["name"]
        );
        assert_eq!(scratch.records(), Vec::<String>::new(), "{case}");
    }
}

#[test]
fn bad_npy_inputs_and_a_bad_save_dir_are_usage_errors() {
    let _watchdog = Watchdog::new("shm-cli-bad-input", Duration::from_secs(60));
    let scratch = Scratch::new("shm-cli-bad-input");
    std::fs::write(scratch.path("text.txt"), "hello").expect("write");
    std::fs::write(scratch.path("bad.npy"), "\x7fELF, not numpy").expect("write");
    // Issue 14: a negative dimension said only "shape".
    let mut negative = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    negative.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, -4), }");
    negative.resize(128 - 1, b' ');
    negative.push(b'\n');
    std::fs::write(scratch.path("negative.npy"), negative).expect("write");
    let path = |name: &str| scratch.path(name).display().to_string();
    let cases = [
        (format!("a=@{}", path("text.txt")), "only .npy files"),
        (format!("a=@{}", path("missing.npy")), "No such file"),
        (format!("a=@{}", path("bad.npy")), "not a .npy file"),
        ("a=@".to_owned(), "no file after '@'"),
        (
            format!("a=@{}", path("negative.npy")),
            "dimension 1 of the shape is -4, and a dimension cannot be negative",
        ),
    ];
    for (spec, expected) in &cases {
        let output = run(&scratch, "consort", &python(), &["--input", spec, "1"])
            .output()
            .expect("run consort");
        assert_eq!(output.status.code(), Some(2), "{spec}: {}", stderr(&output));
        let text = stderr(&output);
        assert!(
            text.contains(spec) && text.contains(expected),
            "{spec}: {text}"
        );
    }
    let missing_dir = path("no-such-dir");
    let output = run(
        &scratch,
        "consort",
        &python(),
        &["--save-arrays", &missing_dir, "1"],
    )
    .output()
    .expect("run consort");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("not an existing directory"));
    assert_eq!(scratch.records(), Vec::<String>::new());
}

#[test]
fn the_input_block_is_unlinked_after_a_timeout_a_crash_a_ctrl_c_and_a_hangup() {
    let _watchdog = Watchdog::new("shm-cli-teardown", Duration::from_secs(120));
    let scratch = Scratch::new("shm-cli-teardown");
    let input = scratch.path("a.npy");
    write_npy(&input);
    let input_spec = format!("a=@{}", input.display());
    // The script says which block it got, then waits: for the cancel of --timeout, for the
    // gate file (then the worker dies), or forever (Ctrl-C; SIGHUP, as when the terminal
    // closes, whose default action would end consort before it cleans up).
    let prelude = "import os, time
with open(name_file + '.tmp', 'w') as f:
    f.write(a.shm.name + '\\n')
os.rename(name_file + '.tmp', name_file)
";
    let timeout = (3 * slowdown()).to_string();
    let cases: [(&str, Vec<&str>, String, i32); 4] = [
        (
            "timeout",
            vec!["--timeout", &timeout],
            format!(
                "{prelude}while not task.cancel_requested:\n    time.sleep(0.01)\ntask.cancel()"
            ),
            124,
        ),
        (
            "crash",
            vec![],
            format!("{prelude}while not os.path.exists(gate):\n    time.sleep(0.01)\nos._exit(5)"),
            3,
        ),
        (
            "ctrl-c",
            vec![],
            format!("{prelude}while True:\n    time.sleep(0.01)"),
            130,
        ),
        (
            "hangup",
            vec![],
            format!("{prelude}while True:\n    time.sleep(0.01)"),
            130,
        ),
    ];
    for (case, extra, script, expected_code) in &cases {
        let name_file = scratch.path(&format!("{case}.name"));
        let gate = scratch.path(&format!("{case}.gate"));
        let name_input = format!("name_file={}", json_string(&name_file));
        let gate_input = format!("gate={}", json_string(&gate));
        let mut args = vec![
            "--input",
            &input_spec,
            "--input",
            &name_input,
            "--input",
            &gate_input,
        ];
        args.extend(extra.iter().copied());
        args.push(script);
        let mut child = run(&scratch, "consort", &python(), &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn consort");
        let name = read_name(&mut child, &name_file);
        assert!(block_exists(&name), "{case}: {name} exists during the run");
        assert_eq!(scratch.records(), vec![name.clone()], "{case}");
        match *case {
            "crash" => std::fs::write(&gate, "").expect("open the gate"),
            "ctrl-c" => consort_tests::kill(child.id(), 2),
            "hangup" => consort_tests::kill(child.id(), 1),
            _ => {}
        }
        let status = child.wait().expect("wait for consort");
        assert_eq!(status.code(), Some(*expected_code), "{case}");
        assert!(!block_exists(&name), "{case}: {name} was unlinked");
        assert_eq!(scratch.records(), Vec::<String>::new(), "{case}");
    }
}

#[test]
fn shm_ls_and_gc_act_only_on_the_blocks_of_a_sigkilled_consort_run() {
    let _watchdog = Watchdog::new("shm-cli-gc", Duration::from_secs(120));
    let scratch = Scratch::new("shm-cli-gc");
    let input = scratch.path("a.npy");
    write_npy(&input);
    let input_spec = format!("a=@{}", input.display());
    let script = "import os, time
with open(name_file + '.tmp', 'w') as f:
    f.write(a.shm.name + '\\n')
os.rename(name_file + '.tmp', name_file)
while not os.path.exists(gate):
    time.sleep(0.01)";
    let start = |label: &str| {
        let name_file = scratch.path(&format!("{label}.name"));
        let gate = scratch.path(&format!("{label}.gate"));
        let mut child = run(
            &scratch,
            "consort",
            &python(),
            &[
                "--input",
                &input_spec,
                "--input",
                &format!("name_file={}", json_string(&name_file)),
                "--input",
                &format!("gate={}", json_string(&gate)),
                script,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn consort");
        let name = read_name(&mut child, &name_file);
        (child, name, gate)
    };
    let (mut doomed, doomed_name, _) = start("doomed");
    let (mut survivor, survivor_name, survivor_gate) = start("survivor");
    // A block of this process, in the default registry: none of this registry's business.
    let bystander = consort::SharedMemory::create(100).expect("create");

    let doomed_pid = doomed.id();
    consort_tests::kill(doomed_pid, 9);
    doomed.wait().expect("reap the SIGKILLed consort");
    assert!(
        block_exists(&doomed_name),
        "SIGKILL leaves the block behind"
    );

    let ls_json = |scratch: &Scratch| -> Vec<Value> {
        let output = consort(scratch, &["shm", "ls", "--json"])
            .output()
            .expect("consort shm ls");
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).expect("a JSON array")
    };
    let listed = ls_json(&scratch);
    assert_eq!(listed.len(), 2, "{listed:?}");
    let doomed_info = listed
        .iter()
        .find(|info| info["name"] == doomed_name.as_str())
        .expect("the dead creator's block is listed");
    assert_eq!(doomed_info["creator_pid"], doomed_pid);
    assert_eq!(doomed_info["creator_alive"], false);
    let npy_data_bytes = 3 * 50 * 70 * 4;
    assert_eq!(doomed_info["size"], npy_data_bytes);
    let survivor_info = listed
        .iter()
        .find(|info| info["name"] == survivor_name.as_str())
        .expect("the live creator's block is listed");
    assert_eq!(survivor_info["creator_pid"], survivor.id());
    assert_eq!(survivor_info["creator_alive"], true);

    let table = consort(&scratch, &["shm", "ls"])
        .output()
        .expect("consort shm ls");
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let doomed_line = table
        .lines()
        .find(|line| line.starts_with(&doomed_name))
        .unwrap_or_else(|| panic!("{doomed_name} in\n{table}"));
    assert!(
        doomed_line.contains(&npy_data_bytes.to_string())
            && doomed_line.contains(&doomed_pid.to_string())
            && doomed_line.ends_with("dead"),
        "{table}"
    );
    let survivor_line = table
        .lines()
        .find(|line| line.starts_with(&survivor_name))
        .unwrap_or_else(|| panic!("{survivor_name} in\n{table}"));
    assert!(survivor_line.ends_with("alive"), "{table}");

    let dry_run = consort(&scratch, &["shm", "gc", "--dry-run"])
        .output()
        .expect("consort shm gc --dry-run");
    assert_eq!(dry_run.status.code(), Some(0), "{}", stderr(&dry_run));
    assert_eq!(
        String::from_utf8_lossy(&dry_run.stdout),
        format!("{doomed_name}\n")
    );
    assert!(block_exists(&doomed_name), "a dry run unlinks nothing");
    assert_eq!(ls_json(&scratch).len(), 2, "a dry run keeps the records");

    let gc = consort(&scratch, &["shm", "gc"])
        .output()
        .expect("consort shm gc");
    assert_eq!(gc.status.code(), Some(0), "{}", stderr(&gc));
    assert_eq!(
        String::from_utf8_lossy(&gc.stdout),
        format!("{doomed_name}\n")
    );
    assert!(
        !block_exists(&doomed_name),
        "gc unlinked the dead creator's block"
    );
    assert!(
        block_exists(&survivor_name),
        "gc left the live creator's block"
    );
    assert!(
        block_exists(bystander.name()),
        "gc left an unrecorded block"
    );
    assert_eq!(scratch.records(), vec![survivor_name.clone()]);

    std::fs::write(&survivor_gate, "").expect("open the gate");
    let status = survivor.wait().expect("wait for the survivor");
    assert_eq!(status.code(), Some(0));
    assert!(
        !block_exists(&survivor_name),
        "the survivor cleaned up after itself"
    );
    assert_eq!(ls_json(&scratch), Vec::<Value>::new());
}

/// The handoff benchmark runs end to end on both Python workers (a smoke test: 1 MiB, one
/// repeat; no timing is asserted), and its worker leaks no block: it creates none that
/// outlives it, and Python's resource tracker, which would complain on the worker's
/// stderr (relayed on consort's), says nothing. (This was `tests/shm/bench.rs` when the
/// benchmark lived in the library.)
#[test]
fn the_ndarray_benchmark_runs_on_both_workers() {
    let _watchdog = Watchdog::new("shm-cli-bench", Duration::from_secs(180));
    let scratch = Scratch::new("shm-cli-bench");
    for worker in ["consort", "appose"] {
        let output = consort(
            &scratch,
            &[
                "bench",
                "ndarray",
                "--worker",
                worker,
                "--mib",
                "1",
                "--repeats",
                "1",
                "--json",
                "--python",
            ],
        )
        .arg(python())
        .output()
        .expect("consort bench ndarray");
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{worker}: {text}");
        assert!(
            !text.contains("resource_tracker") && !text.contains("leaked"),
            "{worker}: {text}"
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
        assert_eq!(report["mib"], 1, "{worker}: {report}");
        assert_eq!(report["worker"], worker, "{report}");
        for key in [
            "shm_ms",
            "worker_sum_ms",
            "inline_ms",
            "copy_gbps",
            "memcpy_gbps",
        ] {
            let value = report[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{worker}: {key} in {report}"));
            assert!(
                value > 0.0 && value.is_finite(),
                "{worker}: {key} in {report}"
            );
        }
        assert!(
            report["worker_sum_ms"].as_f64() <= report["shm_ms"].as_f64(),
            "{worker}: {report}"
        );
        assert_eq!(scratch.records(), Vec::<String>::new(), "{worker}");
    }
}
