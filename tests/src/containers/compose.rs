//! compose.yaml itself, run with the locally built images: a project of the test's own (unique
//! name, its own `--env-file`, nothing from the developer's `.env` or `LOCAL_PROVIDER_*` shell
//! variables), taken down with its volumes when dropped.
use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

use super::{repo_root, unique, Docker};

pub struct Project {
    pub name: String,
    command: Vec<String>,
    files: Vec<PathBuf>,
    env_file: PathBuf,
    pub dir: TempDir,
}

impl Project {
    /// compose.yaml plus `overrides` (paths from the repository root), with `env` as its
    /// `--env-file`. Panics when no compose command works.
    pub fn new(docker: &Docker, overrides: &[&str], env: &[(String, String)]) -> Self {
        let command = match &docker.compose {
            Ok(command) => command.clone(),
            Err(why) => panic!("{why}"),
        };
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let env_file = dir.path().join("test.env");
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&env_file, text).unwrap_or_else(|e| panic!("write env file: {e}"));
        let root = repo_root();
        let mut files = vec![root.join("compose.yaml")];
        files.extend(overrides.iter().map(|f| root.join(f)));
        Self {
            name: unique("compose"),
            command,
            files,
            env_file,
            dir,
        }
    }

    /// Runs `compose -p NAME -f ... --env-file ... <args>`; its stdout, or stdout and stderr as
    /// the error.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let (program, rest) = self
            .command
            .split_first()
            .unwrap_or_else(|| panic!("empty compose command"));
        let mut cmd = Command::new(program);
        cmd.args(rest).arg("-p").arg(&self.name);
        for file in &self.files {
            cmd.arg("-f").arg(file);
        }
        cmd.arg("--env-file").arg(&self.env_file).args(args);
        cmd.current_dir(repo_root());
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("LOCAL_PROVIDER_") || key_text.starts_with("COMPOSE_") {
                cmd.env_remove(&key);
            }
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.command.join(" ")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{} {} failed ({}):\n{stdout}{}",
                self.command.join(" "),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The id of `service`'s container.
    pub fn container(&self, service: &str) -> String {
        let id = self
            .run(&["ps", "-q", service])
            .unwrap_or_else(|e| panic!("{e}"));
        let id = id.trim();
        assert!(!id.is_empty(), "compose service {service} has no container");
        id.to_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            match self.run(&["logs", "--no-color", "--tail", "100"]) {
                Ok(logs) => eprintln!("----- compose project {} -----\n{logs}", self.name),
                Err(e) => eprintln!("compose logs: {e}"),
            }
        }
        if let Err(e) = self.run(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]) {
            eprintln!("compose down: {e}");
        }
    }
}
