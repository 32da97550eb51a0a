//! Integration tests: the real server on a random loopback port, driven by a real MCP client over HTTP,
//! with the Twilio simulator as `TWILIO_API_BASE`. One binary, a module per area, so it links once.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod calls;
mod cli;
mod events;
mod mcp_surface;
mod rejections;
mod sse;
mod support;
mod voice;
mod webhooks;
