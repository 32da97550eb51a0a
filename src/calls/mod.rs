//! The call domain: what a call is, how its status moves, where live calls are kept, and which
//! numbers may be called. Nothing here knows about HTTP, Twilio or OpenAI; the edges translate.

mod call;
mod number;
mod policy;
mod registry;
pub mod safety;
mod status;
mod transcript;

#[cfg(test)]
pub(crate) use call::test_request;
pub use call::{
    Applied, Call, CallError, CallRecord, CallRequest, CallSid, CallUpdate, MAX_DTMF, MAX_ERRORS, Speaker,
    TranscriptLine,
};
pub use number::{E164, NumberError};
pub use policy::{BadPrefix, DestinationPolicy, PolicyError};
pub use registry::{CallEntry, CallRegistry, DialTicket, RegistryError, UpdateOutcome};
pub use status::CallStatus;
pub use transcript::{
    DEFAULT_PAGE_LINES, MAX_LINE_BYTES, MAX_LINES, MAX_PAGE_BYTES, MAX_PAGE_LINES, PageRequest, Transcript,
    TranscriptPage,
};
