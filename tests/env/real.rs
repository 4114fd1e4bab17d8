//! pixi and micromamba for real: an environment with Python built from conda-forge, and a
//! task run in it.
//!
//! Both tools need conda channels, which neither the machines this was written on nor CI
//! can reach, so the tests are ignored. Run them where the tool is installed (on `PATH`,
//! or where the builder's fallbacks look) and the channels are reachable:
//! `cargo nextest run -p consort-tests --test env --run-ignored only real::`.
//! There a missing tool fails the build, and the test; it never passes having checked
//! nothing.

use std::time::Duration;

use consort::env::{MambaBuilder, PixiBuilder};

use crate::{watchdog, TempDir};

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
#[ignore = "needs pixi and the conda-forge channel, which cannot be reached here or from CI"]
fn real_pixi() {
    let _watchdog = watchdog("real_pixi");
    let tmp = TempDir::new("real-pixi");
    let env = PixiBuilder::new()
        .conda(["python"])
        .with_dir(tmp.path().join("proj"))
        .build()
        .unwrap_or_else(|err| panic!("the real pixi build failed: {err}"));
    check(&env);
}

#[test]
#[ignore = "needs micromamba and the conda-forge channel, which cannot be reached here or from CI"]
fn real_micromamba() {
    let _watchdog = watchdog("real_micromamba");
    let tmp = TempDir::new("real-mamba");
    let env = MambaBuilder::new()
        .packages(["python"])
        .channels(["conda-forge"])
        .with_dir(tmp.path().join("prefix"))
        .build()
        .unwrap_or_else(|err| panic!("the real micromamba build failed: {err}"));
    check(&env);
}
