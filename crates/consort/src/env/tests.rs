//! Unit tests for the environment model: recipe names, hashes, wrapping detection, and
//! the command a worker gets in an environment.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use super::*;

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "consort-env-unit-{tag}-{}-{:x}",
        std::process::id(),
        crate::sys::random_u64().unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn env_of<'a>(command: &'a Command, key: &str) -> Option<Option<&'a OsStr>> {
    command
        .get_envs()
        .find(|(name, _)| *name == key)
        .map(|(_, value)| value)
}

#[test]
fn names_come_from_manifests() {
    let pyproject = "[build-system]\nname = \"no\"\n[project]\nversion = \"1\"\nname = \"demo\"\n";
    assert_eq!(toml_name(pyproject).as_deref(), Some("demo"));
    assert_eq!(
        toml_name("[workspace]\nname = 'px'\n").as_deref(),
        Some("px")
    );
    assert_eq!(toml_name("[dependencies]\nname = \"x\"\n"), None);
    assert_eq!(toml_name("[project]\nname = \"../evil\"\n"), None);
    assert_eq!(
        yml_name("name: tools\nchannels:\n  - conda-forge\n").as_deref(),
        Some("tools")
    );
    assert_eq!(yml_name("dependencies:\n  - name: x\n"), None);
}

#[test]
fn wrap_detects_each_kind() {
    let root = temp_dir("wrap");
    let venv = root.join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    let wrapped = Environment::wrap(&venv).unwrap();
    assert_eq!(wrapped.kind(), EnvKind::Venv);
    assert_eq!(wrapped.bin_paths(), [venv.join("bin")]);
    assert!(wrapped.launcher().is_empty());

    let project = root.join("project");
    std::fs::create_dir_all(project.join(".venv/bin")).unwrap();
    std::fs::write(project.join(".venv/pyvenv.cfg"), "").unwrap();
    let wrapped = Environment::wrap(&project).unwrap();
    assert_eq!(wrapped.kind(), EnvKind::Venv);
    assert_eq!(wrapped.base(), project);
    assert_eq!(wrapped.bin_paths(), [project.join(".venv/bin")]);

    let plain = root.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let wrapped = Environment::wrap(&plain).unwrap();
    assert_eq!(wrapped.kind(), EnvKind::System);
    assert!(wrapped.bin_paths().is_empty());

    match Environment::wrap(root.join("missing")) {
        Err(EnvError::NotFound(path)) => assert_eq!(path, root.join("missing")),
        other => panic!("expected NotFound, got {other:?}"),
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn commands_run_in_the_environment() {
    let root = temp_dir("command");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("pyvenv.cfg"), "").unwrap();
    let tool = root.join("bin/tool");
    std::fs::write(&tool, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = Environment::wrap(&root).unwrap().with_env("EXTRA", "1");

    let mut command = Command::new("tool");
    command.arg("--flag").env("CONDA_SHLVL", "7");
    let out = env.command_from(&command);
    assert_eq!(
        out.get_program(),
        tool.as_os_str(),
        "a bare name found in bin runs by path"
    );
    assert_eq!(out.get_args().collect::<Vec<_>>(), ["--flag"]);
    assert_eq!(out.get_current_dir(), Some(root.as_path()));
    assert_eq!(
        env_of(&out, "CONDA_PREFIX"),
        Some(None),
        "conda variables are removed"
    );
    assert_eq!(
        env_of(&out, "CONDA_SHLVL"),
        Some(Some(OsStr::new("7"))),
        "unless the caller sets them"
    );
    assert_eq!(env_of(&out, "EXTRA"), Some(Some(OsStr::new("1"))));
    let path = env_of(&out, "PATH").flatten().unwrap();
    assert_eq!(
        std::env::split_paths(path).next().unwrap(),
        root.join("bin")
    );

    let mut elsewhere = Command::new("/bin/true");
    elsewhere.current_dir("/");
    let out = env.command_from(&elsewhere);
    assert_eq!(out.get_program(), "/bin/true");
    assert_eq!(out.get_current_dir(), Some(Path::new("/")));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn launchers_go_first_and_python_stays_bare() {
    let env = pixi::environment(Path::new("/opt/pixi"), Path::new("/envs/p"));
    assert_eq!(env.python().unwrap(), Path::new("python"));
    let out = env.command_from(&Command::new("python"));
    assert_eq!(out.get_program(), "/opt/pixi");
    assert_eq!(
        out.get_args().collect::<Vec<_>>(),
        ["run", "--manifest-path", "/envs/p/pixi.toml", "python"]
    );
    let env = mamba::environment(Path::new("/opt/micromamba"), Path::new("/envs/m"));
    let out = env.command_from(&Command::new("python"));
    assert_eq!(out.get_program(), "/opt/micromamba");
    assert_eq!(
        out.get_args().collect::<Vec<_>>(),
        ["run", "-p", "/envs/m", "python"]
    );
}

#[test]
fn a_directory_consort_did_not_build_is_never_deleted() {
    let root = temp_dir("refuse");
    let user = root.join("mine");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("thesis.tex"), "precious").unwrap();
    match delete(&user) {
        Err(EnvError::Refused { path, .. }) => assert_eq!(path, user),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(user.join("thesis.tex").exists());
    std::fs::write(user.join(MARKER), "{}").unwrap();
    delete(&user).unwrap();
    assert!(!user.exists());
    std::fs::remove_dir_all(&root).unwrap();
}
