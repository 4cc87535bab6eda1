//! The property-test runner every crate's property tests use (feature `proptest`): a bounded case
//! count in CI, and a count of cases ran that `scripts/proptest-long.sh` adds up.
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `test` on `strategy`'s values `PROPTEST_CASES` times (256 by default) and prints how many
/// cases ran, for `scripts/proptest-long.sh` to add up. Panics naming the property and the
/// minimal failing input when it fails.
pub fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = AtomicU64::new(0);
    let result = runner.run(&strategy, |value| {
        ran.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    println!("property {name}: {} cases", ran.load(Ordering::Relaxed));
    if let Err(err) = result {
        panic!("property {name} failed: {err}");
    }
}
