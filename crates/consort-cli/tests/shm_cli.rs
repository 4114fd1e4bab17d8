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

/// Runs `script` on `consort run` (consort's worker, the test Python) with `args` before
/// it; returns the output.
fn run_script(scratch: &Scratch, args: &[&str], script: &str) -> Output {
    let mut all = args.to_vec();
    all.push(script);
    run(scratch, "consort", &python(), &all)
        .output()
        .expect("run consort")
}

/// A running `consort run`, ended with a SIGTERM (which it treats as a Ctrl-C: it cleans
/// up) and reaped if the test ends first.
struct Running(Option<Child>);

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still running")
    }

    fn into_child(mut self) -> Child {
        self.0.take().expect("still running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            if child.try_wait().ok().flatten().is_none() {
                consort_tests::kill(child.id(), 15);
            }
            let _ = child.wait();
        }
    }
}

/// Files a test put in `/dev/shm`, removed on drop even when it fails.
struct Planted(Vec<String>);

impl Drop for Planted {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
    }
}

/// Whether this process runs as root, which can give a file to another user.
fn is_root(scratch: &Scratch) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(&scratch.0).expect("stat scratch").uid() == 0
}

/// The line of `text` that names `name`.
fn line_naming<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|line| line.contains(&format!("{name:?}")))
        .unwrap_or_else(|| panic!("no line names {name} in:\n{text}"))
}

