//! Call events: what happened on a call, logged once and delivered to everyone following it —
//! dashboards over `/events` (Server-Sent Events) and the assistants' MCP sessions.

mod bus;
mod event;

pub use bus::{EventBus, FOLLOWER_QUEUE, FollowError, Follower, Published};
pub use event::{CallEvent, EVENT_TYPES};
pub mod sse;
