//! uv for real: the `uv` from PyPI that `scripts/venv.sh` installs next to the test
//! Python (or `CONSORT_TEST_UV`), packages from PyPI (numpy is cached by uv after the
//! first run). And uv's own installation with pip, against a fake `python3`.

use std::path::PathBuf;
use std::time::Duration;

use consort::env::{built_state, BuildEvent, EnvError, EnvKind, UvBuilder, MARKER};
use consort_tests::python;

use crate::{steps, watchdog, write_script, Events, TempDir};

/// The real uv.
fn uv() -> PathBuf {
    if let Some(path) = std::env::var_os("CONSORT_TEST_UV") {
        return PathBuf::from(path);
    }
    let sibling = python().with_file_name("uv");
    assert!(
        sibling.exists(),
        "no uv: set CONSORT_TEST_UV or install uv next to {} (scripts/venv.sh does)",
        python().display()
    );
    sibling
}

fn same_file(a: &str, b: &std::path::Path) -> bool {
    std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
}

#[test]
fn uv_builds_numpy_runs_a_task_skips_when_unchanged_rebuilds_when_changed() {
    let _watchdog = watchdog("uv_builds_numpy");
    let tmp = TempDir::new("uv");
    let dir = tmp.path().join("numpy-env");
    let events = Events::default();
    let recipe = UvBuilder::new()
        .packages(["numpy"])
        .python(python().to_string_lossy())
        .with_dir(&dir)
        .with_tool(uv())
        .subscribe(events.subscriber());

    let env = recipe.build().unwrap();
    let seen = events.take();
    assert_eq!(
        steps(&seen),
        [
            "creating the venv (uv venv)",
            "installing packages (uv pip install)"
        ]
    );
    assert_eq!(seen.last(), Some(&BuildEvent::Built));
    assert!(
        seen.iter()
            .any(|event| matches!(event, BuildEvent::Output { .. })),
        "uv's output reaches subscribers: {seen:?}"
    );
    assert_eq!(env.kind(), EnvKind::Venv);
    assert_eq!(env.python().unwrap(), dir.join("bin/python"));
    assert_eq!(
        built_state(&dir).unwrap()["packages"],
        serde_json::json!(["numpy"])
    );

    let service = env.consort_python_service().unwrap().start().unwrap();
    let outputs = service
        .task("import numpy, sys\n[int(numpy.arange(4).sum()), sys.prefix, numpy.__file__]")
        .submit()
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    let result = outputs["result"].as_array().unwrap();
    assert_eq!(result[0], 6);
    assert!(same_file(result[1].as_str().unwrap(), &dir), "{result:?}");
    assert!(
        result[2].as_str().unwrap().contains("numpy-env"),
        "numpy comes from the environment: {result:?}"
    );
    service.close();

    // Unchanged: nothing runs, not even uv (this one does not exist).
    let again = recipe
        .clone()
        .with_tool(tmp.path().join("no-uv"))
        .build()
        .unwrap();
    assert_eq!(again, env);
    assert_eq!(events.take(), [BuildEvent::UpToDate]);

    // Changed: the old environment goes and a new one is built.
    std::fs::write(dir.join("sentinel"), "old build").unwrap();
    let changed = recipe.clone().packages(["six"]);
    changed.build().unwrap();
    let seen = events.take();
    assert_eq!(seen.last(), Some(&BuildEvent::Built));
    assert!(
        !dir.join("sentinel").exists(),
        "the old environment was removed"
    );
    assert_eq!(
        built_state(&dir).unwrap()["packages"],
        serde_json::json!(["numpy", "six"])
    );

    // rebuild() rebuilds even when unchanged; delete() removes it.
    changed.rebuild().unwrap();
    assert_eq!(events.take().last(), Some(&BuildEvent::Built));
    changed.delete().unwrap();
    assert!(!dir.exists());
}

