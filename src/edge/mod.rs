//! What every request passes before a handler sees it: Host and Origin checks, rate limits, bounded bodies.
//!
//! The server is exposed on the open internet and spends money per call, so these run in front of the
//! routes, in this order: Host/Origin (a DNS-rebinding page or a foreign site is refused before any work),
//! then per-address rate limits, then (on `/mcp` and `/events`) the token, then per-subject limits. Each
//! route group has its own buckets, so a flood on `/mcp` cannot starve Twilio's callbacks. Around them all,
//! every request body is bounded ([`body`]), in a way that lets the client read its 413.

pub mod body;
pub mod origin;
pub mod rate;

pub use origin::Origins;
pub use rate::Limits;
