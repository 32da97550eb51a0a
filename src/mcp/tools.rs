//! The tools an assistant calls: place a call, look at calls, end one, wait for one to finish.
//!
//! Tool names keep the original project's hyphenated style (`trigger-call`). Every tool returns structured
//! content (with an output schema) plus a text copy; every failure a model could fix is an `isError`
//! result whose sentence says what to change, never a protocol error.

use super::McpServer;
use crate::calls::{Call, CallEntry, CallRecord, CallStatus, PageRequest, TranscriptLine, TranscriptPage};
use crate::switchboard::PlaceCall;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ProgressNotificationParam, RequestMetaObject};
use rmcp::service::RequestContext;
use rmcp::{Json, Peer, RoleServer, tool, tool_router};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerCallArgs {
    /// The number to call, in E.164 form: '+', country code, number, no spaces (e.g. +14155550123).
    pub(crate) to_number: String,
    /// Who is being called and what the call must achieve; the voice agent's brief.
    pub(crate) call_context: String,
    /// What the AI says first when the callee answers.
    #[serde(default)]
    pub(crate) first_message: Option<String>,
    /// The AI's voice: alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin or cedar.
    #[serde(default)]
    pub(crate) voice: Option<String>,
    /// The language to speak, e.g. "English" or "es-ES".
    #[serde(default)]
    pub(crate) language: Option<String>,
    /// Record the call (the server's default applies when omitted).
    #[serde(default)]
    pub(crate) record: Option<bool>,
    /// Detect answering machines and report `answeredBy`.
    #[serde(default)]
    pub(crate) machine_detection: Option<bool>,
    /// Hang up after this many seconds (at most the server's limit).
    #[serde(default)]
    pub(crate) max_duration_secs: Option<u32>,
    /// Block until the call ends and return its outcome and transcript, with progress along the way.
    #[serde(default)]
    pub(crate) wait_for_completion: Option<bool>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerCallResult {
    pub(crate) call_sid: String,
    pub(crate) status: CallStatus,
    pub(crate) message: String,
    /// Follow this call's events live (Server-Sent Events).
    pub(crate) sse_url: String,
    /// Read (or subscribe to) the call's record and transcript.
    pub(crate) resource_uri: String,
    /// True when the call went to the built-in simulator rather than a real phone.
    pub(crate) sandbox: bool,
    /// Set when waitForCompletion was asked for: how long the call was connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_secs: Option<u32>,
    /// Set when waitForCompletion was asked for and the call ended: what was said (the latest lines;
    /// get-call with transcriptFrom pages through the rest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transcript: Option<Vec<TranscriptLine>>,
    /// With `transcript`: lines in the whole transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transcript_total: Option<usize>,
    /// With `transcript`: the index (from 0) of its first line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) transcript_from: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallSidArgs {
    /// The call's id, as trigger-call or list-calls returned it (CA…).
    pub(crate) call_sid: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GetCallArgs {
    /// The call's id, as trigger-call or list-calls returned it (CA…).
    pub(crate) call_sid: String,
    /// The transcript from this line on (from 0); omitted: the latest lines. The result's
    /// transcriptFrom and transcriptTotal say where the page sits.
    #[serde(default)]
    pub(crate) transcript_from: Option<u32>,
    /// At most this many transcript lines (default 100, at most 500; a page also stops at 128 KiB of text).
    #[serde(default)]
    pub(crate) limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListCallsArgs {
    /// Only calls with one of these statuses.
    #[serde(default)]
    pub(crate) status: Option<Vec<CallStatus>>,
    /// At most this many calls, newest first (default 20, at most 200).
    #[serde(default)]
    pub(crate) limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallSummary {
    pub(crate) call_sid: String,
    pub(crate) to: String,
    pub(crate) status: CallStatus,
    pub(crate) created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_secs: Option<u32>,
    pub(crate) transcript_lines: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListCallsResult {
    pub(crate) calls: Vec<CallSummary>,
    pub(crate) active: usize,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndCallResult {
    pub(crate) call_sid: String,
    pub(crate) status: CallStatus,
    pub(crate) message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstructCallArgs {
    /// The live call's id (CA…).
    pub(crate) call_sid: String,
    /// What the voice agent should do now, e.g. "Ask whether they have a table at 9 pm instead."
    pub(crate) instruction: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstructCallResult {
    pub(crate) call_sid: String,
    pub(crate) delivered: bool,
    pub(crate) message: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WaitForCallArgs {
    /// The call's id (CA…).
    pub(crate) call_sid: String,
    /// Give up waiting after this many seconds (default and maximum: the server's call duration limit
    /// plus ring time).
    #[serde(default)]
    pub(crate) timeout_secs: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WaitForCallResult {
    pub(crate) call_sid: String,
    pub(crate) status: CallStatus,
    /// False when the wait timed out before the call ended.
    pub(crate) ended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) duration_secs: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) answered_by: Option<String>,
    /// What was said: the latest lines (get-call with transcriptFrom pages through the rest).
    #[serde(flatten)]
    pub(crate) transcript: TranscriptPage,
}

impl CallSummary {
    fn of(c: &Call, transcript_lines: usize) -> Self {
        Self {
            call_sid: c.call_sid.clone(),
            to: c.request.to.to_string(),
            status: c.status,
            created_at: c.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            duration_secs: c.duration_secs,
            transcript_lines,
        }
    }
}

#[tool_router(vis = "pub(crate)")]
impl McpServer {
    #[tool(
        name = "trigger-call",
        description = "Place a real outbound phone call. An AI voice agent calls the number and holds the \
conversation described by callContext. Returns at once with the callSid (or, with waitForCompletion, \
when the call has ended, with its transcript). Costs money and rings a real phone.",
        annotations(
            title = "Place a phone call",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn trigger_call(
        &self,
        Parameters(args): Parameters<TriggerCallArgs>,
        meta: RequestMetaObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<TriggerCallResult>, String> {
        let access = self.access(&ctx);
        access.write()?;
        if access.limited_to_calls() {
            return Err(
                "this token is limited to particular calls (its 'calls' claim) and cannot place new ones".into()
            );
        }
        let peer = ctx.peer.clone();
        // Events from here on are this call's (or nobody's): a session hears all of them.
        let before = self.state.events.last_id();
        let wait = args.wait_for_completion.unwrap_or(false);
        let ask = PlaceCall {
            to: args.to_number,
            context: args.call_context,
            first_message: args.first_message,
            voice: args.voice,
            language: args.language,
            record: args.record,
            machine_detection: args.machine_detection.unwrap_or(false),
            max_duration_secs: args.max_duration_secs,
            caller: access.subject(),
        };
        let entry = self.state.switchboard.place(ask).await.map_err(|e| e.to_string())?;
        self.forward(&ctx, entry.call_sid(), before);
        let mut call = entry.snapshot();
        let mut message = format!("Calling {} now.", call.request.to);
        if wait {
            call = self.wait(&entry, self.wait_limit(), &meta, &peer).await;
            message = outcome_sentence(&call);
        } else {
            message.push_str(" Use wait-for-call or get-call with the callSid to follow it.");
        }
        let ended = call.status.is_terminal();
        let page = (wait && ended).then(|| entry.record(PageRequest::default()).page);
        Ok(Json(TriggerCallResult {
            sse_url: self.sse_url(&call.call_sid),
            resource_uri: format!("call://{}", call.call_sid),
            message,
            status: call.status,
            sandbox: call.sandbox,
            duration_secs: if wait { call.duration_secs } else { None },
            transcript_total: page.as_ref().map(|p| p.transcript_total),
            transcript_from: page.as_ref().map(|p| p.transcript_from),
            transcript: page.map(|p| p.transcript),
            call_sid: call.call_sid,
        }))
    }

    #[tool(
        name = "get-call",
        description = "Get one call's record: status, numbers, timing, answeredBy, recording and its transcript \
(the latest 100 lines by default; transcriptFrom and limit page through a long one, transcriptTotal counts it).",
        annotations(title = "Get a call", read_only_hint = true, open_world_hint = false)
    )]
    async fn get_call(
        &self,
        Parameters(args): Parameters<GetCallArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<CallRecord>, String> {
        self.access(&ctx).read()?;
        let sid = self.visible(&ctx, &args.call_sid)?;
        let page =
            PageRequest { from: args.transcript_from.map(|n| n as usize), limit: args.limit.map(|n| n as usize) };
        self.state.calls.record(sid, page).map(Json).ok_or_else(|| unknown_call(sid))
    }

    #[tool(
        name = "list-calls",
        description = "List calls placed by this server, newest first, optionally only those with given statuses.",
        annotations(title = "List calls", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_calls(
        &self,
        Parameters(args): Parameters<ListCallsArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ListCallsResult>, String> {
        let access = self.access(&ctx);
        access.read()?;
        let limit = args.limit.unwrap_or(20).clamp(1, 200) as usize;
        if !access.limited_to_calls() {
            let calls = self.state.calls.list(args.status.as_deref(), limit);
            return Ok(Json(ListCallsResult {
                calls: calls.iter().map(|c| self.summary(c)).collect(),
                active: self.state.calls.active_count(),
            }));
        }
        // A token limited to some calls sees only those, and counts only those.
        let visible: Vec<Call> = self
            .state
            .calls
            .list(args.status.as_deref(), usize::MAX)
            .into_iter()
            .filter(|c| access.may_see(&c.call_sid))
            .collect();
        let active = visible.iter().filter(|c| !c.status.is_terminal()).count();
        Ok(Json(ListCallsResult { calls: visible.iter().take(limit).map(|c| self.summary(c)).collect(), active }))
    }

    #[tool(
        name = "end-call",
        description = "Hang up a call now. Ending a call that has already ended is not an error.",
        annotations(
            title = "End a call",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn end_call(
        &self,
        Parameters(args): Parameters<CallSidArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<EndCallResult>, String> {
        self.access(&ctx).write()?;
        let sid = self.visible(&ctx, &args.call_sid)?;
        let call = self.state.switchboard.end(sid).await.map_err(|e| e.to_string())?;
        let message = if call.status.is_terminal() {
            format!("The call has ended ({}).", call.status)
        } else {
            "Hang-up requested; the call is ending.".to_owned()
        };
        Ok(Json(EndCallResult { call_sid: call.call_sid, status: call.status, message }))
    }

    #[tool(
        name = "instruct-call",
        description = "Steer a live call: give the voice agent a new instruction (it acts on it at once, \
speaking to the callee). Only works while the call is connected.",
        annotations(
            title = "Instruct a live call",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn instruct_call(
        &self,
        Parameters(args): Parameters<InstructCallArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<InstructCallResult>, String> {
        self.access(&ctx).write()?;
        let sid = self.visible(&ctx, &args.call_sid)?;
        let text = args.instruction.trim();
        if text.is_empty() {
            return Err("instruction is empty: say what the voice agent should do now".into());
        }
        if text.chars().count() > 4_000 {
            return Err("instruction is longer than 4000 characters; shorten it".into());
        }
        if self.state.calls.get(sid).is_none() {
            return Err(unknown_call(sid));
        }
        self.state
            .voices
            .instruct(sid, format!("New instruction from the person you are calling for: {text}"))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Json(InstructCallResult {
            call_sid: sid.to_owned(),
            delivered: true,
            message: "The voice agent has the instruction and is acting on it.".into(),
        }))
    }

    #[tool(
        name = "wait-for-call",
        description = "Wait until a call ends (or the timeout passes), reporting progress, then return its \
final status, duration and transcript.",
        annotations(title = "Wait for a call to end", read_only_hint = true, open_world_hint = false)
    )]
    async fn wait_for_call(
        &self,
        Parameters(args): Parameters<WaitForCallArgs>,
        meta: RequestMetaObject,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<WaitForCallResult>, String> {
        self.access(&ctx).read()?;
        let sid = self.visible(&ctx, &args.call_sid)?;
        let limit = self.wait_limit();
        let timeout = args.timeout_secs.map(Duration::from_secs).map_or(limit, |t| t.min(limit));
        let entry = self.state.calls.entry(sid).ok_or_else(|| unknown_call(sid))?;
        let call = self.wait(&entry, timeout, &meta, &ctx.peer).await;
        Ok(Json(WaitForCallResult {
            ended: call.status.is_terminal(),
            status: call.status,
            duration_secs: call.duration_secs,
            answered_by: call.answered_by,
            transcript: entry.record(PageRequest::default()).page,
            call_sid: call.call_sid,
        }))
    }
}

impl McpServer {
    /// The trimmed CallSid if the caller's `calls` claim covers it; a call it may not see is "unknown",
    /// exactly as if it did not exist. (The scope is checked by each tool: reading or writing.)
    fn visible<'a>(&self, ctx: &RequestContext<RoleServer>, call_sid: &'a str) -> Result<&'a str, String> {
        let sid = call_sid.trim();
        if self.access(ctx).may_see(sid) { Ok(sid) } else { Err(unknown_call(sid)) }
    }

    fn summary(&self, call: &Call) -> CallSummary {
        let lines = self.state.calls.entry(&call.call_sid).map_or(0, |e| e.transcript_len());
        CallSummary::of(call, lines)
    }

    fn sse_url(&self, call_sid: &str) -> String {
        format!("{}?callSid={call_sid}", self.state.config.public("/events"))
    }

    /// The longest any call can last, ringing included: no wait needs to be longer.
    fn wait_limit(&self) -> Duration {
        self.state.config.max_call_duration + self.state.config.ring_timeout + Duration::from_secs(30)
    }

    /// Waits for the call to end, sending a progress notification for each change when the client
    /// gave a progress token. Wakes on the call's own change signal, never by polling.
    async fn wait(
        &self,
        entry: &CallEntry,
        timeout: Duration,
        meta: &RequestMetaObject,
        peer: &Peer<RoleServer>,
    ) -> Call {
        let mut changes = entry.subscribe();
        let progress_token = meta.get_progress_token();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut step = 0u32;
        let mut reported = (None, 0usize);
        loop {
            let call = entry.snapshot();
            let lines = entry.transcript_len();
            if let Some(token) = &progress_token
                && reported != (Some(call.status), lines)
            {
                step += 1;
                let news = progress_message(&call, &entry.transcript_since(reported.1, PROGRESS_LINES));
                reported = (Some(call.status), lines);
                let note = ProgressNotificationParam::new(token.clone(), f64::from(step)).with_message(news);
                // A client that went away cannot be told; the wait itself is still answered.
                let _ = peer.notify_progress(note).await;
            }
            if call.status.is_terminal() {
                return call;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return entry.snapshot() },
                _ = tokio::time::sleep_until(deadline) => return entry.snapshot(),
                _ = self.state.shutdown.cancelled() => return entry.snapshot(),
            }
        }
    }
}

fn unknown_call(sid: &str) -> String {
    let shown: String = sid.chars().take(40).collect();
    format!("No call '{shown}' is known to this server; use list-calls to see the calls it has.")
}

/// New transcript lines told in one progress notification, at most (each is bounded): lines that piled
/// up while a slow client read are summed up by the next one rather than sent as one huge message.
const PROGRESS_LINES: usize = 20;

fn progress_message(call: &Call, new_lines: &[TranscriptLine]) -> String {
    let new_lines: Vec<String> = new_lines.iter().map(|l| format!("{}: {}", l.speaker.as_str(), l.text)).collect();
    if new_lines.is_empty() { format!("call {}", call.status) } else { new_lines.join("\n") }
}

fn outcome_sentence(call: &Call) -> String {
    match (call.status, call.duration_secs) {
        (CallStatus::Completed, Some(d)) => format!("The call to {} completed after {d} s.", call.request.to),
        (s, _) if s.is_terminal() => format!("The call to {} ended: {s}.", call.request.to),
        (s, _) => format!("Stopped waiting; the call to {} is still {s}.", call.request.to),
    }
}
