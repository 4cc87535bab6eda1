//! Black-box tests of the real binaries. Build them first: `cargo build --workspace --bins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access;
mod admission;
mod agent;
mod api_shapes;
mod audit_log;
mod chaos;
mod chat;
mod clients;
mod coding_clients;
mod compose;
mod connections;
mod containers;
mod corpus;
mod first_contact;
mod handover;
mod limits;
mod mcp_agent;
mod mcp_tokens;
mod messages_api;
mod model_names;
mod ollama;
mod ops;
mod redis_store;
mod refusals;
mod resilience;
mod responses_api;
mod resume;
mod shared_queue;
mod status_page;
mod store_scripts;
mod telemetry;
mod web_pages;

use std::time::Duration;

/// A generous bound for things that normally take milliseconds.
pub const SOON: Duration = Duration::from_secs(10);
