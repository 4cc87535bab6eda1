//! Replays every saved fuzz input, the seeds (`fuzz/seeds/<target>/`), the inputs of the faults
//! fuzzing found (`fuzz/regressions/<target>/`) and what the fuzzer kept (`fuzz/corpus/<target>/`),
//! through its target's function, on the stable toolchain: what the fuzzer once found stays fixed.
use std::path::{Path, PathBuf};

/// Every file in `dir`, or none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .path()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    }
}

#[test]
fn every_saved_input_passes_its_target() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    for (name, target) in fuzz_harness::TARGETS {
        let files: Vec<PathBuf> = ["seeds", "regressions", "corpus"]
            .iter()
            .flat_map(|kind| inputs(&fuzz.join(kind).join(name)))
            .collect();
        assert!(!files.is_empty(), "no saved inputs for {name}");
        for path in &files {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} fails on {}", path.display());
        }
        eprintln!("{name}: {} inputs replayed", files.len());
    }
}
