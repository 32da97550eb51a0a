//! Prompts: ready-made tasks a user can pick in their MCP client.
//!
//! `make-restaurant-reservation` is the original project's prompt, with its argument names kept.

use super::McpServer;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{PromptMessage, Role};
use rmcp::{prompt, prompt_router};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReservationArgs {
    /// The restaurant's phone number, E.164 (e.g. +14155550123).
    pub(crate) restaurant_number: String,
    /// How many people the table is for.
    pub(crate) people_number: String,
    /// The day, e.g. "Friday 14 March".
    pub(crate) date: String,
    /// The time, e.g. "7:30 pm".
    pub(crate) time: String,
}

#[prompt_router(vis = "pub(crate)")]
impl McpServer {
    #[prompt(
        name = "make-restaurant-reservation",
        description = "Call a restaurant and book a table for a number of people at a date and time."
    )]
    async fn make_restaurant_reservation(&self, Parameters(a): Parameters<ReservationArgs>) -> Vec<PromptMessage> {
        let text = format!(
            "Call the restaurant at {number} with the trigger-call tool and book a table for {people} people \
on {date} at {time}.\n\
Use a callContext like: \"You are calling a restaurant on behalf of a customer to book a table for \
{people} people on {date} at {time}. Greet them, ask for the booking, confirm the details they offer \
(a nearby time is fine if the exact one is taken; ask before accepting anything else), give the \
customer's name if asked, thank them and say goodbye.\"\n\
Then use wait-for-call with the returned callSid and tell me the outcome from the transcript: whether \
the table is booked, for when, and anything the restaurant asked us to know.",
            number = a.restaurant_number.trim(),
            people = a.people_number.trim(),
            date = a.date.trim(),
            time = a.time.trim(),
        );
        vec![PromptMessage::new_text(Role::User, text)]
    }
}
