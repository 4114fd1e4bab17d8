//! pixi and micromamba for real, when they are on `PATH` (they cannot be downloaded on the
//! machines this was written on; a loud line says when a test did not run).

use std::time::Duration;

use consort::env::{MambaBuilder, PixiBuilder};

use crate::{watchdog, TempDir};

fn on_path(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if !found {
        eprintln!("SKIPPED: {name} is not on PATH; the real-{name} test did not run");
    }
    found
}

fn check(env: &consort::Environment) {
    let service = env.consort_python_service().unwrap().start().unwrap();
    let outputs = service
        .task("import sys\n[6 * 7, sys.prefix]")
        .submit()
        .unwrap()
        .wait_timeout(Duration::from_secs(120))
        .unwrap();
    assert_eq!(outputs["result"][0], 42);
    service.close();
}

#[test]
fn real_pixi_when_on_path() {
    if !on_path("pixi") {
        return;
    }
    let _watchdog = watchdog("real_pixi");
    let tmp = TempDir::new("real-pixi");
    let env = PixiBuilder::new()
        .conda(["python"])
        .with_dir(tmp.path().join("proj"))
        .build()
        .unwrap();
    check(&env);
}

#[test]
fn real_micromamba_when_on_path() {
    if !on_path("micromamba") {
        return;
    }
    let _watchdog = watchdog("real_micromamba");
    let tmp = TempDir::new("real-mamba");
    let env = MambaBuilder::new()
        .packages(["python"])
        .channels(["conda-forge"])
        .with_dir(tmp.path().join("prefix"))
        .build()
        .unwrap();
    check(&env);
}
