//! A worker that misbehaves on request: the fixture behind consort's fault-injection tests.
//!
//! It speaks the Appose protocol minimally: it reads requests from stdin, one per line, and
//! answers an EXECUTE with LAUNCH and a COMPLETION whose outputs echo the inputs. What else it
//! does is chosen in two places:
//!
//! - the **process mode**, its first argument: `fake_worker <mode> [args]`;
//! - the **task behaviour**, the first word of a task's script: `crash-mid-task 7`.
//!
//! A script whose first word is not a behaviour gets the behaviour named by the process mode
//! (`fake_worker crash-mid-task` crashes on the first task whatever it runs), else `echo`.
//!
//! Process modes:
//! - `serve` (default): answer requests; exit 0 on stdin EOF once threaded tasks finished.
//! - `ignore-eof`: as `serve`, but stay alive after stdin EOF (SIGTERM still ends it).
//! - `ignore-sigterm`: as `ignore-eof`, with SIGTERM ignored (re-executed through `sh`'s
//!   `trap '' TERM`, since an ignored disposition survives `exec` and std cannot set it).
//! - `flood-stdout`: write noise lines to stdout forever; never read stdin.
//! - `close-stdin`: close stdin (through `sh`'s `exec 0<&-`) and stay alive, idle.
//! - `idle`: stay alive, reading nothing (grandchildren run this).
//! - `exit <code> [message]`: print `message` on stderr and exit at once.
//! - any task behaviour below: the default behaviour of tasks.
//!
//! Task behaviours (the script's first word, then its arguments):
//! - `echo`: LAUNCH, COMPLETION echoing the inputs.
//! - `sleep <ms>`: the same, on a thread of its own, after `ms` milliseconds.
//! - `updates <n>`: LAUNCH, `n` UPDATEs, COMPLETION.
//! - `hang`: LAUNCH, then nothing, whatever is asked.
//! - `flood`: LAUNCH, then noise lines on stdout for ever, never answering.
//! - `cancellable`: LAUNCH, then CANCELATION when a CANCEL arrives.
//! - `fail <message>`: LAUNCH, FAILURE.
//! - `double-terminal`: LAUNCH, FAILURE, then COMPLETION.
//! - `crash-before-launch [code]`: exit with `code` (3) before answering.
//! - `crash-mid-task [code]`: LAUNCH, a noise line on stdout and one on stderr, then exit
//!   with `code` (42).
//! - `exit-without-reply`: exit 0 without answering.
//! - `complete-then-exit <bytes>`: LAUNCH, a COMPLETION carrying a `bytes`-long string in
//!   output `big`, then exit 0 at once.
//! - `garbage-lines`: the task's LAUNCH, UPDATEs and COMPLETION buried in noise: empty
//!   lines, two responses on one line, CRLF, `NaN`/`Infinity`, integers beyond 64 bits,
//!   invalid UTF-8; see [`garbage_lines`].
//! - `write`: write input `chunks` (strings with `$TASK` replaced by the task id, or arrays
//!   of raw bytes), flushing each and pausing input `pause_ms` between them; then exit 0 if
//!   input `then` is `"exit"`. With input `split`, the chunks are joined and re-cut into
//!   pieces of `split` bytes first. The test decides every byte.
//! - `oversize-line <bytes>`: LAUNCH, then a noise line of `bytes` bytes; nothing more.
//! - `spawn-grandchild`: start `fake_worker idle` in the worker's process group, print
//!   `grandchild <pid>` on stderr, and complete with output `grandchild`.
//! - `spawn-escaped`: start `setsid fake_worker idle`, which leaves the worker's process
//!   group but keeps its stdout and stderr open, and complete with output `escaped`.
//! - `stderr-spam <bytes>`: write `bytes` bytes of numbered lines on stderr, then complete.
//! - `close-stdout`: LAUNCH, COMPLETION, then put `/dev/null` in place of stdout (closing
//!   the pipe) and serve on, answering into the void: a worker that lives on mute.

