//! pixi and micromamba against fake executables (the real tools cannot be downloaded
//! here): shell scripts that record every call, make the folders the real tool would,
//! fail on a package named `no-such-package` with a solver-like message, and, for `run`,
//! start the command as their own child, as the real launchers do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use consort::env::{built_state, BuildEvent, EnvError, EnvKind, MambaBuilder, PixiBuilder, MARKER};
use consort::Environment;
use consort_tests::{is_running, python, wait_until};

use crate::{steps, watchdog, write_script, Events, TempDir};

/// Writes the fake tool `name` (`pixi` or `micromamba`) in `tmp/bin`; it logs to `tmp/log`.
fn fake_tool(tmp: &Path, name: &str) -> PathBuf {
    let path = tmp.join("bin").join(name);
    let body = format!(
        r#"LOG='{log}'
printf '{name} %s\n' "$*" >> "$LOG"
for arg; do
  case "$arg" in *no-such-package*)
    echo "  x failed to solve the environment" >&2
    echo "  No candidates were found for no-such-package *." >&2
    exit 1;;
  esac
done
case "$1" in
  init) for arg; do dir="$arg"; done; mkdir -p "$dir"
        [ -f "$dir/pixi.toml" ] || printf '[workspace]\nname = "x"\n' > "$dir/pixi.toml";;
  install) [ "{name}" = pixi ] && mkdir -p "$(dirname "$3")/.pixi/envs/default/bin";;
  create) while [ $# -gt 0 ]; do [ "$1" = --prefix ] && prefix="$2"; shift; done
          mkdir -p "$prefix/conda-meta" "$prefix/bin";;
  run) shift 3
       printf 'run CONDA_PREFIX=%s\n' "${{CONDA_PREFIX-unset}}" >> "$LOG"
       [ "$1" = python ] && {{ shift; set -- '{python}' "$@"; }}
       "$@"; exit $?;;
esac
"#,
        log = tmp.join("log").display(),
        python = python().display(),
    );
    write_script(&path, &body);
    path
}

fn log_lines(tmp: &Path) -> Vec<String> {
    std::fs::read_to_string(tmp.join("log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs a task in `env` through its (fake) launcher and checks that the worker is the
/// launcher's child, sees no inherited `CONDA_PREFIX`, and dies with its process group
/// when the service is killed (Appose would kill only the launcher).
fn check_worker_behind_launcher(service: &consort::ServiceBuilder, tmp: &Path) {
    let service = service.start().unwrap();
    let outputs = service
        .task("import os\n[os.getpid(), os.getppid(), os.environ.get('CONDA_PREFIX', 'unset')]")
        .submit()
        .unwrap()
        .wait_timeout(Duration::from_secs(30))
        .unwrap();
    let result = outputs["result"].as_array().unwrap();
    let worker = u32::try_from(result[0].as_u64().unwrap()).unwrap();
    assert_ne!(worker, service.pid(), "the launcher is the direct child");
    assert_eq!(
        result[1],
        service.pid(),
        "the worker is the launcher's child"
    );
    assert_eq!(result[2], "unset", "the parent's CONDA_PREFIX was stripped");
    assert!(log_lines(tmp).contains(&"run CONDA_PREFIX=unset".to_owned()));
    service.kill();
    assert!(
        wait_until(Duration::from_secs(10), || !is_running(worker)),
        "the worker behind the launcher outlived the kill"
    );
}

#[test]
fn pixi_packages_commands_launcher_and_up_to_date() {
    let _watchdog = watchdog("pixi_packages");
    let tmp = TempDir::new("pixi");
    let pixi = fake_tool(tmp.path(), "pixi");
    let dir = tmp.path().join("proj");
    let events = Events::default();
    let recipe = PixiBuilder::new()
        .conda(["numpy", "python=3.11"])
        .pypi(["appose==0.12.0"])
        .channels(["conda-forge"])
        .with_dir(&dir)
        .with_tool(&pixi)
        .subscribe(events.subscriber());
    let env = recipe.build().unwrap();
    let manifest = dir.join("pixi.toml");
    assert_eq!(
        log_lines(tmp.path()),
        [
            format!("pixi init --channel conda-forge {}", dir.display()),
            format!(
                "pixi add --manifest-path {} numpy python=3.11",
                manifest.display()
            ),
            format!(
                "pixi add --manifest-path {} --pypi appose==0.12.0",
                manifest.display()
            ),
            format!("pixi install --manifest-path {}", manifest.display()),
        ]
    );
    assert_eq!(steps(&events.take()).len(), 4);
    assert_eq!(env.kind(), EnvKind::Pixi);
    assert_eq!(env.bin_paths(), [dir.join(".pixi/envs/default/bin")]);
    assert_eq!(
        built_state(&dir).unwrap()["condaPackages"],
        serde_json::json!(["numpy", "python=3.11"])
    );

    // Unchanged: pixi is not called again.
    recipe.build().unwrap();
    assert_eq!(events.take(), [BuildEvent::UpToDate]);
    assert_eq!(log_lines(tmp.path()).len(), 4);

    // wrap() recognises the project and uses the pixi on PATH: here, the one given.
    assert_eq!(
        Environment::wrap(&dir).map(|e| e.kind()).ok(),
        which("pixi").map(|_| EnvKind::Pixi)
    );

    // CONDA_PREFIX is set here to check the worker does not inherit it. Under nextest this
    // test is its own process.
    std::env::set_var("CONDA_PREFIX", "/leaked/conda");
    check_worker_behind_launcher(&env.consort_python_service().unwrap(), tmp.path());
}

#[test]
fn pixi_environment_yml_is_imported() {
    let _watchdog = watchdog("pixi_environment_yml");
    let tmp = TempDir::new("pixi-yml");
    let pixi = fake_tool(tmp.path(), "pixi");
    let dir = tmp.path().join("tools");
    let yml = "name: tools\nchannels:\n  - conda-forge\ndependencies:\n  - numpy\n";
    PixiBuilder::new()
        .manifest_content("environment.yml", yml)
        .unwrap()
        .with_dir(&dir)
        .with_tool(&pixi)
        .build()
        .unwrap();
    assert_eq!(
        log_lines(tmp.path()),
        [
            format!(
                "pixi init --import {} {}",
                dir.join("environment.yml").display(),
                dir.display()
            ),
            format!(
                "pixi install --manifest-path {}",
                dir.join("pixi.toml").display()
            ),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("environment.yml")).unwrap(),
        yml
    );
    assert!(PixiBuilder::new().manifest("setup.cfg").is_err());

    // A folder the user made is never wiped to build in it.
    let mine = tmp.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "keep").unwrap();
    let err = PixiBuilder::new()
        .conda(["numpy"])
        .with_dir(&mine)
        .with_tool(&pixi)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, EnvError::Refused { path, .. } if *path == mine),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("notes.txt")).unwrap(),
        "keep"
    );
    assert!(!tmp.path().join(".mine.lock").exists());
}

