//! What the gateway and bridge-agent share: the two wire protocols, configuration parsing from
//! `LOCAL_PROVIDER_*` variables, digests, and telemetry set-up.
#![forbid(unsafe_code)]

pub mod answer;
pub mod audit;
pub mod backoff;
pub mod batch;
pub mod bridge;
pub mod coalesce;
pub mod config;
pub mod connections;
pub mod digest;
pub mod frame_summary;
pub mod http_server;
pub mod ipc;
pub mod probe;
pub mod prompt;
#[cfg(any(test, feature = "proptest"))]
pub mod property;
#[cfg(test)]
mod props;
pub mod routes;
pub mod runtime;
pub mod shutdown;
pub mod tagged;
pub mod telemetry;
pub mod web_guard;
pub mod ws_peer;

/// The product's version, reported by `/health` and in the protocol handshakes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
