//! What the gateway's tokenizer costs against tiktoken-rs (BENCHMARKS.md, "Tokenizer and the
//! audit line"): the memory each keeps once loaded (each in a fresh process of its own), the time
//! to load it, and the time to count a short prompt and each file given, with both counts
//! compared.
//!
//! `tokenizer-cost FILE...`; `tokenizer-cost load tiktoken|tiktoken-rs` is the child of one load.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::time::{Duration, Instant};

const SHORT: &str = "Hello, world! This is a fairly ordinary prompt with some code: \
                     fn main() { println!(\"hi\"); }\n";

fn rss() -> u64 {
    bench::rss_bytes(std::process::id()).unwrap()
}

/// Loads one tokenizer and counts the short text: its load time and the RSS it added.
fn load(which: &str) {
    let before = rss();
    let started = Instant::now();
    let tokens = match which {
        "tiktoken" => tiktoken::get_encoding("cl100k_base").unwrap().count(SHORT),
        "tiktoken-rs" => tiktoken_rs::cl100k_base_singleton()
            .encode_ordinary(SHORT)
            .len(),
        other => panic!("no tokenizer {other:?}: tiktoken or tiktoken-rs"),
    };
    let took = started.elapsed();
    println!(
        "{which}: loaded and counted {tokens} tokens in {:.1} ms; RSS +{:.1} MB",
        took.as_secs_f64() * 1e3,
        (rss() - before) as f64 / (1024.0 * 1024.0)
    );
}

/// The mean time of `count` over `rounds` runs.
fn timed(rounds: u32, mut count: impl FnMut() -> usize) -> (usize, Duration) {
    let started = Instant::now();
    let mut tokens = 0;
    for _ in 0..rounds {
        tokens = std::hint::black_box(count());
    }
    (tokens, started.elapsed() / rounds)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("load") {
        return load(&args[1]);
    }
    for which in ["tiktoken-rs", "tiktoken"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["load", which])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let ours = tiktoken::get_encoding("cl100k_base").unwrap();
    let reference = tiktoken_rs::cl100k_base_singleton();
    let mut texts = vec![("a short prompt".to_owned(), SHORT.to_owned())];
    for path in &args {
        texts.push((path.clone(), std::fs::read_to_string(path).unwrap()));
    }
    println!("| text | bytes | tokens | tiktoken-rs | tiktoken |");
    println!("|---|---:|---:|---:|---:|");
    for (name, text) in &texts {
        let rounds = (1_000_000 / text.len().max(1)).clamp(3, 10_000) as u32;
        let (expected, slow) = timed(rounds, || {
            reference.encode_ordinary(std::hint::black_box(text)).len()
        });
        let (tokens, fast) = timed(rounds, || ours.count(std::hint::black_box(text)));
        assert_eq!(tokens, expected, "{name}: the two counts differ");
        println!(
            "| {name} | {} | {tokens} | {slow:.1?} | {fast:.1?} |",
            text.len()
        );
    }
}