#[test]
fn pixi_failing_add_leaves_nothing_built_and_the_next_build_starts_over() {
    let _watchdog = watchdog("pixi_failing_add");
    let tmp = TempDir::new("pixi-fail");
    let pixi = fake_tool(tmp.path(), "pixi");
    let dir = tmp.path().join("proj");
    let err = PixiBuilder::new()
        .conda(["no-such-package"])
        .with_dir(&dir)
        .with_tool(&pixi)
        .build()
        .unwrap_err();
    match &err {
        EnvError::ToolFailed {
            tool,
            step,
            status,
            message,
        } => {
            assert_eq!(*tool, "pixi");
            assert_eq!(step, "adding conda packages");
            assert_eq!(status, "exit status: 1");
            assert!(
                message.contains("No candidates were found for no-such-package"),
                "{message}"
            );
        }
        other => panic!("expected ToolFailed, got {other:?}"),
    }
    assert!(!dir.join(MARKER).exists());
    assert!(
        dir.join("pixi.toml").exists(),
        "the half-built project is there, unmarked"
    );

    PixiBuilder::new()
        .conda(["numpy"])
        .with_dir(&dir)
        .with_tool(&pixi)
        .build()
        .unwrap();
    assert!(dir.join(MARKER).exists());
    let inits = log_lines(tmp.path())
        .iter()
        .filter(|line| line.starts_with("pixi init"))
        .count();
    assert_eq!(inits, 2, "the second build started from scratch");
}

