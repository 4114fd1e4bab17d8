//! `consort env build|delete` and `consort run --env|--with`, with the real uv (the one
//! `scripts/venv.sh` installs next to the test Python, or `CONSORT_TEST_UV`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use consort_tests::{python, Watchdog};

fn consort(envs: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_consort"));
    command.env("CONSORT_ENVS_DIR", envs).stdin(Stdio::null());
    command
}

fn uv() -> PathBuf {
    std::env::var_os("CONSORT_TEST_UV")
        .map(PathBuf::from)
        .unwrap_or_else(|| python().with_file_name("uv"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn env_build_run_and_delete_with_uv() {
    let _watchdog = Watchdog::new("cli-env", Duration::from_secs(240));
    let tmp = std::env::temp_dir().join(format!("consort-cli-env-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let dir = tmp.join("numpy");
    let build = |dir: &Path, packages: &[&str]| {
        consort(&tmp)
            .args(["env", "build", "--tool-path"])
            .arg(uv())
            .arg("--python")
            .arg(python())
            .arg("--dir")
            .arg(dir)
            .args(packages)
            .output()
            .unwrap()
    };

    let output = build(&dir, &["numpy"]);
    check(&output, 0);
    assert_eq!(text(&output.stdout).trim_end(), dir.display().to_string());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("[1/2] creating the venv"), "{stderr}");
    assert!(stderr.contains("[2/2] installing packages"), "{stderr}");

    let output = build(&dir, &["numpy"]);
    check(&output, 0);
    assert!(text(&output.stderr).contains("up to date"));

    let output = consort(&tmp)
        .args(["run", "--env"])
        .arg(&dir)
        .arg("import numpy\nint(numpy.arange(4).sum())")
        .output()
        .unwrap();
    check(&output, 0);
    assert_eq!(text(&output.stdout).trim_end(), r#"{"result":6}"#);

    // --with builds (or reuses) a uv environment under CONSORT_ENVS_DIR; uv is found on
    // PATH, here the test venv's bin folder.
    let path = std::env::join_paths(std::iter::once(uv().parent().unwrap().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let output = consort(&tmp)
        .env("PATH", path)
        .args(["run", "--python"])
        .arg(python())
        .args(["--with", "numpy", "import numpy\nnumpy.__file__"])
        .output()
        .unwrap();
    check(&output, 0);
    assert!(
        text(&output.stdout).contains(&tmp.display().to_string()),
        "{}",
        text(&output.stdout)
    );

    let output = build(&tmp.join("broken"), &["consort-no-such-package-7f3a9c"]);
    check(&output, 2);
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("uv failed while installing packages"),
        "{stderr}"
    );
    assert!(
        stderr.contains("consort-no-such-package-7f3a9c"),
        "{stderr}"
    );

    let output = consort(&tmp)
        .env("PATH", tmp.join("no-such-bin"))
        .args(["env", "build", "--tool", "pixi", "--dir"])
        .arg(tmp.join("pixi"))
        .arg("numpy")
        .output()
        .unwrap();
    check(&output, 2);
    assert!(
        text(&output.stderr).contains("pixi not found"),
        "{}",
        text(&output.stderr)
    );

    check(
        &consort(&tmp)
            .args(["env", "delete"])
            .arg(&dir)
            .output()
            .unwrap(),
        0,
    );
    assert!(!dir.exists());
    let _ = std::fs::remove_dir_all(&tmp);
}
