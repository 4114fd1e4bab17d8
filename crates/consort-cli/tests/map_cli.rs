//! `consort map` as scripts use it: JSON lines in, ordered JSON lines out, exit codes,
//! self-killing scripts, bad input lines, deadlines and Ctrl-C.

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use consort_tests::{kill, python, wait_until, workers_the_machine_holds, Watchdog};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

fn map(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consort"));
    command
        .arg("map")
        .arg("--python")
        .arg(python())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs `consort map` with `input` on stdin (written from a thread, so a full stdout pipe
/// cannot deadlock the test).
fn run_map(args: &[&str], input: String) -> Output {
    let mut child = map(args).spawn().expect("start consort map");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let output = child.wait_with_output().expect("consort map output");
    writer.join().expect("stdin writer");
    output
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each output line is JSON"))
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn two_thousand_lines_where_the_script_kills_its_worker_on_some() {
    let _watchdog = Watchdog::new("map-2000-self-kill", LIMIT);
    let input: String = (0..2000).map(|x| format!("{{\"x\": {x}}}\n")).collect();
    let script = "import os\nif x % 100 == 7:\n    os.kill(os.getpid(), 9)\nx * 2";
    let output = run_map(
        &["--workers", "4", "--isolated", "--retries", "1", script],
        input,
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 2000);
    for (idx, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], json!(idx));
        if idx % 100 == 7 {
            assert_eq!(line["status"], "crashed", "line {idx}: {line}");
            let error = line["error"].as_str().unwrap_or_default();
            assert!(error.contains("SIGKILL"), "line {idx}: {error}");
        } else {
            assert_eq!(line["status"], "complete", "line {idx}: {line}");
            assert_eq!(line["outputs"]["result"], json!(idx * 2));
            assert_eq!(line["error"], Value::Null);
        }
    }
}

#[test]
fn every_line_complete_exits_0() {
    let _watchdog = Watchdog::new("map-exit-0", LIMIT);
    let output = run_map(
        &["--workers", "2", "a + b"],
        "{\"a\": 1, \"b\": 2}\n\n{\"a\": \"x\", \"b\": \"y\"}\n".to_owned(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(
        lines,
        [
            json!({"index": 0, "status": "complete", "outputs": {"result": 3}, "error": null}),
            json!({"index": 1, "status": "complete", "outputs": {"result": "xy"}, "error": null}),
        ]
    );
}

#[test]
fn a_line_that_is_not_a_json_object_fails_and_the_run_goes_on() {
    let _watchdog = Watchdog::new("map-bad-line", LIMIT);
    let output = run_map(
        &["--workers", "1", "x"],
        "{\"x\": 1}\n[1, 2]\nnot json\n{\"x\": 4}\n".to_owned(),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["status"], "complete");
    assert_eq!(lines[1]["status"], "failed");
    assert!(lines[1]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("not a JSON object but an array"));
    assert_eq!(lines[2]["status"], "failed");
    assert!(lines[2]["error"]
        .as_str()
        .unwrap_or_default()
        .contains("not valid JSON"));
    assert_eq!(lines[3]["status"], "complete");
    assert_eq!(lines[3]["outputs"]["result"], 4);
}

#[test]
fn a_failing_script_and_a_deadline_give_failed_and_timeout_lines() {
    let _watchdog = Watchdog::new("map-failed-timeout", LIMIT);
    let script =
        "import time\nif x == 1:\n    raise ValueError('bad x')\nif x == 2:\n    time.sleep(30)\nx";
    let output = run_map(
        &["--workers", "2", "--isolated", "--timeout", "0.5", script],
        "{\"x\": 0}\n{\"x\": 1}\n{\"x\": 2}\n{\"x\": 3}\n".to_owned(),
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let statuses: Vec<_> = lines(&output)
        .iter()
        .map(|line| line["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, ["complete", "failed", "timeout", "complete"]);
}

#[test]
fn ctrl_c_cancels_drains_and_exits_130() {
    let _watchdog = Watchdog::new("map-ctrl-c", LIMIT);
    let dir = std::env::temp_dir().join(format!("consort-map-ctrl-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = "import time\nopen(marker, 'w').close()\ntime.sleep(60)";
    let mut child: Child = map(&["--workers", "2", script])
        .spawn()
        .expect("start consort map");
    let markers: Vec<_> = (0..3).map(|idx| dir.join(format!("m{idx}"))).collect();
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for marker in &markers {
            writeln!(stdin, "{}", json!({"marker": marker})).expect("write input");
        }
        // Dropped: EOF, so the run would otherwise wait for the tasks.
    }
    assert!(
        wait_until(Duration::from_secs(30), || markers
            .iter()
            .all(|marker| marker.exists())),
        "the tasks did not start"
    );
    kill(child.id(), 2);
    let output = child.wait_with_output().expect("consort map output");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 3, "every line read gets its output line");
    for (idx, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], json!(idx));
        assert_eq!(line["status"], "canceled");
    }
}

#[test]
fn workers_that_keep_dying_at_start_end_the_run_with_exit_2_and_the_reason() {
    let _watchdog = Watchdog::new("map-dying-workers", LIMIT);
    let input: String = (0..500).map(|x| format!("{{\"x\": {x}}}\n")).collect();
    let output = run_map(
        &[
            "--workers",
            "2",
            "--worker",
            "sh -c 'echo no such module >&2; exit 1'",
            "x",
        ],
        input,
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("keep dying at start")
            && stderr(&output).contains("no such module"),
        "{}",
        stderr(&output)
    );
    // The lines read before giving up have their output lines, in order, none complete.
    let lines = lines(&output);
    assert!(!lines.is_empty() && lines.len() < 500);
    for (idx, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], json!(idx));
        assert_ne!(line["status"], "complete");
    }
}

#[test]
fn env_runs_every_worker_in_that_environment() {
    let _watchdog = Watchdog::new("map-env", LIMIT);
    // The test venv itself: `--env` recognises its pyvenv.cfg and runs its Python.
    let python = python();
    let venv = python
        .parent()
        .and_then(|bin| bin.parent())
        .expect("the test Python sits in a venv's bin folder");
    let mut child = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(["map", "--workers", "2", "--env"])
        .arg(venv)
        .arg("import sys\nsys.prefix")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consort map");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{}\n{}\n{}\n")
        .expect("write input");
    let output = child.wait_with_output().expect("consort map output");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let prefix = std::fs::canonicalize(venv).expect("canonical venv");
    let lines = lines(&output);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        let reported = line["outputs"]["result"].as_str().expect("a prefix");
        assert_eq!(
            std::fs::canonicalize(reported).expect("canonical prefix"),
            prefix,
            "{line}"
        );
    }
    // `--env` names the interpreter, so `--python` beside it is a usage error.
    let output = map(&["--env", "/nonexistent", "x"])
        .stdin(Stdio::null())
        .output()
        .expect("consort map");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--env"), "{}", stderr(&output));
}

