//! The call domain: what a call is, how its status moves, where live calls are kept, and which
//! numbers may be called. Nothing here knows about HTTP, Twilio or OpenAI; the edges translate.

mod call;
mod number;
mod policy;
mod registry;
pub mod safety;
mod status;

#[cfg(test)]
pub(crate) use call::test_request;
pub use call::{Applied, Call, CallError, CallRequest, CallSid, CallUpdate, Speaker, TranscriptLine};
pub use number::{E164, NumberError};
pub use policy::{BadPrefix, DestinationPolicy, PolicyError};
pub use registry::{CallEntry, CallRegistry, DialTicket, RegistryError, UpdateOutcome};
pub use status::CallStatus;