use std::collections::HashSet;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use consort::protocol::{decode_request, Args, Progress, Request, Response, ResponseKind, TaskId};
use serde_json::Value;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("serve");
    match mode {
        "ignore-sigterm" => reexec_through_sh("trap '' TERM; exec \"$0\" ignore-eof"),
        "close-stdin" => reexec_through_sh("exec 0<&-; exec \"$0\" idle"),
        "flood-stdout" => flood_stdout(),
        "idle" => idle(),
        "exit" => {
            let code = args.get(1).and_then(|code| code.parse().ok()).unwrap_or(1);
            if let Some(message) = args.get(2) {
                eprintln!("{message}");
            }
            std::process::exit(code);
        }
        "ignore-eof" => serve("echo", true),
        "serve" => serve("echo", false),
        behaviour => serve(behaviour, false),
    }
}

/// Replaces this process by `sh -c script <this program>`.
fn reexec_through_sh(script: &str) -> ! {
    let me = std::env::current_exe().expect("the fake worker knows its own path");
    let err = Command::new("/bin/sh").arg("-c").arg(script).arg(me).exec();
    eprintln!("fake_worker: cannot exec /bin/sh: {err}");
    std::process::exit(127);
}

fn idle() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn flood_stdout() -> ! {
    let line = format!("{}\n", "flood ".repeat(100));
    let mut out = io::stdout().lock();
    loop {
        if out.write_all(line.as_bytes()).is_err() {
            std::process::exit(0);
        }
    }
}

/// Writes protocol bytes; one lock, so that lines from task threads never interleave unless
/// a behaviour interleaves them on purpose.
#[derive(Clone)]
struct Out(Arc<Mutex<()>>);

impl Out {
    fn write(&self, bytes: &[u8]) {
        let _held = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut out = io::stdout().lock();
        if out.write_all(bytes).and_then(|()| out.flush()).is_err() {
            // The supervisor is gone: nobody is left to answer.
            std::process::exit(0);
        }
    }

    fn respond(&self, task: &TaskId, kind: ResponseKind) {
        self.write(format!("{}\n", encode(task, kind)).as_bytes());
    }
}

fn encode(task: &TaskId, kind: ResponseKind) -> String {
    Response {
        task: task.clone(),
        kind,
    }
    .encode()
}