/// Runs `consort map` with raw bytes on stdin.
fn run_map_bytes(args: &[&str], input: Vec<u8>) -> Output {
    let mut child = map(args).spawn().expect("start consort map");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("consort map output");
    writer.join().expect("stdin writer");
    output
}

fn error_of(line: &Value) -> &str {
    line["error"].as_str().unwrap_or_default()
}

/// Issue 14: invalid UTF-8 in an input line was replaced by U+FFFD and the line reported
/// complete. That line now fails, naming the byte and its offset, and the run goes on.
#[test]
fn issue_14_a_line_that_is_not_utf8_fails_naming_the_byte() {
    let _watchdog = Watchdog::new("map-utf8", LIMIT);
    let mut input = b"{\"x\": \"a\"}\n{\"x\": \"".to_vec();
    input.extend_from_slice(b"\xff\"}\n{\"x\": \"\xc3");
    input.extend_from_slice(b"\n{\"x\": \"\xc3\xa9\"}\n");
    let output = run_map_bytes(&["--workers", "1", "x"], input);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = lines(&output);
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["status"], "complete");
    assert_eq!(lines[1]["status"], "failed", "{}", lines[1]);
    assert!(
        error_of(&lines[1]).contains("not valid UTF-8: invalid byte 0xff at byte offset 7"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2]["status"], "failed", "{}", lines[2]);
    assert!(
        error_of(&lines[2]).contains("not valid UTF-8: an incomplete sequence")
            && error_of(&lines[2]).contains("at byte offset 7"),
        "{}",
        lines[2]
    );
    assert_eq!(lines[3]["status"], "complete");
    assert_eq!(lines[3]["outputs"]["result"], "\u{e9}");
}

