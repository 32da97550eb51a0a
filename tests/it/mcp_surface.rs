//! What an assistant discovers: tools with schemas and honest annotations, resources, the prompt.

use crate::support::*;
use rmcp::model::{GetPromptRequestParams, ReadResourceRequestParams, ResourceContents};
use serde_json::json;

#[tokio::test]
async fn tools_are_listed_with_schemas_and_annotations_in_both_protocol_eras() {
    let server = TestServer::start().await;
    for era in [Era::Session, Era::Stateless] {
        let client = server.client(era).await;
        let tools = client.list_all_tools().await.unwrap();
        let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            ["end-call", "get-call", "instruct-call", "list-calls", "trigger-call", "wait-for-call"],
            "{era:?}"
        );
        for tool in &tools {
            assert!(tool.output_schema.is_some(), "{} has an output schema", tool.name);
        }
        let trigger = tools.iter().find(|t| t.name == "trigger-call").unwrap();
        let required = trigger.input_schema.get("required").cloned().unwrap_or_default();
        assert_eq!(required, json!(["toNumber", "callContext"]));
        let a = trigger.annotations.as_ref().unwrap();
        assert_eq!((a.read_only_hint, a.open_world_hint), (Some(false), Some(true)), "it costs money");
        let get = tools.iter().find(|t| t.name == "get-call").unwrap();
        assert_eq!(get.annotations.as_ref().unwrap().read_only_hint, Some(true));
        client.cancel().await.unwrap();
    }
    server.stop().await;
}

fn text(contents: &[ResourceContents]) -> serde_json::Value {
    match &contents[0] {
        ResourceContents::TextResourceContents { text, mime_type, .. } => {
            assert_eq!(mime_type.as_deref(), Some("application/json"));
            serde_json::from_str(text).unwrap()
        }
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn calls_are_readable_as_resources() {
    let server = TestServer::start().await;
    let client = server.client(Era::Session).await;
    let placed = call_tool(&client, "trigger-call", json!({"toNumber": "+14155550123", "callContext": "x"})).await;
    let sid = ok(&placed)["callSid"].as_str().unwrap().to_owned();

    let listed = client.list_all_resources().await.unwrap();
    let uris: Vec<_> = listed.iter().map(|r| r.uri.clone()).collect();
    assert!(uris.contains(&format!("call://{sid}")) && uris.contains(&"call://transcriptions/latest".to_owned()));
    let templates = client.list_all_resource_templates().await.unwrap();
    assert_eq!(templates[0].uri_template, "call://{callSid}");

    let read = client.read_resource(ReadResourceRequestParams::new(format!("call://{sid}"))).await.unwrap();
    let record = text(&read.contents);
    assert_eq!(record["callSid"], sid.as_str());
    assert_eq!(record["to"], "+14155550123");
    let latest = client.read_resource(ReadResourceRequestParams::new("call://transcriptions/latest")).await.unwrap();
    assert_eq!(text(&latest.contents)["callSid"], sid.as_str());

    let missing = client.read_resource(ReadResourceRequestParams::new("call://CAmissing")).await;
    assert!(missing.is_err(), "an unknown call is a resource-not-found error");
    client.cancel().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_restaurant_prompt_names_the_number_and_the_booking() {
    let server = TestServer::start().await;
    let client = server.client(Era::Stateless).await;
    let prompts = client.list_all_prompts().await.unwrap();
    let prompt = prompts.iter().find(|p| p.name == "make-restaurant-reservation").unwrap();
    let args: Vec<_> = prompt.arguments.iter().flatten().map(|a| (a.name.as_str(), a.required)).collect();
    for name in ["restaurantNumber", "peopleNumber", "date", "time"] {
        assert!(args.contains(&(name, Some(true))), "{name} in {args:?}");
    }
    let mut a = serde_json::Map::new();
    for (k, v) in [("restaurantNumber", "+14155550123"), ("peopleNumber", "4"), ("date", "Friday"), ("time", "8 pm")] {
        a.insert(k.into(), v.into());
    }
    let got =
        client.get_prompt(GetPromptRequestParams::new("make-restaurant-reservation").with_arguments(a)).await.unwrap();
    let body = serde_json::to_string(&got.messages).unwrap();
    for needle in ["+14155550123", "4 people", "Friday", "8 pm", "trigger-call"] {
        assert!(body.contains(needle), "{needle} in {body}");
    }
    client.cancel().await.unwrap();
    server.stop().await;
}
