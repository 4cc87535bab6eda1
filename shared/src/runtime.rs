//! The async runtime each service runs on, sized by `LOCAL_PROVIDER_WORKER_THREADS`
//! (docs/configuration.md, "Threads"; docs/ARCHITECTURE.md "Threads" says why one is the default
//! for the gateway and bridge-agent):
//!
//! - `1`: one thread runs every task. No wake-up crosses threads, so a request's hops inside the
//!   process cost no futex calls and no cross-core hand-offs.
//! - `N` ≥ 2: a work-stealing runtime with `N` worker threads.
//! - `0`: a work-stealing runtime with one worker per CPU.
//!
//! Work that could stall the one thread (counting a large prompt, parsing or encoding a large body,
//! name lookups) runs on the runtime's blocking pool whichever is chosen.
use serde::{Deserialize, Deserializer};

/// The most worker threads a service takes.
pub const MAX_WORKER_THREADS: u64 = 1024;

/// `LOCAL_PROVIDER_WORKER_THREADS`: `0` (one per CPU) to [`MAX_WORKER_THREADS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerThreads(pub u64);

impl WorkerThreads {
    /// One thread: the gateway's and bridge-agent's default.
    pub const ONE: WorkerThreads = WorkerThreads(1);
    /// One worker per CPU: mcp-bridge's default.
    pub const PER_CPU: WorkerThreads = WorkerThreads(0);

    /// Builds the runtime this many threads describe, with I/O and timers enabled.
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self.0 {
            1 => tokio::runtime::Builder::new_current_thread(),
            0 => tokio::runtime::Builder::new_multi_thread(),
            n => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(usize::try_from(n).unwrap_or(usize::MAX));
                b
            }
        };
        builder.enable_all().build()
    }
}

impl<'de> Deserialize<'de> for WorkerThreads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        match raw.trim().parse::<u64>() {
            Ok(n) if n <= MAX_WORKER_THREADS => Ok(WorkerThreads(n)),
            _ => Err(serde::de::Error::custom(format!(
                "expected 1 (one thread, the default for the gateway and bridge-agent), 0 (one worker per CPU) or a number of workers up to {MAX_WORKER_THREADS}, got {raw:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Raw {
        worker_threads: Option<WorkerThreads>,
    }

    fn parse(value: &str) -> Result<Option<WorkerThreads>, crate::config::ConfigError> {
        let vars = [("LOCAL_PROVIDER_WORKER_THREADS".to_owned(), value.to_owned())];
        crate::config::from_vars::<Raw>(vars).map(|r| r.worker_threads)
    }

    #[test]
    fn takes_zero_to_the_bound_and_names_the_variable_otherwise() {
        assert_eq!(parse("1").unwrap(), Some(WorkerThreads::ONE));
        assert_eq!(parse(" 0 ").unwrap(), Some(WorkerThreads::PER_CPU));
        assert_eq!(parse("1024").unwrap(), Some(WorkerThreads(1024)));
        for bad in ["1025", "-1", "two", ""] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.var, "LOCAL_PROVIDER_WORKER_THREADS", "{bad:?}");
            assert!(err.message.contains("one worker per CPU"), "{bad:?}: {err}");
        }
    }

    /// The thread a task spawned on `runtime` ran on.
    fn spawned_on(runtime: &tokio::runtime::Runtime) -> std::thread::ThreadId {
        runtime.block_on(async {
            tokio::spawn(async { std::thread::current().id() })
                .await
                .unwrap()
        })
    }

    #[test]
    fn one_thread_runs_every_task_on_the_thread_that_started_the_runtime() {
        let runtime = WorkerThreads::ONE.runtime().unwrap();
        assert_eq!(spawned_on(&runtime), std::thread::current().id());
    }

    #[test]
    fn more_than_one_runs_tasks_on_its_own_workers() {
        let runtime = WorkerThreads(2).runtime().unwrap();
        assert_eq!(runtime.metrics().num_workers(), 2);
        assert_ne!(spawned_on(&runtime), std::thread::current().id());
    }
}
