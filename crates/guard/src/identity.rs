//! Agent identity: registered keys, short-lived tokens bound to the agent, and a signed,
//! fresh, never-repeated proof on every proposal. A token alone is worthless: it must come
//! with a signature by the key of the agent it was issued to.

use std::collections::{HashMap, HashSet, VecDeque};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Proposal;

/// Largest proposal body accepted, in bytes.
pub const MAX_PROPOSAL_BYTES: usize = 16 * 1024;
const CONTEXT: &[u8] = b"twinguard/proposal/v1\0";
const TOKEN_CONTEXT: &[u8] = b"twinguard/token-request/v1\0";
/// Live tokens an external agent may hold through token requests (rotation overlaps two;
/// more is refused).
pub const MAX_LIVE_TOKENS: usize = 4;

/// What an agent's tokens allow: action kinds on assets ("line" for a line stop). `None`
/// on a registry entry means every kind on every asset (the built-in agents, whose reach
/// the policy alone decides).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    pub kinds: Vec<String>,
    pub assets: Vec<String>,
}

impl Scope {
    pub fn covers(&self, kind: &str, asset: &str) -> bool {
        self.kinds.iter().any(|k| k == kind) && self.assets.iter().any(|a| a == asset)
    }
}

/// An external agent's request for a token, signed with its key:
/// Ed25519 over `"twinguard/token-request/v1" 0x00 agent 0x00 created_ms 0x00 nonce`
/// (`created_ms` in decimal ASCII), hex encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub agent: String,
    pub created_ms: i64,
    pub nonce: String,
    pub signature: String,
}

/// The message a token request signs.
pub fn token_request_message(agent: &str, created_ms: i64, nonce: &str) -> Vec<u8> {
    let mut m = TOKEN_CONTEXT.to_vec();
    m.extend_from_slice(agent.as_bytes());
    m.push(0);
    m.extend_from_slice(created_ms.to_string().as_bytes());
    m.push(0);
    m.extend_from_slice(nonce.as_bytes());
    m
}

/// Signs a token request (for agents written in Rust, and tests).
pub fn sign_token_request(
    agent: &str,
    created_ms: i64,
    nonce: &str,
    key: &SigningKey,
) -> TokenRequest {
    let sig = key.sign(&token_request_message(agent, created_ms, nonce));
    TokenRequest {
        agent: agent.to_string(),
        created_ms,
        nonce: nonce.to_string(),
        signature: hex::encode(sig.to_bytes()),
    }
}

/// A proposal with its proof of possession. `body` is the proposal's JSON, exactly as
/// signed; the guard parses it only after the signature checks out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedProposal {
    pub body: String,
    pub token: String,
    /// Ed25519 over `CONTEXT || token || 0x00 || body`, hex encoded.
    pub signature: String,
}

/// A bearer token issued to one agent. Useless without that agent's key.
#[derive(Clone, Serialize)]
pub struct Token {
    pub value: String,
    pub agent: String,
    pub expires_ms: i64,
    pub scope: Option<Scope>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("agent", &self.agent)
            .field("expires_ms", &self.expires_ms)
            .field("scope", &self.scope)
            .finish()
    }
}

fn message(token: &str, body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + token.len() + 1 + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(token.as_bytes());
    m.push(0);
    m.extend_from_slice(body.as_bytes());
    m
}

