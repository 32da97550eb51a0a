//! Twilio, the carrier: its REST API (we are the client), its webhooks (Twilio is the client), the
//! signature that authenticates them, and the TwiML that connects a call's audio to us.

pub mod media;
pub mod rest;
pub mod signature;
pub mod stream;
pub mod twiml;
pub mod webhooks;
