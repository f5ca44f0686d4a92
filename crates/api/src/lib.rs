//! The HTTP API (JSON) and the page, on loopback. The only crate that knows HTTP.
//!
//! Reads come from a [`Snapshot`] the core publishes; writes (approve, reject, stop,
//! start, external agent proposals) are sent to the core as [`Op`]s and answered by it,
//! so the guard stays the one place where decisions are made.
//!
//! Layers, outermost first: request body limit, timeout, then per-route authentication
//! (a person's bearer token for everything but the page, health, login and the agent
//! routes, which carry their own proof) and role: viewers read, operators may also stop
//! the line, approvers may also approve, reject and resume, admins everything.

pub mod accounts;

use std::sync::{Arc, Mutex, RwLock};
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

use crate::accounts::{Accounts, Person, Role};

/// Largest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

const PAGE: &str = include_str!("../assets/index.html");

/// A JSON document written once by the core and handed to every reader as it is: no
/// tree of values to build, copy or walk again per request. The default is `null`.
#[derive(Debug, Clone, Default)]
pub struct Document(Option<Arc<serde_json::value::RawValue>>);

impl Document {
    pub fn of<T: serde::Serialize + ?Sized>(value: &T) -> Result<Document, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(|raw| Document(Some(Arc::from(raw))))
    }
}

impl serde::Serialize for Document {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(raw) => raw.serialize(s),
            None => s.serialize_unit(),
        }
    }
}

/// What the core publishes for readers. Each field is the JSON the matching route returns.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: Document,
    pub alerts: Document,
    pub proposals: Proposals,
    pub report: Value,
    pub audit_head: Value,
    /// twinguard's clock (wall clock in `run`, simulated time in the demo).
    pub now_ms: i64,
    /// Why nothing can execute (the audit log is unavailable), when that is so.
    pub failure: Option<String>,
}

/// What `/api/v1/proposals` returns: the proposals waiting for a human and the latest
/// decisions. The decisions are shared with the core, not copied: publishing after each
/// agent request costs a reference count per decision, and the copy into JSON is made
/// only when someone reads.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Proposals {
    pub pending: Value,
    /// The latest decisions, oldest first.
    pub recent: Vec<Arc<Value>>,
}

pub type Reply = oneshot::Sender<Result<Value, String>>;

/// A write, handled by the core. `by` is the person as the API authenticated them.
#[derive(Debug)]
pub enum Op {
    Approve {
        id: u64,
        by: Person,
        reply: Reply,
    },
    Reject {
        id: u64,
        by: Person,
        reply: Reply,
    },
    Stop {
        by: Person,
        reply: Reply,
    },
    Start {
        by: Person,
        reply: Reply,
    },
    /// A signed proposal from an external agent (JSON of `guard::SignedProposal`).
    AgentProposal {
        body: Value,
        reply: Reply,
    },
    /// An approver resets the breakers: agents leave advisory mode.
    ResetBreakers {
        by: Person,
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
    accounts: Arc<Mutex<Accounts>>,
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
            accounts: Arc::new(Mutex::new(Accounts::default())),
        }
    }

    /// People's accounts beside the installer's operator token (which acts as an admin).
    pub fn with_accounts(mut self, accounts: Arc<Mutex<Accounts>>) -> ApiState {
        self.accounts = accounts;
        self
    }

    /// Who is asking, if they hold at least `role`; else the status and why.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        role: Role,
    ) -> Result<Person, (StatusCode, String)> {
        use subtle::ConstantTimeEq;
        let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing header Authorization: Bearer <token>".into(),
            ));
        };
        let hash: [u8; 32] = Sha256::digest(bearer.trim().as_bytes()).into();
        let person = if bool::from(hash.ct_eq(&self.operator_token_hash)) {
            Some(Person {
                name: self.operator.clone(),
                role: Role::Admin,
            })
        } else {
            self.accounts
                .lock()
                .ok()
                .and_then(|mut a| a.by_token(bearer))
        };
        match person {
            None => Err((StatusCode::UNAUTHORIZED, "token is not valid".into())),
            Some(p) if p.role < role => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "{} is a {}; this needs the {} role",
                    p.name,
                    p.role.as_str(),
                    role.as_str()
                ),
            )),
            Some(p) => Ok(p),
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
        .route("/api/v1/login", post(login))
        .route("/api/v1/breakers/reset", post(reset_breakers))
        .route("/api/v1/whoami", get(whoami))
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