#[test]
fn uv_nonexistent_package_fails_with_uvs_message_and_nothing_built() {
    let _watchdog = watchdog("uv_nonexistent_package");
    let tmp = TempDir::new("uv-missing-package");
    let dir = tmp.path().join("broken");
    let package = "consort-no-such-package-7f3a9c";
    let err = UvBuilder::new()
        .packages([package])
        .python(python().to_string_lossy())
        .with_dir(&dir)
        .with_tool(uv())
        .build()
        .unwrap_err();
    match &err {
        EnvError::ToolFailed {
            tool,
            step,
            message,
            ..
        } => {
            assert_eq!(*tool, "uv");
            assert_eq!(step, "installing packages");
            assert!(message.contains(package), "uv's own message: {message}");
        }
        other => panic!("expected ToolFailed, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("uv failed while installing packages"),
        "{err}"
    );
    assert!(built_state(&dir).is_none());
    assert!(!dir.join(MARKER).exists());
    assert!(tmp.path().join(".broken.building").exists());

    // The recipe fixed, the next build starts from scratch and succeeds.
    UvBuilder::new()
        .packages(["numpy"])
        .python(python().to_string_lossy())
        .with_dir(&dir)
        .with_tool(uv())
        .build()
        .unwrap();
    assert!(dir.join(MARKER).exists());
    assert!(!tmp.path().join(".broken.building").exists());
}

#[test]
fn uv_requirements_and_pyproject() {
    let _watchdog = watchdog("uv_requirements_and_pyproject");
    let tmp = TempDir::new("uv-files");
    let requirements = tmp.path().join("requirements.txt");
    std::fs::write(&requirements, "numpy\n").unwrap();
    let env = UvBuilder::new()
        .requirements(&requirements)
        .python(python().to_string_lossy())
        .with_dir(tmp.path().join("req"))
        .with_tool(uv())
        .build()
        .unwrap();
    assert_eq!(env.bin_paths(), [tmp.path().join("req/bin")]);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("req/requirements.txt")).unwrap(),
        "numpy\n"
    );

    let pyproject = "[project]\nname = \"demo\"\nversion = \"0.1.0\"\n\
                     requires-python = \">=3.9\"\ndependencies = [\"numpy\"]\n";
    let project = UvBuilder::new()
        .pyproject_content(pyproject)
        .python(python().to_string_lossy())
        .with_dir(tmp.path().join("proj"))
        .with_tool(uv());
    let env = project.build().unwrap();
    assert_eq!(env.base(), tmp.path().join("proj"));
    assert_eq!(env.bin_paths(), [tmp.path().join("proj/.venv/bin")]);
    let service = env.consort_python_service().unwrap().start().unwrap();
    let outputs = service
        .task("import numpy\nint(numpy.ones(3).sum())")
        .submit()
        .unwrap()
        .wait_timeout(Duration::from_secs(60))
        .unwrap();
    assert_eq!(outputs["result"], 3);
    service.close();
    // wrap() finds the same environment.
    let wrapped = consort::Environment::wrap(tmp.path().join("proj")).unwrap();
    assert_eq!(wrapped.python().unwrap(), env.python().unwrap());
}

#[test]
fn missing_tools_are_named_with_how_to_get_them_and_nothing_is_created() {
    let _watchdog = watchdog("missing_tools");
    let tmp = TempDir::new("missing");
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let dir = tmp.path().join("never");

    let err = UvBuilder::new()
        .packages(["numpy"])
        .with_dir(&dir)
        .with_tool(tmp.path().join("no-uv"))
        .build()
        .unwrap_err();
    assert!(
        matches!(err, EnvError::ToolMissing { tool: "uv", .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("uv not found"), "{err}");

    let err = consort::env::PixiBuilder::new()
        .conda(["numpy"])
        .with_dir(&dir)
        .with_search_path(&empty)
        .build()
        .unwrap_err();
    assert!(
        matches!(err, EnvError::ToolMissing { tool: "pixi", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("https://pixi.sh"), "{err}");

    let err = consort::env::MambaBuilder::new()
        .packages(["numpy"])
        .with_dir(&dir)
        .with_search_path(&empty)
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            EnvError::ToolMissing {
                tool: "micromamba",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("micromamba not found"), "{err}");

    assert!(!dir.exists());
    assert!(built_state(&dir).is_none());
}

/// With no uv anywhere, the builder installs it from PyPI with `python3 -m pip install
/// --target <envs>/.uv/pip uv`; here `python3` is a fake that records its call and drops a
/// fake uv where pip would put the real one.
#[test]
fn uv_is_installed_with_pip_when_missing() {
    let _watchdog = watchdog("uv_installed_with_pip");
    let tmp = TempDir::new("uv-install");
    let log = tmp.path().join("log");
    let fake_uv = tmp.path().join("templates/uv");
    write_script(
        &fake_uv,
        &format!(
            "printf 'uv %s\\n' \"$*\" >> '{log}'\n\
             if [ \"$1\" = venv ]; then for arg; do dir=\"$arg\"; done\n\
               mkdir -p \"$dir/bin\"; : > \"$dir/pyvenv.cfg\"; ln -sf '{python}' \"$dir/bin/python\"; fi\n",
            log = log.display(),
            python = python().display()
        ),
    );
    let bin = tmp.path().join("bin");
    write_script(
        &bin.join("python3"),
        &format!(
            "printf 'python3 %s\\n' \"$*\" >> '{log}'\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --target ] && target=\"$2\"; shift; done\n\
             mkdir -p \"$target/bin\" && cp '{fake_uv}' \"$target/bin/uv\"\n",
            log = log.display(),
            fake_uv = fake_uv.display()
        ),
    );
    let envs = tmp.path().join("envs");
    // Under nextest every test is its own process, so this variable reaches only this test;
    // the other tests in this binary name their directories and tools explicitly.
    std::env::set_var("CONSORT_ENVS_DIR", &envs);
    let env = UvBuilder::new()
        .packages(["numpy"])
        .with_search_path(&bin)
        .with_name("installed")
        .build()
        .unwrap();
    assert_eq!(env.base(), envs.join("installed"));
    let uv_path = envs.join(".uv/pip/bin/uv");
    let expected = [
        format!(
            "python3 -m pip install --disable-pip-version-check --no-input --upgrade --target {} uv",
            envs.join(".uv/pip").display()
        ),
        format!("uv venv --allow-existing {}", envs.join("installed").display()),
        format!(
            "uv pip install --python {} numpy",
            envs.join("installed/bin/python").display()
        ),
    ];
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        expected
    );
    assert!(uv_path.exists());

    // The installed uv is found the next time: no second pip install.
    UvBuilder::new()
        .packages(["six"])
        .with_search_path(&bin)
        .with_name("second")
        .build()
        .unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log_text.matches("python3 -m pip").count(), 1, "{log_text}");
}