/// Issue 14: input lines had no length limit, and each cost twice its size (a 1 GB line
/// took 1.96 GB). A line longer than `--max-line` (16 MiB by default) fails naming the
/// limit, and the reader goes on from the next newline, never holding more than the limit.
#[test]
fn issue_14_a_line_over_the_limit_fails_and_reading_goes_on() {
    let _watchdog = Watchdog::new("map-max-line", LIMIT);
    let long = format!("{{\"x\": \"{}\"}}", "y".repeat(100));
    let input = format!("{{\"x\": 1}}\n{long}\n{{\"x\": 3}}\n{long}");
    let output = run_map(&["--workers", "1", "--max-line", "64", "x"], input);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = lines(&output);
    let statuses: Vec<_> = lines.iter().map(|line| line["status"].clone()).collect();
    assert_eq!(
        statuses,
        ["complete", "failed", "complete", "failed"],
        "{lines:?}"
    );
    for line in [&lines[1], &lines[3]] {
        assert!(
            error_of(line).contains(&format!(
                "the input line is {} bytes long, over the limit of 64 bytes",
                long.len()
            )),
            "{line}"
        );
    }
    assert_eq!(lines[2]["outputs"]["result"], 3);
    let output = map(&["--max-line", "0", "x"])
        .stdin(Stdio::null())
        .output()
        .expect("consort map");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

/// The peak resident set of a live process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[test]
fn issue_14_a_128_mib_line_costs_no_more_than_the_default_limit() {
    let _watchdog = Watchdog::new("map-line-memory", LIMIT);
    let mut child = map(&["--workers", "1", "x"])
        .spawn()
        .expect("start consort map");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut text).expect("stdout");
        text
    });
    let line_len = 128usize << 20;
    stdin.write_all(b"{\"x\": \"").expect("write");
    let chunk = vec![b'y'; 1 << 20];
    for _ in 0..line_len >> 20 {
        stdin.write_all(&chunk).expect("write");
    }
    stdin.write_all(b"\"}\n{\"x\": 2}\n").expect("write");
    // All but a pipe's worth of the line has been read: the peak so far is the reader's.
    let peak = peak_rss(child.id());
    drop(stdin);
    let status = child.wait().expect("consort map");
    let lines: Vec<Value> = reader
        .join()
        .expect("reader")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_eq!(status.code(), Some(1));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["status"], "failed");
    assert!(
        error_of(&lines[0]).contains("over the limit of 16777216 bytes"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["outputs"]["result"], 2);
    // Holding the line would take 128 MiB (twice that before issue 14); the reader holds
    // at most the 16 MiB limit.
    assert!(
        peak < 64 << 20,
        "consort map peaked at {peak} bytes while reading a {line_len}-byte line"
    );
}