/// Signs a proposal with the agent's key, bound to its current token.
pub fn sign_proposal(p: &Proposal, token: &str, key: &SigningKey) -> SignedProposal {
    let body = serde_json::to_string(p).unwrap_or_default();
    let sig = key.sign(&message(token, &body));
    SignedProposal {
        body,
        token: token.to_string(),
        signature: hex::encode(sig.to_bytes()),
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    #[error("proposal is malformed: {0}")]
    Malformed(String),
    #[error("agent {agent:?} is not registered")]
    UnknownAgent { agent: String },
    #[error("agent {agent} is revoked")]
    Revoked { agent: String },
    #[error("token presented for agent {agent} is unknown, expired or issued to another agent")]
    BadToken { agent: String },
    #[error("valid token of agent {agent} presented without a valid signature by its key")]
    TokenWithoutKey { agent: String },
    #[error("proposal of agent {agent} is {age_ms} ms from the guard's clock, limit {limit_ms}")]
    Stale {
        agent: String,
        age_ms: i64,
        limit_ms: i64,
    },
    #[error("nonce {nonce:?} of agent {agent} was already used")]
    Replay { agent: String, nonce: String },
    #[error("agent {agent} already holds {MAX_LIVE_TOKENS} live tokens; let one expire first")]
    TooManyTokens { agent: String },
}

impl IdentityError {
    pub fn agent(&self) -> &str {
        match self {
            IdentityError::Malformed(_) => "<unknown>",
            IdentityError::UnknownAgent { agent }
            | IdentityError::Revoked { agent }
            | IdentityError::BadToken { agent }
            | IdentityError::TokenWithoutKey { agent }
            | IdentityError::Stale { agent, .. }
            | IdentityError::Replay { agent, .. }
            | IdentityError::TooManyTokens { agent } => agent,
        }
    }
}

#[derive(Debug, Clone)]
struct AgentEntry {
    key: VerifyingKey,
    revoked: bool,
    scope: Option<Scope>,
}

/// Nonces seen from one agent, with the time each was seen (oldest first).
type NonceCache = (HashSet<String>, VecDeque<(i64, String)>);

/// Registered agents, their live tokens and their recent nonces.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: HashMap<String, AgentEntry>,
    /// sha256(token) -> (agent, expiry)
    tokens: HashMap<[u8; 32], (String, i64)>,
    /// Nonces seen per agent, of proposals and (prefixed `token:`) of token requests.
    nonces: HashMap<String, NonceCache>,
    pub token_ttl_ms: i64,
    pub max_skew_ms: i64,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        AgentRegistry {
            agents: HashMap::new(),
            tokens: HashMap::new(),
            nonces: HashMap::new(),
            token_ttl_ms: 15 * 60 * 1000,
            max_skew_ms: 5 * 60 * 1000,
        }
    }
}

/// Whether `signature_hex` is a valid Ed25519 signature of `message` by `key`.
fn signed_by(key: &VerifyingKey, message: &[u8], signature_hex: &str) -> bool {
    hex::decode(signature_hex)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .is_some_and(|b| {
            key.verify_strict(message, &Signature::from_bytes(&b))
                .is_ok()
        })
}

fn token_hash(t: &str) -> [u8; 32] {
    Sha256::digest(t.as_bytes()).into()
}

impl AgentRegistry {
    /// The agent's entry, if it is registered and not revoked.
    fn live_entry(&self, agent: &str) -> Result<&AgentEntry, IdentityError> {
        match self.agents.get(agent) {
            None => Err(IdentityError::UnknownAgent {
                agent: agent.to_string(),
            }),
            Some(e) if e.revoked => Err(IdentityError::Revoked {
                agent: agent.to_string(),
            }),
            Some(e) => Ok(e),
        }
    }

    /// Registers a built-in agent: its reach is the policy's to decide.
    pub fn register(&mut self, agent: &str, key: VerifyingKey) {
        self.agents.insert(
            agent.to_string(),
            AgentEntry {
                key,
                revoked: false,
                scope: None,
            },
        );
    }

    /// Registers (or updates) an external agent whose tokens carry `scope`. A changed key
    /// or scope drops the agent's live tokens; a revoked agent stays revoked.
    pub fn register_scoped(&mut self, agent: &str, key: VerifyingKey, scope: Scope, revoked: bool) {
        let changed = self
            .agents
            .get(agent)
            .is_none_or(|e| e.key != key || e.scope.as_ref() != Some(&scope));
        let was_revoked = self.agents.get(agent).is_some_and(|e| e.revoked);
        if changed || revoked {
            self.tokens.retain(|_, (a, _)| a != agent);
        }
        self.agents.insert(
            agent.to_string(),
            AgentEntry {
                key,
                revoked: revoked || was_revoked,
                scope: Some(scope),
            },
        );
    }

    /// The scope of an agent's tokens (`None`: unscoped, or not registered).
    pub fn scope(&self, agent: &str) -> Option<&Scope> {
        self.agents.get(agent).and_then(|e| e.scope.as_ref())
    }

    /// Revokes an agent and every token issued to it, at once.
    pub fn revoke(&mut self, agent: &str) -> bool {
        self.tokens.retain(|_, (a, _)| a != agent);
        match self.agents.get_mut(agent) {
            Some(e) => {
                e.revoked = true;
                true
            }
            None => false,
        }
    }

    pub fn agents(&self) -> impl Iterator<Item = (&String, bool)> {
        self.agents.iter().map(|(k, v)| (k, v.revoked))
    }

