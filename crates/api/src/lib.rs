//! The HTTP API (JSON) and the page, on loopback. The only crate that knows HTTP.
//!
//! Reads come from a [`Snapshot`] the core publishes; writes (approve, reject, stop,
//! start, external agent proposals) are sent to the core as [`Op`]s and answered by it,
//! so the guard stays the one place where decisions are made.
//!
//! Layers, outermost first: request body limit, timeout, then per-route authentication
//! (operator bearer token for everything but the page, health and agent proposals, which
//! carry their own proof).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// Largest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

const PAGE: &str = include_str!("../assets/index.html");

/// What the core publishes for readers. Each field is the JSON the matching route returns.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: Value,
    pub alerts: Value,
    pub proposals: Value,
    pub report: Value,
    pub audit_head: Value,
    /// twinguard's clock (wall clock in `run`, simulated time in the demo).
    pub now_ms: i64,
}

pub type Reply = oneshot::Sender<Result<Value, String>>;

/// A write, handled by the core.
#[derive(Debug)]
pub enum Op {
    Approve {
        id: u64,
        by: String,
        reply: Reply,
    },
    Reject {
        id: u64,
        by: String,
        reply: Reply,
    },
    Stop {
        by: String,
        reply: Reply,
    },
    Start {
        by: String,
        reply: Reply,
    },
    /// A signed proposal from an external agent (JSON of `guard::SignedProposal`).
    AgentProposal {
        body: Value,
        reply: Reply,
    },
    /// An external agent's signed token request (JSON of `guard::TokenRequest`).
    AgentToken {
        body: Value,
        reply: Reply,
    },
}

#[derive(Clone)]
pub struct ApiState {
    pub snapshot: Arc<RwLock<Snapshot>>,
    pub ops: mpsc::Sender<Op>,
    operator_token_hash: [u8; 32],
    operator: String,
}

impl ApiState {
    /// `operator_token` authenticates the operator named `operator`.
    pub fn new(
        snapshot: Arc<RwLock<Snapshot>>,
        ops: mpsc::Sender<Op>,
        operator: &str,
        operator_token: &str,
    ) -> ApiState {
        ApiState {
            snapshot,
            ops,
            operator_token_hash: Sha256::digest(operator_token.as_bytes()).into(),
            operator: operator.to_string(),
        }
    }

    /// The operator's name, or why the request is not authenticated.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, &'static str> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| -> [u8; 32] { Sha256::digest(t.trim().as_bytes()).into() });
        match presented {
            Some(h) if h == self.operator_token_hash => Ok(self.operator.clone()),
            Some(_) => Err("operator token is not valid"),
            None => Err("missing header Authorization: Bearer <operator token>"),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(health))
        .route(
            "/api/v1/state",
            get(|s: State<ApiState>, h: HeaderMap| read(s, h, |s| s.state.clone())),
        )
        .route(
            "/api/v1/alerts",
            get(|s: State<ApiState>, h: HeaderMap| read(s, h, |s| s.alerts.clone())),
        )
        .route(
            "/api/v1/proposals",
            get(|s: State<ApiState>, h: HeaderMap| read(s, h, |s| s.proposals.clone())),
        )
        .route(
            "/api/v1/report",
            get(|s: State<ApiState>, h: HeaderMap| read(s, h, |s| s.report.clone())),
        )
        .route(
            "/api/v1/audit/head",
            get(|s: State<ApiState>, h: HeaderMap| read(s, h, |s| s.audit_head.clone())),
        )
        .route("/api/v1/proposals/{id}/approve", post(approve))
        .route("/api/v1/proposals/{id}/reject", post(reject))
        .route("/api/v1/stop", post(stop))
        .route("/api/v1/start", post(start))
        .route("/api/v1/agent/proposals", post(agent_proposal))
        .route("/api/v1/agent/token", post(agent_token))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .with_state(state)
}

async fn read(
    State(s): State<ApiState>,
    headers: HeaderMap,
    f: impl Fn(&Snapshot) -> Value,
) -> Response {
    if let Err(why) = s.authenticate(&headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    match s.snapshot.read() {
        Ok(snap) => Json(f(&snap)).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "state is unavailable"),
    }
}

async fn call(s: &ApiState, make: impl FnOnce(Reply) -> Op) -> Response {
    call_with(s, make, StatusCode::CONFLICT).await
}

/// [`call`], answering the core's refusal with `refused`.
async fn call_with(s: &ApiState, make: impl FnOnce(Reply) -> Op, refused: StatusCode) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.ops.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the core is not running; nothing executes",
        );
    }
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(v))) => Json(v).into_response(),
        Ok(Ok(Err(msg))) => error(refused, &msg),
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the core did not answer; nothing executed",
        ),
    }
}

async fn approve(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    match s.authenticate(&headers) {
        Ok(by) => call(&s, |reply| Op::Approve { id, by, reply }).await,
        Err(why) => error(StatusCode::UNAUTHORIZED, why),
    }
}

async fn reject(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    match s.authenticate(&headers) {
        Ok(by) => call(&s, |reply| Op::Reject { id, by, reply }).await,
        Err(why) => error(StatusCode::UNAUTHORIZED, why),
    }
}

async fn stop(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match s.authenticate(&headers) {
        Ok(by) => call(&s, |reply| Op::Stop { by, reply }).await,
        Err(why) => error(StatusCode::UNAUTHORIZED, why),
    }
}

async fn start(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match s.authenticate(&headers) {
        Ok(by) => call(&s, |reply| Op::Start { by, reply }).await,
        Err(why) => error(StatusCode::UNAUTHORIZED, why),
    }
}

/// Liveness and twinguard's clock (agents date their requests by it); 503 while the
/// clock has not started.
async fn health(State(s): State<ApiState>) -> Response {
    let now_ms = s
        .snapshot
        .read()
        .map(|snap| snap.now_ms)
        .unwrap_or_default();
    if now_ms == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting" })),
        )
            .into_response();
    }
    Json(json!({ "status": "ok", "now_ms": now_ms })).into_response()
}

/// The request body as JSON, or the message saying why it is not.
fn json_body(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| format!("request body is not JSON: {e}"))
}

async fn agent_proposal(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    match json_body(&body) {
        Ok(body) => call(&s, |reply| Op::AgentProposal { body, reply }).await,
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

async fn agent_token(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    match json_body(&body) {
        Ok(body) => {
            call_with(
                &s,
                |reply| Op::AgentToken { body, reply },
                StatusCode::UNAUTHORIZED,
            )
            .await
        }
        Err(why) => error(StatusCode::BAD_REQUEST, &why),
    }
}

/// Serves the API and the page on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}
