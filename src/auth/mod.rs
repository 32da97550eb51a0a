//! Bearer-token (JWT) authentication for `/mcp` and `/events`.
//!
//! This server is an OAuth resource server: it never issues tokens to clients itself (except HMAC
//! tokens minted by the operator with `voice-call-mcp token`, or for sandbox mode); it only checks them,
//! against one key chosen by configuration — an HMAC secret, a PEM public key, or an authorization
//! server's JWKS. The rules follow RFC 8725 (JWT best current practice) and PROTOCOLS.md §7.
//!
//! - [`Claims`] (`claims.rs`): what a valid token says; the scope names.
//! - [`Authenticator`] (`authenticator.rs`): token → claims; `key_file.rs` and `jwks.rs` supply its key.
//! - [`mint`] (`token.rs`): HMAC tokens for the `token` command and sandbox mode.
//! - [`bearer_token`], [`redact_query`] (`http.rs`): finding the token in a request, keeping it out of logs.
//! - [`guard`]: the middleware in front of `/mcp` and `/events`; [`metadata`]: RFC 9728's document.
//! - [`AuthError`] / [`AuthSetupError`] (`error.rs`): refusals as RFC 6750 challenges; setup failures
//!   naming the setting.

mod authenticator;
mod claims;
mod error;
pub mod guard;
mod http;
mod jwks;
mod key_file;
pub mod metadata;
mod token;

#[cfg(test)]
mod test_keys;
#[cfg(test)]
mod tests;

pub use authenticator::Authenticator;
pub use claims::{Audience, Claims, SCOPE_CALLS_READ, SCOPE_CALLS_WRITE, SCOPE_EVENTS_READ};
pub use error::{AuthError, AuthSetupError};
pub use http::{bearer_token, redact_query};
pub use token::mint;