/// Issue 14: after Ctrl-C, the summary counted every line written after the interrupt as
/// not complete, although lines that had completed were written `complete` (it said 32
/// where the output had 24). The summary now counts the statuses written.
#[test]
fn issue_14_after_ctrl_c_the_summary_counts_the_statuses_written() {
    let _watchdog = Watchdog::new("map-ctrl-c-summary", LIMIT);
    let dir = std::env::temp_dir().join(format!("consort-map-summary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Line 0 blocks the in-order output; lines 1 to 3 complete behind it.
    let script = "import time\nif x == 0:\n    time.sleep(60)\nopen(marker, 'w').close()\nx";
    let mut child: Child = map(&["--workers", "1", script])
        .spawn()
        .expect("start consort map");
    let markers: Vec<_> = (0..4).map(|idx| dir.join(format!("m{idx}"))).collect();
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for (x, marker) in markers.iter().enumerate() {
            writeln!(stdin, "{}", json!({"x": x, "marker": marker})).expect("write input");
        }
    }
    assert!(
        wait_until(Duration::from_secs(30), || markers[1..]
            .iter()
            .all(|marker| marker.exists())),
        "the tasks did not run"
    );
    kill(child.id(), 2);
    let output = child.wait_with_output().expect("consort map output");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    let lines = lines(&output);
    let statuses: Vec<_> = lines.iter().map(|line| line["status"].clone()).collect();
    assert_eq!(
        statuses,
        ["canceled", "complete", "complete", "complete"],
        "{lines:?}"
    );
    assert!(
        stderr(&output).contains("consort map: 4 lines (1 not complete)"),
        "{}",
        stderr(&output)
    );
}

/// Issue 14: an input line's keys are the script's variables; a key that is no identifier
/// or that is `task` (hiding the script's handle on its task) was passed on silently. Such
/// a line now fails with the reason, and the run goes on.
#[test]
fn issue_14_a_line_whose_key_is_not_an_input_name_fails() {
    let _watchdog = Watchdog::new("map-keys", LIMIT);
    let input =
        "{\"x\": 1}\n{\"a-b\": 1}\n{\"task\": 1, \"x\": 2}\n{\"x\": 3, \"for\": 0}\n{\"x\": 4}\n";
    let output = run_map(&["--workers", "1", "x"], input.to_owned());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines = lines(&output);
    let statuses: Vec<_> = lines.iter().map(|line| line["status"].clone()).collect();
    assert_eq!(
        statuses,
        ["complete", "failed", "failed", "failed", "complete"],
        "{lines:?}"
    );
    assert!(error_of(&lines[1]).contains("the input line's key \"a-b\": not an identifier"));
    assert!(error_of(&lines[2]).contains("the input line's key \"task\": the script's own"));
    assert!(error_of(&lines[3]).contains("the input line's key \"for\": a Python keyword"));
}

/// Issue 14: with `--workers 2 --retries 0`, 21 self-killing lines in 2,000 took 53 to 62
/// innocent lines down with them (10 to 20 with `--retries 1`). A line that ran beside
/// others when its worker died is run again alone, uncharged: every innocent line
/// completes, and each killer's error says it was alone on its worker.
#[test]
fn issue_14_lines_that_kill_their_worker_take_no_innocent_line_down() {
    let _watchdog = Watchdog::new("issue-14-map-killers", LIMIT);
    let input: String = (0..600).map(|x| format!("{{\"x\": {x}}}\n")).collect();
    let script =
        "import os, time\nif x % 60 == 7:\n    os.kill(os.getpid(), 9)\ntime.sleep(0.002)\nx * 2";
    for retries in ["0", "1"] {
        let output = run_map(
            &["--workers", "2", "--retries", retries, script],
            input.clone(),
        );
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        let lines = lines(&output);
        assert_eq!(lines.len(), 600);
        for (idx, line) in lines.iter().enumerate() {
            if idx % 60 == 7 {
                assert_eq!(line["status"], "crashed", "--retries {retries}: {line}");
                let error = line["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains("the task was alone on the worker"),
                    "--retries {retries}: {error}"
                );
            } else {
                assert_eq!(line["status"], "complete", "--retries {retries}: {line}");
            }
        }
    }
}

/// Issue 14: lines whose task killed the worker before it wrote a word (consort's Python
/// worker holds a LAUNCH back for a millisecond) counted as deaths at start: with
/// `--isolated --workers 2` and ten such lines first, `map` exited 2, "the workers keep
/// dying at start", without running the rest; with `--workers 1` and every second line
/// killing, the deaths also took the lines beside the killers down. A worker that read its
/// task got going, and a line that ran beside a killer runs again alone.
#[test]
fn issue_14_lines_that_kill_their_worker_at_once_are_not_deaths_at_start() {
    let _watchdog = Watchdog::new("issue-14-map-not-at-start", LIMIT);
    /// The arguments, the number of lines, and which lines kill their worker.
    type Case = (&'static [&'static str], u64, fn(u64) -> bool);
    let cases: [Case; 2] = [
        (&["--workers", "1", "--isolated"], 40, |x| x < 6),
        (&["--workers", "1"], 100, |x| x % 2 == 1),
    ];
    for (args, n_lines, kills) in cases {
        let input: String = (0..n_lines).map(|x| format!("{{\"x\": {x}}}\n")).collect();
        let killers: Vec<String> = (0..n_lines)
            .filter(|x| kills(*x))
            .map(|x| x.to_string())
            .collect();
        let script = format!(
            "import os\nif x in ({},):\n    os.kill(os.getpid(), 9)\nx",
            killers.join(", ")
        );
        let output = run_map(&[args, &[script.as_str()]].concat(), input);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            !stderr(&output).contains("keep dying"),
            "{}",
            stderr(&output)
        );
        let lines = lines(&output);
        assert_eq!(lines.len() as u64, n_lines, "{args:?}");
        for (idx, line) in lines.iter().enumerate() {
            let expected = if kills(idx as u64) {
                "crashed"
            } else {
                "complete"
            };
            assert_eq!(line["status"], expected, "{args:?}: {line}");
        }
    }
}

