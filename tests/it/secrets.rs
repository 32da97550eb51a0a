//! Secrets never reach a log line: the real binary, logging everything at `trace`, runs a whole call
//! against the simulators with planted credentials, is sent tokens every way a client can send them
//! (and some it should not), and then its output is searched for each planted secret.

use crate::support::*;
use base64::Engine;
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use voice_call_mcp::calls::CallStatus;
use voice_call_mcp::sandbox::realtime::{RealtimeSimConfig, RealtimeSimulator};
use voice_call_mcp::sandbox::twilio::{SimRequest, SimulatorConfig, TwilioSimulator};

const TWILIO_TOKEN: &str = "planted0twilio0auth0token0abcdef";
const OPENAI_KEY: &str = "sk-planted-openai-key-0123456789";
const SECRET: &str = "planted-jwt-secret-planted-jwt-secret-0123";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_planted_secret_appears_in_any_log_line() {
    let account = format!("AC{}", "5".repeat(32));
    let sim = TwilioSimulator::start(SimulatorConfig {
        account_sid: account.clone(),
        auth_token: TWILIO_TOKEN.into(),
        api_key: None,
        step_delay: Duration::from_millis(15),
        talk_time: None,
        media: true,
        ms_per_char: 8,
    })
    .await
    .unwrap();
    let realtime = RealtimeSimulator::start(RealtimeSimConfig {
        api_key: OPENAI_KEY.into(),
        ms_per_char: 8,
        delta_ms: 20,
        end_silence_ms: 120,
    })
    .await
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_voice-call-mcp"));
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(std::env::temp_dir())
        .envs([
            ("RUST_LOG", "trace"),
            ("NO_COLOR", "1"),
            ("PUBLIC_URL", base.as_str()),
            ("PORT", &port.to_string()),
            ("TWILIO_ACCOUNT_SID", &account),
            ("TWILIO_AUTH_TOKEN", TWILIO_TOKEN),
            ("TWILIO_NUMBER", "+15005550006"),
            ("TWILIO_API_BASE", &sim.base_url()),
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("OPENAI_REALTIME_URL", &realtime.url()),
            ("JWT_SECRET", SECRET),
            ("DATABASE_URL", "sqlite::memory:"),
            ("DRAIN_TIMEOUT_SECS", "1"),
        ]);
    let mut server = ServerProcess::spawn(command);
    server.wait_for("voice-call-mcp listening");
    let http = reqwest::Client::new();

    // The real path: a call over MCP with the token in the header, the events feed with it in the query
    // and in a cookie.
    let claims = claims(&base, ALL_SCOPES);
    let jwt = voice_call_mcp::auth::mint(SECRET, "HS256", &claims).unwrap();
    let by_query = http.get(format!("{base}/events?access_token={jwt}&types=call-ended")).send().await.unwrap();
    assert_eq!(by_query.status(), 200);
    let by_cookie = http.get(format!("{base}/events")).header("cookie", format!("access_token={jwt}")).send().await;
    assert_eq!(by_cookie.unwrap().status(), 200);
    let client = {
        use rmcp::service::ClientServiceExt;
        rmcp::model::ClientConfig::default()
            .serve_with_lifecycle(mcp_transport(&base, &jwt), lifecycle(Era::Session))
            .await
            .unwrap()
    };
    // A callee who says goodbye after the AI's first words: the whole voice path runs.
    let placed =
        call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "secrets"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();
    let stream_token = loop {
        let seen = tokio::time::timeout(WAIT, sim.next_request()).await.unwrap().unwrap();
        if let SimRequest::CreateCall { form, .. } = seen {
            let twiml = form_values(&form, "Twiml")[0].to_owned();
            let token = twiml.split(r#"name="callToken" value=""#).nth(1).unwrap().split('"').next().unwrap();
            break token.to_owned();
        }
    };
    let ended = call_tool(&client, "wait-for-call", json!({"callSid": sid})).await;
    assert_eq!(ok(&ended)["status"], serde_json::to_value(CallStatus::Completed).unwrap());

    // The ways it should be refused, each carrying a secret: a token in the query on /mcp, a forged one,
    // a media handshake with a stolen stream token, a webhook signed with the real key over a wrong URL.
    let in_query = http.post(format!("{base}/mcp?access_token={jwt}")).json(&json!({})).send().await.unwrap();
    assert_eq!(in_query.status(), 401);
    let forged = format!("{jwt}tampered");
    assert_eq!(
        http.post(format!("{base}/mcp")).bearer_auth(&forged).json(&json!({})).send().await.unwrap().status(),
        401
    );
    let form = [("CallSid", sid.as_str()), ("CallStatus", "completed"), ("AccountSid", account.as_str())];
    let signature = voice_call_mcp::carrier::signature::compute(
        TWILIO_TOKEN,
        "https://elsewhere.example.com/twilio/status",
        &form.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>(),
    );
    let refused =
        http.post(format!("{base}/twilio/status")).header("x-twilio-signature", signature).form(&form).send().await;
    assert_eq!(refused.unwrap().status(), 403);
    let media = format!("ws://127.0.0.1:{port}/twilio/media");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(media.as_str()).unwrap();
    let handshake = voice_call_mcp::carrier::signature::compute(TWILIO_TOKEN, &media, &[]);
    request.headers_mut().insert("x-twilio-signature", handshake.parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let replayed = json!({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
        "start": {"accountSid": account, "streamSid": "MZ1", "callSid": sid, "tracks": ["inbound"],
                  "customParameters": {"callToken": format!("{stream_token}-replayed")},
                  "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}});
    futures::SinkExt::send(&mut socket, tokio_tungstenite::tungstenite::Message::text(replayed.to_string()))
        .await
        .unwrap();
    // The server closes the socket (a wrong token); its reason is in the log, the token must not be.
    while let Some(Ok(frame)) = futures::StreamExt::next(&mut socket).await {
        if frame.is_close() {
            break;
        }
    }

    drop(client);
    drop(by_query);
    let (code, logged) = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
    assert_eq!(code, Some(0));
    assert!(logged.iter().filter(|l| l.contains(" TRACE ")).count() > 20, "trace logging ran: {logged:#?}");
    assert!(logged.iter().any(|l| l.contains(&sid)), "the call was logged");

    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{account}:{TWILIO_TOKEN}"));
    let jwt_signature = jwt.rsplit('.').next().unwrap().to_owned();
    for (what, secret) in [
        ("the Twilio auth token", TWILIO_TOKEN.to_owned()),
        ("the Twilio Basic credentials", basic),
        ("the OpenAI key", OPENAI_KEY.to_owned()),
        ("the JWT secret", SECRET.to_owned()),
        ("the bearer token", jwt.clone()),
        ("the bearer token's signature", jwt_signature),
        ("the per-call stream token", stream_token.clone()),
    ] {
        let leaks: Vec<&String> = logged.iter().filter(|l| l.contains(&secret)).collect();
        assert!(
            leaks.is_empty(),
            "{what} was logged:\n{}",
            leaks.iter().take(3).map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
    sim.shutdown().await;
    realtime.shutdown().await;
}