fn serve(default_behaviour: &str, ignore_eof: bool) {
    let out = Out(Arc::new(Mutex::new(())));
    let cancellable: Arc<Mutex<HashSet<TaskId>>> = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut stdin = io::stdin().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        match decode_request(&line) {
            Ok(Request::Execute {
                task,
                script,
                inputs,
                ..
            }) => {
                let mut words = script.split_whitespace();
                let first = words.next().unwrap_or("");
                let (behaviour, rest): (&str, Vec<&str>) = if BEHAVIOURS.contains(&first) {
                    (first, words.collect())
                } else {
                    (default_behaviour, Vec::new())
                };
                let job = Job {
                    out: out.clone(),
                    task,
                    inputs,
                    args: rest.iter().map(|word| (*word).to_owned()).collect(),
                };
                if behaviour == "cancellable" {
                    lock(&cancellable).insert(job.task.clone());
                }
                if let Some(handle) = run(behaviour, job) {
                    threads.retain(|thread| !thread.is_finished());
                    threads.push(handle);
                }
            }
            Ok(Request::Cancel { task }) => {
                if lock(&cancellable).remove(&task) {
                    out.respond(&task, ResponseKind::Cancelation);
                }
            }
            Err((_, err)) => eprintln!("fake_worker: bad request: {err}"),
        }
    }
    for thread in threads {
        let _ = thread.join();
    }
    if ignore_eof {
        idle();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

const BEHAVIOURS: &[&str] = &[
    "echo",
    "sleep",
    "updates",
    "hang",
    "flood",
    "cancellable",
    "fail",
    "double-terminal",
    "crash-before-launch",
    "crash-mid-task",
    "exit-without-reply",
    "complete-then-exit",
    "garbage-lines",
    "write",
    "oversize-line",
    "spawn-grandchild",
    "spawn-escaped",
    "stderr-spam",
    "close-stdout",
];

struct Job {
    out: Out,
    task: TaskId,
    inputs: Args,
    args: Vec<String>,
}

impl Job {
    fn arg<T: std::str::FromStr>(&self, idx: usize, default: T) -> T {
        self.args
            .get(idx)
            .and_then(|arg| arg.parse().ok())
            .unwrap_or(default)
    }

    fn launch(&self) {
        self.out.respond(&self.task, ResponseKind::Launch);
    }

    fn complete(&self, outputs: Args) {
        self.out
            .respond(&self.task, ResponseKind::Completion(outputs));
    }
}

/// Runs one task; returns its thread when it runs on one.
fn run(behaviour: &str, job: Job) -> Option<JoinHandle<()>> {
    match behaviour {
        "sleep" => {
            let millis = job.arg(0, 10u64);
            return Some(std::thread::spawn(move || {
                job.launch();
                std::thread::sleep(Duration::from_millis(millis));
                job.complete(job.inputs.clone());
            }));
        }
        "updates" => {
            job.launch();
            for current in 0..job.arg(0, 10i64) {
                let progress = Progress {
                    message: Some(format!("step {current}")),
                    current: Some(current),
                    ..Progress::default()
                };
                job.out.respond(&job.task, ResponseKind::Update(progress));
            }
            job.complete(job.inputs.clone());
        }
        "hang" | "cancellable" => job.launch(),
        "flood" => {
            job.launch();
            let line = format!("{}\n", "flood ".repeat(100));
            loop {
                job.out.write(line.as_bytes());
            }
        }
        "fail" => {
            job.launch();
            let message = if job.args.is_empty() {
                "fake failure".to_owned()
            } else {
                job.args.join(" ")
            };
            job.out
                .respond(&job.task, ResponseKind::Failure(Some(message)));
        }
        "double-terminal" => {
            job.launch();
            job.out.respond(
                &job.task,
                ResponseKind::Failure(Some("first terminal".to_owned())),
            );
            job.complete(job.inputs.clone());
        }
        "crash-before-launch" => {
            eprintln!("fake_worker: crashing before launch");
            std::process::exit(job.arg(0, 3));
        }
        "crash-mid-task" => {
            job.launch();
            job.out.write(b"fake_worker noise before the crash\n");
            eprintln!("fake_worker: crashing mid-task");
            std::process::exit(job.arg(0, 42));
        }
        "exit-without-reply" => std::process::exit(0),
        "complete-then-exit" => {
            job.launch();
            let mut outputs = job.inputs.clone();
            outputs.insert(
                "big".to_owned(),
                Value::from("x".repeat(job.arg(0, 1 << 20))),
            );
            job.complete(outputs);
            std::process::exit(0);
        }
        "garbage-lines" => garbage_lines(&job),
        "write" => write_chunks(&job),
        "oversize-line" => {
            job.launch();
            // Streamed, so the worker holds no more of the line than the supervisor may.
            let mut left = job.arg(0, 32usize << 20);
            let piece = vec![b'x'; 1 << 20];
            while left > 0 {
                let len = left.min(piece.len());
                job.out.write(&piece[..len]);
                left -= len;
            }
            job.out.write(b"\n");
        }
        "spawn-grandchild" => {
            let me = std::env::current_exe().expect("the fake worker knows its own path");
            let grandchild = Command::new(me)
                .arg("idle")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn the grandchild");
            eprintln!("grandchild {}", grandchild.id());
            job.launch();
            let mut outputs = job.inputs.clone();
            outputs.insert("grandchild".to_owned(), Value::from(grandchild.id()));
            job.complete(outputs);
            // Never waited for: it lives in the worker's process group until that is ended.
            std::mem::forget(grandchild);
        }
        "spawn-escaped" => {
            let me = std::env::current_exe().expect("the fake worker knows its own path");
            // Not a group leader, so `setsid` execs in place: the pid is the escaped one's.
            let escaped = Command::new("setsid")
                .arg(me)
                .arg("idle")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn the escaped child");
            job.launch();
            let mut outputs = job.inputs.clone();
            outputs.insert("escaped".to_owned(), Value::from(escaped.id()));
            job.complete(outputs);
            std::mem::forget(escaped);
        }
        "stderr-spam" => {
            let bytes = job.arg(0, 1usize << 20);
            let mut err = io::stderr().lock();
            let mut written = 0;
            let mut line_idx = 0u64;
            while written < bytes {
                let line = format!("stderr spam line {line_idx:08} {}\n", "~".repeat(40));
                let _ = err.write_all(line.as_bytes());
                written += line.len();
                line_idx += 1;
            }
            let _ = err.flush();
            job.launch();
            job.complete(job.inputs.clone());
        }
        "close-stdout" => {
            job.launch();
            job.complete(job.inputs.clone());
            // Under the write lock, so no other task's line is cut in two.
            let _held = job
                .out
                .0
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let null = std::fs::File::create("/dev/null").expect("open /dev/null");
            rustix::stdio::dup2_stdout(&null).expect("replace stdout by /dev/null");
        }
        _ => {
            job.launch();
            job.complete(job.inputs.clone());
        }
    }
    None
}

/// A task's responses as the real Python worker and stray `print()`s can mangle them.
fn garbage_lines(job: &Job) {
    let task = &job.task;
    let launch = encode(task, ResponseKind::Launch);
    let update = |current: i64| {
        encode(
            task,
            ResponseKind::Update(Progress {
                message: Some("caf\u{e9}".to_owned()),
                current: Some(current),
                ..Progress::default()
            }),
        )
    };
    let mut outputs = job.inputs.clone();
    outputs.insert("marker".to_owned(), Value::from("garbage survived"));
    let completion = encode(task, ResponseKind::Completion(outputs));
    // NaN, Infinity and an integer beyond 64 bits as Python's json.dumps writes them.
    let completion = completion.replacen(
        "{\"outputs\":{",
        "{\"outputs\":{\"nan\":NaN,\"inf\":Infinity,\"ninf\":-Infinity,\
         \"huge\":1180591620717411303424,",
        1,
    );
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"a stray print() from the script\n\n\r\n   \n");
    // Two responses on one line, as appose 0.12.0 writes them when tasks run concurrently.
    bytes.extend_from_slice(format!("{launch}{}\n", update(1)).as_bytes());
    // A response glued to noise, and invalid UTF-8 before and after it.
    bytes.extend_from_slice(b"noise \xff\xfe before ");
    bytes.extend_from_slice(update(2).as_bytes());
    bytes.extend_from_slice(b" \xc3\x28 after\n");
    bytes.extend_from_slice(b"{\"not\":\"a response\"}\n{\"task\": truncated\n");
    bytes.extend_from_slice(format!("{completion}\r\n").as_bytes());
    job.out.write(&bytes);
}

fn write_chunks(job: &Job) {
    let pause = job
        .inputs
        .get("pause_ms")
        .and_then(Value::as_u64)
        .map(Duration::from_millis);
    let chunks: Vec<Vec<u8>> = match job.inputs.get("chunks") {
        Some(Value::Array(chunks)) => chunks
            .iter()
            .map(|chunk| match chunk {
                Value::String(text) => text.replace("$TASK", job.task.as_str()).into_bytes(),
                Value::Array(raw) => raw
                    .iter()
                    .filter_map(|byte| byte.as_u64().and_then(|byte| u8::try_from(byte).ok()))
                    .collect(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let chunks = match job.inputs.get("split").and_then(Value::as_u64) {
        Some(split) => chunks
            .concat()
            .chunks(usize::try_from(split).unwrap_or(1).max(1))
            .map(<[u8]>::to_vec)
            .collect(),
        None => chunks,
    };
    for (chunk_idx, chunk) in chunks.iter().enumerate() {
        if chunk_idx > 0 {
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
        }
        job.out.write(chunk);
    }
    if job.inputs.get("then").and_then(Value::as_str) == Some("exit") {
        std::process::exit(0);
    }
}