/// Issue 14: a pool waiting out its backoff (or its restart cap) for workers that keep
/// dying at start said nothing: `map` looked hung. It now says on stderr which slot waits,
/// how long, and the last failure. Here the first worker runs a line, a line kills it, and
/// every later worker dies at start.
#[test]
fn issue_14_stderr_says_when_the_pool_waits_for_workers_that_die_at_start() {
    let _watchdog = Watchdog::new("issue-14-map-waiting-note", LIMIT);
    let dir = std::env::temp_dir().join(format!("consort-map-note-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let worker = format!(
        "sh -c 'mkdir {once} 2>/dev/null && exec {consort} worker python --python {python}; \
         echo cannot start again >&2; exit 3'",
        once = dir.join("once").display(),
        consort = env!("CARGO_BIN_EXE_consort"),
        python = python().display(),
    );
    let script = "import os\nif x == 1:\n    os.kill(os.getpid(), 9)\nx";
    let mut child = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args([
            "map",
            "--workers",
            "1",
            "--isolated",
            "--worker",
            &worker,
            script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consort map");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let stderr_pipe = child.stderr.take().expect("stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr_pipe)
                .lines()
                .map_while(Result::ok)
            {
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        })
    };
    let mut out_lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    writeln!(stdin, "{{\"x\": 0}}").expect("write input");
    let first = out_lines.next().expect("an output line").expect("read");
    assert!(first.contains("\"complete\""), "{first}");
    writeln!(stdin, "{{\"x\": 1}}").expect("write input");
    let second = out_lines.next().expect("an output line").expect("read");
    assert!(second.contains("\"crashed\""), "{second}");
    let noted = wait_until(Duration::from_secs(30), || {
        let seen = seen.lock().unwrap();
        seen.contains("worker slot 0 died at start")
            && seen.contains("its next start waits")
            && seen.contains("cannot start again")
    });
    kill(child.id(), 15);
    let status = child.wait().expect("consort map exits");
    drop(stdin);
    let _ = reader.join();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(noted, "stderr: {}", seen.lock().unwrap());
    assert_eq!(status.code(), Some(130));
}

/// Issue 14: `consort map --workers 1000` started every worker before it looked at its
/// interrupts, so SIGTERM went unheard for tens of seconds. The first worker starts, then
/// the loop runs while the pool starts the others: a SIGTERM as soon as the first worker
/// runs ends the run long before all 300 (or as many as the machine holds) started. Each worker notes its start in a file;
/// none dies before the close ladder's 2 s grace, so every one that started is counted.
#[test]
fn issue_14_sigterm_while_many_workers_start_is_heard() {
    let _watchdog = Watchdog::new("issue-14-map-sigterm-at-start", LIMIT);
    let dir = std::env::temp_dir().join(format!("consort-map-start-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let started = dir.join("started");
    let worker = format!("sh -c 'echo x >> {}; exec sleep 600'", started.display());
    let n_started = || {
        std::fs::read_to_string(&started)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };
    // 300 workers, or two thirds of what this machine holds (`ulimit -n 1024` holds about
    // 160), as consort itself reckons it.
    let n_workers = machine_holds().map_or(300, |max| (max * 2 / 3).min(300));
    assert!(
        n_workers >= 60,
        "this machine holds only {n_workers} workers"
    );
    let n_workers_arg = n_workers.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_consort"))
        .args(["map", "--workers", &n_workers_arg, "--worker", &worker, "x"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start consort map");
    // Held open: no input line, and no end of input either.
    let stdin = child.stdin.take();
    assert!(wait_until(Duration::from_secs(30), || n_started() > 0));
    kill(child.id(), 15);
    let output = child.wait_with_output().expect("consort map exits");
    drop(stdin);
    let n_started = n_started();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        n_started < n_workers / 2,
        "{n_started} of {n_workers} workers started before the SIGTERM was heard"
    );
}

/// How many workers consort says this machine holds: the "at most N workers" of the usage
/// error for a count no machine holds; `None` when it names no limit.
fn machine_holds() -> Option<usize> {
    let output = map(&["--workers", "100000000", "x"])
        .stdin(Stdio::null())
        .output()
        .expect("consort map");
    workers_the_machine_holds(&stderr(&output))
}

/// Issue 14: `consort map --workers 100000` panicked on thread creation, then hung. A
/// count the machine cannot hold is a usage error that names the limit.
#[test]
fn issue_14_more_workers_than_the_machine_holds_is_a_usage_error() {
    let _watchdog = Watchdog::new("issue-14-map-too-many", LIMIT);
    let output = map(&["--workers", "100000000", "x"])
        .stdin(Stdio::null())
        .output()
        .expect("consort map");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(
        text.contains("--workers 100000000")
            && text.contains("more than this machine can hold")
            && text.contains("at most"),
        "{text}"
    );
}
