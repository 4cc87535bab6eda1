//! One function per fuzz target: each hands arbitrary bytes to one public entry point of the
//! product and asserts what must hold for any input (no panic, no hang, and the target's own
//! invariant). The cargo-fuzz targets in `fuzz/fuzz_targets/` (nightly) and the corpus replay
//! test (`tests/corpus.rs` here, stable, part of every test run) call these same functions, so
//! every input the fuzzer saved is checked again without nightly.
#![forbid(unsafe_code)]

mod gateway_apis;
mod wire;

pub use gateway_apis::{chat, completions, messages, ollama_chat, ollama_generate, responses};
pub use wire::{bridge_frame, ipc_codec, relay_sse};

/// What a fuzz target does with one input; it panics when something that must hold does not.
pub type Target = fn(&[u8]);

/// Every target: its name (the file in `fuzz/fuzz_targets/` and the folder in `fuzz/corpus/`)
/// and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("ipc_codec", ipc_codec),
    ("bridge_frame", bridge_frame),
    ("relay_sse", relay_sse),
    ("chat", chat),
    ("completions", completions),
    ("responses", responses),
    ("messages", messages),
    ("ollama_chat", ollama_chat),
    ("ollama_generate", ollama_generate),
];

/// Splits `data` into a piece length (from its first byte, 1 to 64) and the rest, so that the
/// fuzzer also chooses how a stream is cut.
fn piece_length_and_rest(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((first, rest)) => (usize::from(*first % 64) + 1, rest),
        None => (1, data),
    }
}
