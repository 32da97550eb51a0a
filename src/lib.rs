//! # voice-call-mcp
//!
//! A remote MCP server that lets an AI assistant place and run phone calls: the assistant connects to
//! `/mcp`, the server dials through Twilio, bridges the call's audio to OpenAI Realtime, and keeps the
//! call's status and both sides' words.
//!
//! # Layout
//! - [`config`]: every setting, from flags, environment and `.env`, validated with clear errors.
//! - [`calls`]: the domain — `Call`, the `CallStatus` state machine, the registry, destination policy.
//!   Knows nothing of HTTP or vendors.
//! - [`switchboard`]: places and ends calls; the one path from a request to a dial, and the one place
//!   status observations are applied.
//! - [`recovery`]: on start, calls a previous run left unfinished are asked after and ended or updated.
//! - [`carrier`]: Twilio — REST client, TwiML, webhook signature, webhook routes, the Media Streams
//!   protocol and its WebSocket route.
//! - [`voice`]: OpenAI Realtime — GA event types, session configuration, the client, and the bridge that
//!   joins a call's two WebSockets (audio pump, barge-in, transcripts, model hang-up).
//! - [`mcp`]: the MCP face — tools, resources, prompts over Streamable HTTP (rmcp).
//! - [`auth`]: JWT validation, the bearer guard on `/mcp` and `/events`, RFC 9728 metadata.
//! - [`edge`]: what every request passes first — Host/Origin checks and rate limits.
//! - [`events`]: call events — the log, fan-out, the `/events` SSE feed.
//! - [`app`]: `AppState`, the router, serving and graceful shutdown; [`listener`]: accepting connections.
//! - [`runtime`]: the async runtime's worker threads, and when each keeps to a CPU of its own.
//! - [`dashboard`]: `GET /dashboard`, a self-contained page that follows calls live over `/events`.
//! - [`telemetry`]: logs (text or JSON), a trace per request and per call, metrics at `/metrics` and
//!   over OTLP.
//! - [`sandbox`]: simulators that speak Twilio's and OpenAI's wire protocols, for sandbox mode and tests.
//!
//! # How a call flows
//! `tools/call trigger-call` (token checked: `calls:write`) → [`switchboard::Switchboard::place`]: the
//! number screened (emergency, short codes) → E.164 parse → policy (lists, premium rate) → a concurrency
//! slot from the registry → the caller's hourly quota → policy again at dial time → Twilio `Calls.json` with inline TwiML (`<Connect><Stream>` carrying a per-call
//! token) and status callbacks to `PUBLIC_URL/twilio/status` → the call is registered `queued` and the
//! tool returns, while the call's voice task opens the Realtime session as the phone rings. Twilio posts
//! signed callbacks; [`carrier::webhooks`] checks each signature and the switchboard applies it, in
//! `SequenceNumber` order, never backwards. When the callee answers, Twilio opens `/twilio/media`
//! ([`carrier::media`] checks the handshake and the call's token) and the stream is handed to the call's
//! [`voice::bridge`], which relays audio both ways untouched until the call ends.

pub mod app;
pub mod auth;
pub mod calls;
pub mod carrier;
pub mod config;
pub mod dashboard;
pub mod edge;
pub mod events;
pub mod listener;
pub mod mcp;
pub mod recovery;
pub mod runtime;
pub mod sandbox;
pub mod store;
pub mod switchboard;
pub mod telemetry;
pub mod voice;

pub use app::{AppState, serve};
pub use config::{Config, RawConfig};
