//! A supervisor process to be SIGKILLed: the test of "when the supervisor dies, its workers
//! and their children die too".
//!
//! `mini_supervisor <fake_worker path>` starts a service from a short-lived thread (so the
//! workers must not depend on that thread's life), has the worker spawn a grandchild and a
//! child that leaves its process group (`setsid`), leaves a task running, prints
//! `worker <pid> grandchild <pid> escaped <pid>` on stdout, and waits to be killed.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use consort::Service;

fn main() {
    let fake_worker = std::env::args_os()
        .nth(1)
        .expect("usage: mini_supervisor <fake_worker path>");
    let service = std::thread::spawn(move || {
        let mut command = Command::new(fake_worker);
        command.arg("serve");
        Service::new(command)
            .start()
            .expect("start the fake worker")
    })
    .join()
    .expect("the starting thread");
    let outputs = service
        .task("spawn-grandchild")
        .submit()
        .expect("submit")
        .wait_timeout(Duration::from_secs(30))
        .expect("spawn the grandchild");
    let escaped = service
        .task("spawn-escaped")
        .submit()
        .expect("submit")
        .wait_timeout(Duration::from_secs(30))
        .expect("spawn the escaped child");
    let _running = service.task("hang").submit().expect("submit");
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "worker {} grandchild {} escaped {}",
        service.pid(),
        outputs["grandchild"],
        escaped["escaped"]
    )
    .and_then(|()| stdout.flush())
    .expect("write to the test");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
