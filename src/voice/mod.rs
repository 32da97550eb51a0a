//! The voice: OpenAI Realtime (GA interface) over WebSocket, bridged to Twilio's media stream.
//!
//! [`Voices`] owns every call's voice task. A task starts when the call is dialed and opens the Realtime
//! session while the phone rings, so the AI is ready the moment the callee answers; it then waits for
//! Twilio's media stream (handed over by the `/twilio/media` route) and runs the [`bridge`] until the
//! call's audio ends. If the call never connects (busy, no answer), the task closes the session.

pub mod bridge;
pub mod client;
pub mod events;
pub mod session;

use crate::calls::{CallEntry, CallSid};
use crate::config::VoiceConfig;
use bridge::{Command, Line, SessionSettings, Timing, TwilioLink};
use futures::{FutureExt, SinkExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The Twilio side as the media route hands it over.
pub type TwilioSocket = axum::extract::ws::WebSocket;

/// A live call's voice, as the rest of the server reaches it.
#[derive(Debug)]
struct Handle {
    /// Taken by the media route when Twilio's stream starts (once: a second stream is refused).
    twilio: Option<oneshot::Sender<TwilioLink<TwilioSocket>>>,
    commands: mpsc::Sender<Command>,
}

#[derive(Debug)]
pub struct Voices {
    config: VoiceConfig,
    timing: Timing,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Touched when a call starts, streams, is instructed or ends — never per audio frame.
    handles: Mutex<HashMap<CallSid, Handle>>,
}

#[derive(Debug, thiserror::Error)]
pub enum InstructError {
    #[error("call {0} has no live voice session (it has not been answered yet, or it has ended)")]
    NotLive(String),
    #[error("{0}")]
    Refused(String),
}

impl Voices {
    /// The voice grace periods (draining waits for them).
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// `shutdown` is the wrap-up signal: when it is cancelled, live calls say goodbye and end.
    pub fn new(config: VoiceConfig, timing: Timing, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self { config, timing, tasks, shutdown, handles: Mutex::default() }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<CallSid, Handle>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a call's voice task: opens the model's session while the phone rings.
    pub fn start(self: &Arc<Self>, entry: Arc<CallEntry>, line: impl Line + 'static) {
        let (twilio_tx, twilio_rx) = oneshot::channel();
        let (commands_tx, commands_rx) = mpsc::channel(8);
        let sid = entry.call_sid().to_owned();
        self.handles().insert(sid.clone(), Handle { twilio: Some(twilio_tx), commands: commands_tx });
        let voices = self.clone();
        // Held for the task's life, never entered: entering a span on every poll would tax every frame.
        let span = crate::telemetry::calls::voice(&sid);
        self.tasks.spawn(async move {
            let _span = span;
            voices.live(entry, line, twilio_rx, commands_rx).await;
            voices.handles().remove(&sid);
        });
    }

    async fn live(
        &self,
        entry: Arc<CallEntry>,
        line: impl Line,
        twilio: oneshot::Receiver<TwilioLink<TwilioSocket>>,
        commands: mpsc::Receiver<Command>,
    ) {
        let config = self.config.clone();
        let connect = move || {
            let config = config.clone();
            async move { client::connect(&config).await }.boxed()
        };
        let settings = SessionSettings { voice: self.config.voice.clone(), model: self.config.model.clone() };
        let mut preopen = Some(connect());
        let mut realtime = None;
        let mut changes = entry.subscribe();
        tokio::pin!(twilio);
        let link = loop {
            tokio::select! {
                opened = async { match preopen.as_mut() { Some(f) => f.await, None => std::future::pending().await } } => {
                    preopen = None;
                    match opened {
                        Ok(mut socket) => {
                            let update = session::for_call(&entry.snapshot(), &settings, None);
                            if let Ok(text) = serde_json::to_string(&update)
                                && socket.send(text.into()).await.is_ok()
                            {
                                realtime = Some(socket);
                            }
                        }
                        // The bridge tries again once the callee answers, and apologises if that fails too.
                        Err(e) => tracing::warn!(call_sid = %entry.call_sid(), error = %e, "could not open the voice session while ringing"),
                    }
                }
                link = &mut twilio => match link {
                    Ok(link) => break link,
                    Err(_) => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() || entry.snapshot().status.is_terminal() {
                        // Never answered (or ended before streaming): nothing to bridge.
                        return;
                    }
                }
                () = self.shutdown.cancelled() => return,
            }
        };
        let connect: Box<dyn Fn() -> futures::future::BoxFuture<'static, _> + Send + Sync> = Box::new(connect);
        // A session still opening when the callee answers is simply opened again by the bridge.
        bridge::run(
            entry,
            line,
            link,
            realtime,
            connect,
            settings,
            self.timing.clone(),
            commands,
            self.shutdown.clone(),
        )
        .await;
    }

    /// Hands Twilio's started stream to the call's voice task. `None` when the call has no waiting task.
    pub fn take_twilio(&self, call_sid: &str) -> Option<oneshot::Sender<TwilioLink<TwilioSocket>>> {
        self.handles().get_mut(call_sid).and_then(|h| h.twilio.take())
    }

    /// Sends an instruction into a live call's voice session and waits until it has been delivered.
    pub async fn instruct(&self, call_sid: &str, text: String) -> Result<(), InstructError> {
        let commands = self
            .handles()
            .get(call_sid)
            .filter(|h| h.twilio.is_none())
            .map(|h| h.commands.clone())
            .ok_or_else(|| InstructError::NotLive(call_sid.to_owned()))?;
        let (done, delivered) = oneshot::channel();
        commands
            .send(Command::Instruct { text, done })
            .await
            .map_err(|_| InstructError::NotLive(call_sid.to_owned()))?;
        match delivered.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(InstructError::Refused(why)),
            Err(_) => Err(InstructError::NotLive(call_sid.to_owned())),
        }
    }

    /// Live voice sessions (calls streaming audio now).
    pub fn live_count(&self) -> usize {
        self.handles().values().filter(|h| h.twilio.is_none()).count()
    }
}
