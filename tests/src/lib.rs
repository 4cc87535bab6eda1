//! Test support for black-box tests: a scripted MCP bridge peer, a gateway-side IPC client, and
//! a harness that runs the real binaries.
#![forbid(unsafe_code)]
// Test support: panicking with a clear message is how failures are reported here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod containers;
pub mod corpus;
pub mod harness;
pub mod ipc_client;
pub mod mcp_stack;
pub mod observe;
pub mod peer;
pub mod redis;
pub mod relay;
pub mod shared_queue;
pub mod skip;
pub mod stack;
pub mod stdio_agent;