    /// Issues a fresh token to a registered, unrevoked agent. `random` is its value
    /// (at least 32 hex characters from a secure generator).
    pub fn issue_token(
        &mut self,
        agent: &str,
        random: String,
        now_ms: i64,
    ) -> Result<Token, IdentityError> {
        match self.agents.get(agent) {
            None => {
                return Err(IdentityError::UnknownAgent {
                    agent: agent.to_string(),
                });
            }
            Some(e) if e.revoked => {
                return Err(IdentityError::Revoked {
                    agent: agent.to_string(),
                });
            }
            Some(_) => {}
        }
        self.tokens.retain(|_, (_, exp)| *exp > now_ms);
        let expires_ms = now_ms + self.token_ttl_ms;
        self.tokens
            .insert(token_hash(&random), (agent.to_string(), expires_ms));
        Ok(Token {
            value: random,
            agent: agent.to_string(),
            expires_ms,
            scope: self.scope(agent).cloned(),
        })
    }

    /// Issues a token for a signed token request: the agent is registered and not revoked,
    /// the signature is by its key, the request is fresh and its nonce unused. A new token
    /// may be requested while the old one is live (rotation without a gap).
    pub fn issue_for_request(
        &mut self,
        req: &TokenRequest,
        random: String,
        now_ms: i64,
    ) -> Result<Token, IdentityError> {
        let agent = req.agent.clone();
        let entry = self.live_entry(&agent)?;
        let message = token_request_message(&req.agent, req.created_ms, &req.nonce);
        if !signed_by(&entry.key, &message, &req.signature) {
            return Err(IdentityError::TokenWithoutKey { agent });
        }
        self.check_fresh_and_new(
            &agent,
            req.created_ms,
            &format!("token:{}", req.nonce),
            now_ms,
        )?;
        let live = self
            .tokens
            .values()
            .filter(|(a, exp)| *a == agent && *exp > now_ms)
            .count();
        if live >= MAX_LIVE_TOKENS {
            return Err(IdentityError::TooManyTokens { agent });
        }
        self.issue_token(&agent, random, now_ms)
    }

    /// Refuses a request older or newer than the allowed skew, or whose nonce was seen.
    fn check_fresh_and_new(
        &mut self,
        agent: &str,
        created_ms: i64,
        nonce: &str,
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        let age = now_ms - created_ms;
        if age.abs() > self.max_skew_ms {
            return Err(IdentityError::Stale {
                agent: agent.to_string(),
                age_ms: age,
                limit_ms: self.max_skew_ms,
            });
        }
        let window = self.max_skew_ms * 2;
        let (seen, order) = self.nonces.entry(agent.to_string()).or_default();
        while order.front().is_some_and(|(t, _)| now_ms - t > window) {
            if let Some((_, n)) = order.pop_front() {
                seen.remove(&n);
            }
        }
        if nonce.is_empty() || nonce.len() > 134 || !seen.insert(nonce.to_string()) {
            return Err(IdentityError::Replay {
                agent: agent.to_string(),
                nonce: nonce.to_string(),
            });
        }
        order.push_back((now_ms, nonce.to_string()));
        Ok(())
    }

    /// Checks a signed proposal and returns the proposal it carries.
    pub fn authenticate(
        &mut self,
        sp: &SignedProposal,
        now_ms: i64,
    ) -> Result<Proposal, IdentityError> {
        if sp.body.len() > MAX_PROPOSAL_BYTES {
            return Err(IdentityError::Malformed(format!(
                "body is {} bytes, limit {MAX_PROPOSAL_BYTES}",
                sp.body.len()
            )));
        }
        let p: Proposal =
            serde_json::from_str(&sp.body).map_err(|e| IdentityError::Malformed(e.to_string()))?;
        let agent = p.agent.clone();
        let entry = self.live_entry(&agent)?;
        match self.tokens.get(&token_hash(&sp.token)) {
            Some((a, exp)) if *a == agent && *exp > now_ms => {}
            _ => return Err(IdentityError::BadToken { agent }),
        }
        let sig_ok = signed_by(&entry.key, &message(&sp.token, &sp.body), &sp.signature);
        if !sig_ok {
            return Err(IdentityError::TokenWithoutKey { agent });
        }
        if p.nonce.len() > 128 {
            return Err(IdentityError::Replay {
                agent,
                nonce: p.nonce.clone(),
            });
        }
        self.check_fresh_and_new(&agent, p.created_ms, &p.nonce, now_ms)?;
        Ok(p)
    }
}
