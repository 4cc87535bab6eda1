//! Work whose time grows with a request's size (parsing a body, counting or encoding a prompt)
//! runs on tokio's blocking pool once it is large: the gateway's tasks share one thread by default
//! (`WORKER_THREADS`, docs/ARCHITECTURE.md "Threads"), which a 32 MiB body would hold for tens of
//! milliseconds, stalling every other request's chunks.
use crate::error::Error;

/// Bodies up to this size are parsed, and prompts of up to this much text encoded, on the task
/// that holds them (about 150 µs of JSON work at most); larger ones on the blocking pool.
pub const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// Parses or encodes about `bytes` of a request: [`on_pool_if_over`] [`PARSE_INLINE_BYTES`].
pub async fn off_thread_if_large<T, E>(
    bytes: usize,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    on_pool_if_over(bytes, PARSE_INLINE_BYTES, "reading the request", work).await
}

/// Runs `work` (about `bytes` of it) here when `bytes` is at most `inline_up_to`, else on the
/// blocking pool. A panic there (or the pool stopping) fails this one request: `what failed`.
pub async fn on_pool_if_over<T, E>(
    bytes: usize,
    inline_up_to: usize,
    what: &'static str,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    if bytes <= inline_up_to {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(err) => Err(E::from(Error::Internal(format!("{what} failed: {err}")))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn small_work_runs_where_it_is_large_work_on_the_blocking_pool() {
        // One thread runs the tasks (as `WORKER_THREADS=1` does) and the blocking pool's threads
        // carry a name of their own, so the thread each piece of work ran on tells which it was.
        const POOL: &str = "pool-test-blocking-pool";
        let runtime = tokio::runtime::Builder::new_current_thread()
            .thread_name(POOL)
            .build()
            .unwrap();
        let here = std::thread::current().id();
        let ran_on = |bytes: usize| {
            runtime
                .block_on(off_thread_if_large(bytes, || {
                    let t = std::thread::current();
                    Ok::<_, Error>((t.id(), t.name().map(str::to_owned)))
                }))
                .unwrap()
        };
        assert_eq!(
            ran_on(PARSE_INLINE_BYTES).0,
            here,
            "up to the bound: inline"
        );
        let (id, name) = ran_on(PARSE_INLINE_BYTES + 1);
        assert_ne!(id, here);
        assert_eq!(name.as_deref(), Some(POOL), "past the bound: the pool");
        // A failure in the work is the request's own error, whichever thread ran it.
        let err = runtime
            .block_on(off_thread_if_large(PARSE_INLINE_BYTES + 1, || {
                Err::<(), _>(Error::invalid("not JSON", None))
            }))
            .unwrap_err();
        assert!(err.to_string().contains("not JSON"), "{err}");
    }
}