async fn read<T: serde::Serialize>(
    State(s): State<ApiState>,
    headers: HeaderMap,
    f: impl Fn(&Snapshot) -> T,
) -> Response {
    if let Err((status, why)) = s.authenticate(&headers, Role::Viewer) {
        return error(status, &why);
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
    match s.authenticate(&headers, Role::Approver) {
        Ok(p) => call(&s, |reply| Op::Approve { id, by: p, reply }).await,
        Err((status, why)) => error(status, &why),
    }
}

async fn reject(State(s): State<ApiState>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    match s.authenticate(&headers, Role::Approver) {
        Ok(p) => call(&s, |reply| Op::Reject { id, by: p, reply }).await,
        Err((status, why)) => error(status, &why),
    }
}

/// The stop button: any operator may press it.
async fn stop(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match s.authenticate(&headers, Role::Operator) {
        Ok(p) => call(&s, |reply| Op::Stop { by: p, reply }).await,
        Err((status, why)) => error(status, &why),
    }
}

/// Resuming after a stop takes an approver.
async fn start(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match s.authenticate(&headers, Role::Approver) {
        Ok(p) => call(&s, |reply| Op::Start { by: p, reply }).await,
        Err((status, why)) => error(status, &why),
    }
}

/// Agents leave advisory mode: an approver's decision.
async fn reset_breakers(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match s.authenticate(&headers, Role::Approver) {
        Ok(p) => call(&s, |reply| Op::ResetBreakers { by: p, reply }).await,
        Err((status, why)) => error(status, &why),
    }
}

/// Who the token belongs to, and their role.
async fn whoami(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    match s.authenticate(&headers, Role::Viewer) {
        Ok(p) => Json(json!({ "user": p.name, "role": p.role })).into_response(),
        Err((status, why)) => error(status, &why),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

/// A password login: checks the Argon2id hash off the async threads and opens a session.
async fn login(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let Ok(login) = serde_json::from_slice::<Login>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"user\": ..., \"password\": ...}",
        );
    };
    let target = match s.accounts.lock() {
        Ok(a) => a.login_target(&login.user),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "accounts are unavailable"),
    };
    let phc = match target {
        Ok(p) => p,
        Err(why) => return error(StatusCode::TOO_MANY_REQUESTS, &why),
    };
    let password = login.password;
    let ok = tokio::task::spawn_blocking(move || accounts::check_password(&phc, &password))
        .await
        .unwrap_or(false);
    let mut session = [0u8; 32];
    if getrandom::fill(&mut session).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no randomness for a session",
        );
    }
    let session = hex::encode(session);
    let person = match s.accounts.lock() {
        Ok(mut a) => a.login_result(&login.user, ok, session.clone()),
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "accounts are unavailable"),
    };
    match person {
        Some(p) => Json(json!({
            "token": session,
            "user": p.name,
            "role": p.role,
            "expires_in_s": accounts::SESSION_TTL.as_secs(),
        }))
        .into_response(),
        None => error(StatusCode::UNAUTHORIZED, "user name or password is wrong"),
    }
}

/// Liveness and twinguard's clock (agents date their requests by it); 503 while the
/// clock has not started.
async fn health(State(s): State<ApiState>) -> Response {
    let (now_ms, failure) = s
        .snapshot
        .read()
        .map(|snap| (snap.now_ms, snap.failure.clone()))
        .unwrap_or_default();
    if let Some(reason) = failure {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "failing safe", "reason": reason, "now_ms": now_ms })),
        )
            .into_response();
    }
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
