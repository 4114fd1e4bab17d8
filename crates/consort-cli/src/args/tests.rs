//! The `--timeout` parser's limits, and that the recipes built from a command are the
//! library's own (so the crash floor runs the very worker the service runs).

use std::time::Duration;

use super::*;

#[test]
fn a_timeout_is_a_positive_finite_number_of_seconds_that_fits_a_duration() {
    assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_timeout("1e3"), Ok(Duration::from_secs(1000)));
    for bad in [
        "0", "-0", "-1", "1e-12", "nan", "NaN", "inf", "-inf", "1e30", "", "ten", "5s",
    ] {
        let err = parse_timeout(bad).expect_err(bad);
        assert!(!err.is_empty(), "{bad}");
    }
    assert!(parse_timeout("1e30").unwrap_err().contains("too large"));
    assert!(parse_timeout("0").unwrap_err().contains("more than 0"));
}

fn worker(name: &str) -> WorkerArgs {
    WorkerArgs {
        worker: name.to_owned(),
        python: "python3".into(),
    }
}

#[test]
fn the_python_recipes_are_the_librarys_own() {
    let consort = worker("consort").recipe(None).expect("consort recipe");
    assert_eq!(
        format!("{:?}", consort.builder),
        format!("{:?}", Service::consort_python("python3"))
    );
    let appose = worker("appose").recipe(None).expect("appose recipe");
    assert_eq!(
        format!("{:?}", appose.builder),
        format!("{:?}", Service::appose_python("python3"))
    );
    assert!(consort.is_python() && appose.is_python());
    // The command kept for the floor is the one the builder runs.
    for recipe in [&consort, &appose] {
        assert_eq!(
            format!("{:?}", Service::new(recipe.command())),
            format!("{:?}", recipe.builder)
        );
    }
}

#[test]
fn a_command_line_worker_is_split_as_a_shell_would() {
    let recipe = worker("sh -c 'exit 3'").recipe(None).expect("recipe");
    assert_eq!(
        format!("{:?}", recipe.builder),
        format!(
            "{:?}",
            Service::new({
                let mut command = std::process::Command::new("sh");
                command.args(["-c", "exit 3"]);
                command
            })
        )
    );
    assert!(!recipe.is_python() && recipe.python_command().is_none());
    assert!(worker("").recipe(None).is_err());
    assert!(worker("'unclosed").recipe(None).is_err());
}

#[test]
fn in_an_environment_the_recipes_are_the_environments_own() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("consort-cli-args-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin")).expect("bin");
    std::fs::write(dir.join("pyvenv.cfg"), "home = /usr/bin\n").expect("pyvenv.cfg");
    let python = dir.join("bin/python");
    std::fs::write(&python, "#!/bin/sh\n").expect("python");
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let env = EnvArgs {
        env: Some(dir.clone()),
        with: Vec::new(),
    };
    let environment = Environment::wrap(&dir).expect("wrap");
    let cwd = std::env::current_dir().expect("cwd");
    for (name, expected) in [
        (
            "consort",
            environment.consort_python_service().expect("consort"),
        ),
        (
            "appose",
            environment.appose_python_service().expect("appose"),
        ),
    ] {
        let recipe = worker(name).recipe(Some(&env)).expect(name);
        assert_eq!(
            format!("{:?}", recipe.builder),
            format!("{:?}", expected.with_cwd(&cwd)),
            "{name}"
        );
        assert_eq!(
            format!("{:?}", Service::new(recipe.command())),
            format!("{:?}", recipe.builder),
            "{name}"
        );
        let reference = recipe.python_command().expect("a Python worker");
        assert_eq!(reference.get_program(), python.as_os_str(), "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