#[test]
fn micromamba_packages_environment_yml_launcher_and_failure() {
    let _watchdog = watchdog("micromamba");
    let tmp = TempDir::new("mamba");
    let micromamba = fake_tool(tmp.path(), "micromamba");
    let dir = tmp.path().join("prefix");
    let env = MambaBuilder::new()
        .packages(["numpy", "python=3.11"])
        .channels(["conda-forge"])
        .with_dir(&dir)
        .with_tool(&micromamba)
        .build()
        .unwrap();
    assert_eq!(
        log_lines(tmp.path()),
        [format!(
            "micromamba create -y --no-rc --prefix {} -c conda-forge numpy python=3.11",
            dir.display()
        )]
    );
    assert_eq!(env.kind(), EnvKind::Conda);
    assert_eq!(
        env.launcher()[1..],
        ["run".into(), "-p".into(), dir.clone().into_os_string()]
    );
    // Appose's worker, whose command (unlike consort's) does not strip the conda
    // variables itself: the environment must.
    std::env::set_var("CONDA_PREFIX", "/leaked/conda");
    check_worker_behind_launcher(&env.appose_python_service().unwrap(), tmp.path());

    let yml_dir = tmp.path().join("from-yml");
    let yml = "name: tools\ndependencies:\n  - numpy\n";
    std::fs::remove_file(tmp.path().join("log")).unwrap();
    MambaBuilder::new()
        .environment_yml_content(yml)
        .with_dir(&yml_dir)
        .with_tool(&micromamba)
        .build()
        .unwrap();
    let yml_path = yml_dir.join("environment.yml");
    assert_eq!(
        log_lines(tmp.path()),
        [
            format!(
                "micromamba create -y --no-rc --prefix {}",
                yml_dir.display()
            ),
            format!(
                "micromamba env update -y --no-rc --prefix {} -f {}",
                yml_dir.display(),
                yml_path.display()
            ),
        ]
    );
    assert_eq!(std::fs::read_to_string(&yml_path).unwrap(), yml);

    let broken = tmp.path().join("broken");
    let err = MambaBuilder::new()
        .packages(["no-such-package"])
        .with_dir(&broken)
        .with_tool(&micromamba)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, EnvError::ToolFailed { tool: "micromamba", message, .. }
            if message.contains("No candidates were found for no-such-package")),
        "{err:?}"
    );
    assert!(built_state(&broken).is_none());
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

#[test]
fn concurrent_builds_of_one_environment_take_turns() {
    let _watchdog = watchdog("concurrent_builds");
    let tmp = TempDir::new("concurrent");
    let log = tmp.path().join("log");
    // A slow install, so the two builds overlap unless the lock serialises them.
    let pixi = tmp.path().join("bin/pixi");
    write_script(
        &pixi,
        &format!(
            "printf 'pixi %s\\n' \"$*\" >> '{log}'\n\
             case \"$1\" in init) for arg; do dir=\"$arg\"; done; mkdir -p \"$dir\";; install) sleep 0.3;; esac\n",
            log = log.display()
        ),
    );
    let events = Events::default();
    let recipe = PixiBuilder::new()
        .conda(["numpy"])
        .with_dir(tmp.path().join("shared"))
        .with_tool(&pixi)
        .subscribe(events.subscriber());
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let builds: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    recipe.build()
                })
            })
            .collect();
        for build in builds {
            build.join().unwrap().unwrap();
        }
    });
    let installs = log_lines(tmp.path())
        .iter()
        .filter(|line| line.starts_with("pixi install"))
        .count();
    assert_eq!(installs, 1, "{:?}", log_lines(tmp.path()));
    let seen = events.take();
    assert!(
        seen.contains(&BuildEvent::Built) && seen.contains(&BuildEvent::UpToDate),
        "{seen:?}"
    );
}

#[test]
fn a_tool_past_its_timeout_is_killed_with_its_children() {
    let _watchdog = watchdog("tool_timeout");
    let tmp = TempDir::new("timeout");
    let pids = tmp.path().join("pids");
    // `install` starts a grandchild that would run for long, and waits for it.
    let micromamba = tmp.path().join("bin/micromamba");
    write_script(
        &micromamba,
        &format!(
            "echo 'solving...'\nsleep 1000 &\necho $! > '{pids}'\nwait\n",
            pids = pids.display()
        ),
    );
    let dir = tmp.path().join("prefix");
    let err = MambaBuilder::new()
        .packages(["numpy"])
        .with_dir(&dir)
        .with_tool(&micromamba)
        .with_timeout(Duration::from_millis(500))
        .build()
        .unwrap_err();
    match &err {
        EnvError::ToolFailed {
            tool,
            status,
            message,
            ..
        } => {
            assert_eq!(*tool, "micromamba");
            assert!(status.contains("timeout"), "{status}");
            assert_eq!(message, "solving...");
        }
        other => panic!("expected ToolFailed, got {other:?}"),
    }
    let sleeper: u32 = std::fs::read_to_string(&pids)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !is_running(sleeper)),
        "the tool's child survived the timeout"
    );
    assert!(built_state(&dir).is_none());
}
