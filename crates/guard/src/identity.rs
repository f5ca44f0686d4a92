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
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<redacted>")
            .field("agent", &self.agent)
            .field("expires_ms", &self.expires_ms)
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
            | IdentityError::Replay { agent, .. } => agent,
        }
    }
}

#[derive(Debug, Clone)]
struct AgentEntry {
    key: VerifyingKey,
    revoked: bool,
}

/// Nonces seen from one agent, with the time each was seen (oldest first).
type NonceCache = (HashSet<String>, VecDeque<(i64, String)>);

/// Registered agents, their live tokens and their recent nonces.
#[derive(Debug, Clone)]
pub struct AgentRegistry {
    agents: HashMap<String, AgentEntry>,
    /// sha256(token) -> (agent, expiry)
    tokens: HashMap<[u8; 32], (String, i64)>,
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

fn token_hash(t: &str) -> [u8; 32] {
    Sha256::digest(t.as_bytes()).into()
}

impl AgentRegistry {
    pub fn register(&mut self, agent: &str, key: VerifyingKey) {
        self.agents.insert(
            agent.to_string(),
            AgentEntry {
                key,
                revoked: false,
            },
        );
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
        })
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
        let entry = self
            .agents
            .get(&agent)
            .ok_or_else(|| IdentityError::UnknownAgent {
                agent: agent.clone(),
            })?;
        if entry.revoked {
            return Err(IdentityError::Revoked { agent });
        }
        match self.tokens.get(&token_hash(&sp.token)) {
            Some((a, exp)) if *a == agent && *exp > now_ms => {}
            _ => return Err(IdentityError::BadToken { agent }),
        }
        let sig_ok = hex::decode(&sp.signature)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .is_some_and(|b| {
                entry
                    .key
                    .verify_strict(&message(&sp.token, &sp.body), &Signature::from_bytes(&b))
                    .is_ok()
            });
        if !sig_ok {
            return Err(IdentityError::TokenWithoutKey { agent });
        }
        let age = now_ms - p.created_ms;
        if age.abs() > self.max_skew_ms {
            return Err(IdentityError::Stale {
                agent,
                age_ms: age,
                limit_ms: self.max_skew_ms,
            });
        }
        let window = self.max_skew_ms * 2;
        let (seen, order) = self.nonces.entry(agent.clone()).or_default();
        while order.front().is_some_and(|(t, _)| now_ms - t > window) {
            if let Some((_, n)) = order.pop_front() {
                seen.remove(&n);
            }
        }
        if p.nonce.is_empty() || p.nonce.len() > 128 || !seen.insert(p.nonce.clone()) {
            return Err(IdentityError::Replay {
                agent,
                nonce: p.nonce.clone(),
            });
        }
        order.push_back((now_ms, p.nonce.clone()));
        Ok(p)
    }
}
