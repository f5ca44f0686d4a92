//! HTTP handlers in-process: authentication, reads from the snapshot, writes as operations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a test failure"
)]

use std::sync::{Arc, RwLock};

use api::{ApiState, Op, Snapshot, router};
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower::ServiceExt;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn setup() -> (axum::Router, mpsc::Receiver<Op>) {
    let snap = Snapshot {
        state: api::Document::of(&json!({"plant": "line"})).unwrap(),
        now_ms: 1_767_225_600_000,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let state = ApiState::new(Arc::new(RwLock::new(snap)), tx, "operator", TOKEN);
    (router(state), rx)
}

async fn call(app: axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn get(path: &str, token: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn reads_need_the_operator_token() {
    let (app, _rx) = setup();
    let (s, v) = call(app.clone(), get("/api/v1/state", None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("Authorization"));
    let (s, _) = call(app.clone(), get("/api/v1/state", Some("nope"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(app.clone(), get("/api/v1/state", Some(TOKEN))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["plant"], "line");
    let (s, v) = call(app, get("/healthz", None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["now_ms"], 1_767_225_600_000i64,
        "twinguard's clock, for agents"
    );
}

#[tokio::test]
async fn the_page_is_served_without_secrets() {
    let (app, _rx) = setup();
    let resp = app.oneshot(get("/", None)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html =
        String::from_utf8(to_bytes(resp.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(html.contains("twinguard"));
    assert!(!html.contains(TOKEN));
}

#[tokio::test]
async fn approve_is_forwarded_to_the_core_with_the_operator_name() {
    let (app, mut rx) = setup();
    let core = tokio::spawn(async move {
        match rx.recv().await {
            Some(Op::Approve { id, by, reply }) => {
                assert_eq!(id, 7);
                assert_eq!(by.name, "operator");
                // The operator token stands for an admin: every role below is held too.
                assert_eq!(by.role.held(), ["viewer", "operator", "approver", "admin"]);
                reply.send(Ok(json!({"decision": "executed"}))).unwrap();
            }
            other => panic!("{other:?}"),
        }
    });
    let req = Request::post("/api/v1/proposals/7/approve")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (s, v) = call(app, req).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["decision"], "executed");
    core.await.unwrap();
}

#[tokio::test]
async fn writes_fail_safe_when_the_core_is_gone() {
    let (app, rx) = setup();
    drop(rx);
    let req = Request::post("/api/v1/stop")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (s, v) = call(app, req).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(v["error"].as_str().unwrap().contains("nothing executes"));
}

#[tokio::test]
async fn agent_proposals_must_be_json_and_bodies_are_bounded() {
    let (app, _rx) = setup();
    let req = Request::post("/api/v1/agent/proposals")
        .body(Body::from("not json"))
        .unwrap();
    let (s, v) = call(app.clone(), req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().contains("not JSON"));
    let big = vec![b'a'; api::MAX_BODY + 1];
    let req = Request::post("/api/v1/agent/proposals")
        .body(Body::from(big))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}
