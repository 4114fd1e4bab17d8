//! Unit tests for `service`: how a recipe is taken from a `Command`.

use std::ffi::OsString;

use super::*;

#[test]
fn a_recipe_keeps_program_args_cwd_and_env_of_the_command() {
    let mut command = Command::new("worker");
    command
        .arg("--flag")
        .current_dir("/tmp")
        .env("SET_ME", "1")
        .env_remove("UNSET_ME");
    let builder = Service::new(command)
        .with_env("LATER", "2")
        .with_env("SET_ME", "3");
    let config = &builder.config;
    assert_eq!(config.program, OsString::from("worker"));
    assert_eq!(config.args, vec![OsString::from("--flag")]);
    assert_eq!(config.cwd, Some(PathBuf::from("/tmp")));
    let env = config.env.to_vec();
    assert!(env.contains(&(OsString::from("UNSET_ME"), None)));
    assert!(env.contains(&(OsString::from("LATER"), Some(OsString::from("2")))));
    // A later setting replaces an earlier one instead of adding a duplicate.
    assert_eq!(
        env.iter()
            .filter(|(key, _)| key == "SET_ME")
            .collect::<Vec<_>>(),
        vec![&(OsString::from("SET_ME"), Some(OsString::from("3")))]
    );
}

#[test]
fn the_appose_python_recipe_runs_appose_worker_without_conda_variables() {
    let builder = Service::appose_python("python3");
    let config = &builder.config;
    assert_eq!(config.program, OsString::from("python3"));
    assert_eq!(
        config.args,
        vec![
            OsString::from("-c"),
            OsString::from(python::APPOSE_WORKER_SCRIPT)
        ]
    );
    for var in python::CONDA_VARS {
        assert!(
            config.env.contains(&(OsString::from(var), None)),
            "{var} is removed"
        );
    }
}

#[test]
fn a_missing_program_fails_start_with_its_name() {
    let err = Service::new(Command::new("/nonexistent/consort-worker"))
        .start()
        .expect_err("no such program");
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/consort-worker") && message.contains("No such file"),
        "{message}"
    );
}
