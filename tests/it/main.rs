//! Integration tests: the real server on a random loopback port, driven by a real MCP client over HTTP,
//! with the Twilio simulator as `TWILIO_API_BASE`. One binary, a module per area, so it links once.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod authz;
mod calls;
mod cli;
mod dashboard;
mod drain;
mod events;
mod faults;
mod limits;
mod mcp_http;
mod mcp_surface;
mod openapi;
mod raw;
mod recovery;
mod rejections;
mod secrets;
mod slow_reader;
mod sse;
mod state_machine;
mod support;
mod telemetry;
mod transcripts;
mod voice;
mod webhooks;
