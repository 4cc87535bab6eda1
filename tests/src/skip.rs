//! The one rule for a test whose dependency (Python packages, Docker, redis-server, promtool, …) is
//! missing: when the `CI` variable is set to anything but `false` or `0` the test FAILS, saying
//! what is missing and how to get it; otherwise it is skipped, loudly.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Whether a missing dependency must fail: `CI` set, and not to `false`, `0` or nothing.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| means_ci(&v))
}

fn means_ci(value: &str) -> bool {
    !matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "false" | "0"
    )
}

/// `test` cannot run because `what` is missing (`how` gets it): panics under CI, else prints a
/// loud skip notice. The caller returns right after.
#[track_caller]
pub fn missing_dependency(test: &str, what: &str, how: &str) {
    if in_ci() {
        panic!("{test}: {what} is missing ({how}); CI is set, so this is a failure, not a skip");
    }
    eprintln!(
        "\n********** SKIPPED {test}: {what} is missing ({how}). Set CI=true to make this a failure. **********\n"
    );
}

/// The interpreter with the pinned client packages: `LOCAL_PROVIDER_TEST_PYTHON`, else the
/// repository's `.venv` (`scripts/setup-test-deps.sh` makes it), checked once to import `modules`.
/// `None` after [`missing_dependency`] when it or a package is missing.
pub fn python(test: &str, modules: &[&str]) -> Option<PathBuf> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let python = std::env::var_os("LOCAL_PROVIDER_TEST_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join(".venv/bin/python"));
        if !python.is_file() {
            return Err(format!("the Python test environment {}", python.display()));
        }
        let imports = format!("import {}", modules.join(", "));
        match std::process::Command::new(&python)
            .args(["-c", &imports])
            .output()
        {
            Ok(out) if out.status.success() => Ok(python),
            Ok(out) => Err(format!(
                "a Python package ({imports} in {}: {})",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("a runnable {} ({e})", python.display())),
        }
    });
    match found {
        Ok(python) => Some(python.clone()),
        Err(what) => {
            missing_dependency(test, what, "scripts/setup-test-deps.sh installs it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ci_is_anything_but_false_or_zero() {
        for on in ["true", "1", "yes", "TRUE", "github"] {
            assert!(super::means_ci(on), "{on}");
        }
        for off in ["false", "0", "", "False", " 0 "] {
            assert!(!super::means_ci(off), "{off}");
        }
    }
}
