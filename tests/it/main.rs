//! Integration tests: the real server on a random loopback port, driven by a real MCP client over HTTP,
//! with the Twilio simulator as `TWILIO_API_BASE`. One binary, a module per area, so it links once.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod authz;
mod calls;
mod cli;
mod dashboard;
mod drain;
mod events;
mod limits;
mod mcp_surface;
mod openapi;
mod rejections;
mod secrets;
mod sse;
mod state_machine;
mod support;
mod telemetry;
mod voice;
mod webhooks;