/// Issue 14: `consort run` unlinked every block an output named, whoever had made it: one
/// that existed before the run, another run's input, another user's file (root deleted a
/// `nobody` file), a semaphore, another program's object, nested anywhere. A worker behind
/// a trust boundary could delete the supervisor's shared memory by naming it. Now only the
/// blocks the worker made for the task are taken over; each other one stays, with a
/// warning that names it and says why.
#[test]
fn issue_14_run_takes_over_only_the_blocks_its_worker_made_for_the_task() {
    let _watchdog = Watchdog::new("shm-cli-ownership", Duration::from_secs(120));
    let scratch = Scratch::new("shm-cli-ownership");
    assert!(
        is_root(&scratch),
        "this test gives a file to `nobody`, which needs root (the CI runs as root)"
    );
    let input = scratch.path("a.npy");
    write_npy(&input);
    // Older than the run, and this process's: only its age tells it from the worker's.
    let before = consort::SharedMemory::create(64).expect("create");
    let ready = scratch.path("attacker.ready");
    let other_file = scratch.path("victim.name");
    let victim_gate = scratch.path("victim.gate");

    // What the attacker's worker plants during the run, so that only the name or the
    // owner tells these from its own blocks.
    let random = consort::sys::random_u64().expect("random");
    let nobody = format!("psm_{:08x}", random as u32);
    let stranger = format!("consort-t-{:08x}", random as u32);
    let semaphore_name = format!("consort-t-{:08x}", (random >> 32) as u32);
    let semaphore = format!("sem.{semaphore_name}");
    let _planted = Planted(vec![nobody.clone(), stranger.clone(), semaphore.clone()]);

    // The attacker names blocks it did not make; `mine` is the one it did.
    let attacker_script = "import os, time, _multiprocessing
open(ready, 'w').close()
while not os.path.exists(other_file):
    time.sleep(0.01)
other = open(other_file).read().strip()
def plant(name, owner=None):
    with open('/dev/shm/' + name, 'wb') as f:
        f.write(bytes(64))
    if owner is not None:
        os.chown('/dev/shm/' + name, owner, owner)
plant(nobody, 65534)
plant(stranger)
sem = _multiprocessing.SemLock(1, 1, 1, '/' + semaphore_name, False)
assert os.path.exists('/dev/shm/' + semaphore)
def shm(name):
    return {'appose_type': 'shm', 'name': name, 'rsize': 1}
task.outputs['mine'] = NDArray('uint8', [64])
task.outputs['nested'] = {
    'list': [shm(before), [shm(other)], {'deep': {'appose_type': 'ndarray', 'dtype': 'uint8',
                                                  'shape': [1], 'shm': shm(nobody)}}],
    'semaphore': shm(semaphore), 'stranger': shm(stranger)}
task.outputs['other'] = other";
    let json = |value: &str| serde_json::json!(value).to_string();
    let mut attacker = Running(Some(
        run(
            &scratch,
            "consort",
            &python(),
            &[
                "--input",
                &format!("before={}", json(before.name())),
                "--input",
                &format!("ready={}", json_string(&ready)),
                "--input",
                &format!("other_file={}", json_string(&other_file)),
                "--input",
                &format!("nobody={}", json(&nobody)),
                "--input",
                &format!("stranger={}", json(&stranger)),
                "--input",
                &format!("semaphore_name={}", json(&semaphore_name)),
                "--input",
                &format!("semaphore={}", json(&semaphore)),
                attacker_script,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the attacker"),
    ));
    let limit = Duration::from_secs(60) * slowdown();
    assert!(
        wait_until(limit, || ready.exists()
            || attacker.child().try_wait().expect("try_wait").is_some()),
        "the attacker's worker did not start"
    );

    // Another run, started after the attacker: its input block is newer than the
    // attacker's start, so only the registry tells it is not the attacker's.
    let victim_script = "import os, time
with open(other_file + '.tmp', 'w') as f:
    f.write(a.shm.name + '\\n')
os.rename(other_file + '.tmp', other_file)
while not os.path.exists(gate):
    time.sleep(0.01)";
    let mut victim = Running(Some(
        run(
            &scratch,
            "consort",
            &python(),
            &[
                "--input",
                &format!("a=@{}", input.display()),
                "--input",
                &format!("other_file={}", json_string(&other_file)),
                "--input",
                &format!("gate={}", json_string(&victim_gate)),
                victim_script,
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the victim"),
    ));
    let victim_block = read_name(victim.child(), &other_file);

    let output = attacker
        .into_child()
        .wait_with_output()
        .expect("wait for the attacker");
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let outputs: Value = serde_json::from_slice(&output.stdout).expect("JSON outputs");
    assert_eq!(outputs["other"], victim_block.as_str());
    let mine = outputs["mine"]["shm"]["name"].as_str().expect("a name");
    assert!(!block_exists(mine), "the worker's own block was taken over");
    assert!(!text.contains(mine), "{text}");

    let victim_pid = victim.child().id();
    let expected = [
        (
            before.name().to_owned(),
            "existed before this task's worker started".to_owned(),
        ),
        (
            victim_block.clone(),
            format!("the shared-memory registry records it as made by process {victim_pid}"),
        ),
        (nobody.clone(), "belongs to uid 65534".to_owned()),
        (
            semaphore.clone(),
            "its name is not one a worker gives".to_owned(),
        ),
        (
            stranger.clone(),
            "its name is not one a worker gives".to_owned(),
        ),
    ];
    for (name, reason) in &expected {
        assert!(
            block_exists(name),
            "{name} ({reason}) is gone: it should have been left alone\n{text}"
        );
        let line = line_naming(&text, name);
        assert!(
            line.starts_with("consort: warning: ") && line.contains(reason),
            "{name}: {line}"
        );
    }
    assert_eq!(scratch.records(), vec![victim_block.clone()], "{text}");

    // The victim never noticed: it ends normally and cleans up its own block.
    std::fs::write(&victim_gate, "").expect("open the gate");
    let status = victim.into_child().wait().expect("wait for the victim");
    assert_eq!(status.code(), Some(0));
    assert!(!block_exists(&victim_block));
    assert_eq!(scratch.records(), Vec::<String>::new());
}

/// Issue 14: an output block whose descriptor claims more bytes than the block has was left
/// in `/dev/shm` with a warning. It is the run's: it is unlinked and the warning says so;
/// the run fails (exit 2) when that output was to be saved with `--save-arrays`.
#[test]
fn issue_14_a_short_output_block_is_unlinked_and_said() {
    let _watchdog = Watchdog::new("shm-cli-short", Duration::from_secs(120));
    let scratch = Scratch::new("shm-cli-short");
    let saved = scratch.path("saved");
    std::fs::create_dir(&saved).expect("mkdir");
    let script = "small = SharedMemory(rsize=100, create=True)
tiny = SharedMemory(rsize=16, create=True)
task.outputs['bad'] = {'appose_type': 'shm', 'name': small.name, 'rsize': 4096}
task.outputs['arr'] = {'appose_type': 'ndarray', 'dtype': 'float32', 'shape': [64],
                       'shm': {'appose_type': 'shm', 'name': tiny.name, 'rsize': 256}}";
    let saved_spec = saved.to_str().expect("UTF-8").to_owned();
    let cases: [(&[&str], i32); 2] = [(&[], 0), (&["--save-arrays", &saved_spec], 2)];
    for (args, expected_code) in cases {
        let output = run_script(&scratch, args, script);
        let text = stderr(&output);
        assert_eq!(
            output.status.code(),
            Some(expected_code),
            "{args:?}: {text}"
        );
        let outputs: Value = serde_json::from_slice(&output.stdout).expect("JSON outputs");
        let small = outputs["bad"]["name"].as_str().expect("a name");
        let tiny = outputs["arr"]["shm"]["name"].as_str().expect("a name");
        for (name, output_name, sizes) in [
            (small, "bad", "has 100 bytes, fewer than the 4096"),
            (tiny, "arr", "has 16 bytes, fewer than the 256"),
        ] {
            assert!(!block_exists(name), "{args:?}: {name} was unlinked");
            let line = line_naming(&text, name);
            assert!(
                line.contains(&format!("the output {output_name:?}"))
                    && line.contains(sizes)
                    && line.contains("unlinked"),
                "{args:?}: {line}"
            );
        }
        if expected_code == 2 {
            assert!(
                text.contains("--save-arrays: the output \"arr\""),
                "the output that cannot be saved is an error: {text}"
            );
            assert!(!saved.join("arr.npy").exists());
        }
        assert_eq!(scratch.records(), Vec::<String>::new(), "{args:?}");
    }
}

/// Issue 14: the blocks consort's Python worker made leaked when it crashed, and `shm ls`
/// did not list them. Now the worker records them like the supervisor does: `consort run`
/// unlinks the blocks its dead worker never handed back, and after a SIGKILLed `consort
/// run` (whose worker dies with it), `shm ls` lists them and `shm gc` removes them.
#[test]
fn issue_14_a_crashed_python_workers_blocks_are_listed_and_reclaimed() {
    let _watchdog = Watchdog::new("shm-cli-worker-blocks", Duration::from_secs(120));
    let scratch = Scratch::new("shm-cli-worker-blocks");
    let input = scratch.path("a.npy");
    write_npy(&input);
    let ls_json = || -> Vec<Value> {
        let output = consort(&scratch, &["shm", "ls", "--json"])
            .output()
            .expect("consort shm ls");
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).expect("a JSON array")
    };
    // The script makes two blocks, says their names and its pid, then waits for the gate;
    // opening it makes the worker SIGKILL itself.
    let script = "import os, signal, time
made = [NDArray('float32', [100]), SharedMemory(rsize=10, create=True)]
with open(name_file + '.tmp', 'w') as f:
    f.write('%d %s %s\\n' % (os.getpid(), made[0].shm.name, made[1].name))
os.rename(name_file + '.tmp', name_file)
while not os.path.exists(gate):
    time.sleep(0.01)
os.kill(os.getpid(), signal.SIGKILL)";
    let start = |label: &str| {
        let name_file = scratch.path(&format!("{label}.name"));
        let gate = scratch.path(&format!("{label}.gate"));
        let mut child = Running(Some(
            run(
                &scratch,
                "consort",
                &python(),
                &[
                    "--input",
                    &format!("a=@{}", input.display()),
                    "--input",
                    &format!("name_file={}", json_string(&name_file)),
                    "--input",
                    &format!("gate={}", json_string(&gate)),
                    script,
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn consort"),
        ));
        let line = read_name(child.child(), &name_file);
        let mut words = line.split(' ');
        let pid: u32 = words.next().expect("pid").parse().expect("a pid");
        let names: Vec<String> = words.map(str::to_owned).collect();
        (child, pid, names, gate)
    };

    // The worker crashes: `consort run` unlinks what it left.
    let (child, worker_pid, names, gate) = start("crash");
    let listed = ls_json();
    for name in &names {
        let info = listed
            .iter()
            .find(|info| info["name"] == name.as_str())
            .unwrap_or_else(|| panic!("shm ls lists the worker's {name}: {listed:?}"));
        assert_eq!(info["creator_pid"], worker_pid, "{info}");
        assert_eq!(info["creator_alive"], true, "{info}");
    }
    assert_eq!(
        listed.len(),
        3,
        "the input block and the worker's two: {listed:?}"
    );
    std::fs::write(&gate, "").expect("open the gate");
    let output = child
        .into_child()
        .wait_with_output()
        .expect("wait for consort");
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(3), "{text}");
    for name in &names {
        assert!(!block_exists(name), "{name} was reclaimed: {text}");
    }
    let line = line_naming(&text, &names[1]);
    assert!(
        line.contains(&format!("the worker (pid {worker_pid}) left shared memory"))
            && names.iter().all(|name| line.contains(&format!("{name:?}"))),
        "{line}"
    );
    assert_eq!(scratch.records(), Vec::<String>::new());

    // `consort run` itself is SIGKILLed; its worker dies with it and nobody cleans up
    // until `shm gc`.
    let (child, worker_pid, names, _gate) = start("sigkill");
    let mut child = child.into_child();
    // Whatever happens next, gc below or the drop of this guard removes the blocks.
    let _planted = Planted(names.clone());
    consort_tests::kill(child.id(), 9);
    child.wait().expect("reap the SIGKILLed consort");
    let dead = wait_until(Duration::from_secs(30), || {
        let listed = ls_json();
        listed.len() == 3 && listed.iter().all(|info| info["creator_alive"] == false)
    });
    assert!(
        dead,
        "the worker {worker_pid} died with its consort: {:?}",
        ls_json()
    );
    for name in &names {
        assert!(block_exists(name), "{name} is left until gc");
    }
    let gc = consort(&scratch, &["shm", "gc"])
        .output()
        .expect("consort shm gc");
    assert_eq!(gc.status.code(), Some(0), "{}", stderr(&gc));
    let collected = String::from_utf8_lossy(&gc.stdout).into_owned();
    assert_eq!(collected.lines().count(), 3, "{collected}");
    for name in &names {
        assert!(collected.lines().any(|line| line == name), "{collected}");
        assert!(!block_exists(name), "{name} was collected");
    }
    assert_eq!(scratch.records(), Vec::<String>::new());
}

/// Issue 14: a creator registry that cannot be used was reported only through tracing,
/// which `consort run` does not print. It is a warning on stderr when the run uses shared
/// memory, and nothing when it does not.
#[test]
fn issue_14_an_unusable_registry_is_a_warning_on_stderr() {
    let _watchdog = Watchdog::new("shm-cli-registry-warning", Duration::from_secs(60));
    let scratch = Scratch::new("shm-cli-registry-warning");
    let input = scratch.path("a.npy");
    write_npy(&input);
    let open_dir = scratch.path("open-registry");
    std::fs::create_dir(&open_dir).expect("mkdir");
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let with_registry = |args: &[&str]| {
        let mut command = run(&scratch, "consort", &python(), args);
        command.env("CONSORT_SHM_REGISTRY", &open_dir);
        command.output().expect("run consort")
    };

    let input_spec = format!("a=@{}", input.display());
    let output = with_registry(&["--input", &input_spec, "a.shape"]);
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("shared-memory registry"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {text}");
    assert!(
        warnings[0].starts_with("consort: warning: ")
            && warnings[0].contains(&open_dir.display().to_string())
            && warnings[0].contains("closed to others"),
        "{text}"
    );

    let output = with_registry(&["1 + 1"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(stderr(&output), "", "no shared memory, no warning");
}
