//! People: accounts with a role, authenticated by a password (Argon2id hash, salted) or an
//! API token (stored as its SHA-256), and the sessions a password login opens.
//!
//! Roles are ordered: a viewer reads; an operator also presses the stop button; an
//! approver also approves and rejects proposals and resumes the line; an admin may do
//! everything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a password login's session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Failed logins of one account before it is locked for [`LOCKOUT`].
pub const MAX_FAILURES: u32 = 5;
pub const LOCKOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Approver,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// Every role someone with this role holds: each role includes the ones below it, so
    /// an approver holds "viewer", "operator" and "approver" (what Cedar policies see as
    /// `principal.roles`).
    pub fn held(self) -> Vec<&'static str> {
        [Role::Viewer, Role::Operator, Role::Approver, Role::Admin]
            .into_iter()
            .filter(|r| *r <= self)
            .map(Role::as_str)
            .collect()
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// One person's account, as stored (`users.toml` in the data directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub role: Role,
    /// PHC string of an Argon2id hash of the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// SHA-256 (hex) of the account's API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// Argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// A person the API has authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub role: Role,
}

/// The accounts, the open sessions, and recent login failures.
#[derive(Debug, Default)]
pub struct Accounts {
    accounts: HashMap<String, Account>,
    /// sha256(session token) -> (account, expiry)
    sessions: HashMap<[u8; 32], (String, Instant)>,
    failures: HashMap<String, (u32, Instant)>,
}

impl Accounts {
    pub fn new(accounts: HashMap<String, Account>) -> Accounts {
        Accounts {
            accounts,
            ..Default::default()
        }
    }

    /// Replaces the accounts (the file changed); sessions of removed accounts, or of
    /// accounts whose role changed, end.
    pub fn replace(&mut self, accounts: HashMap<String, Account>) {
        let old = std::mem::replace(&mut self.accounts, accounts);
        self.sessions.retain(|_, (name, _)| {
            old.get(name).map(|a| a.role) == self.accounts.get(name).map(|a| a.role)
                && self.accounts.contains_key(name)
        });
    }

    /// Who presents `bearer` (an API token or a session token), if anyone.
    pub fn by_token(&mut self, bearer: &str) -> Option<Person> {
        use subtle::ConstantTimeEq;
        let hash: [u8; 32] = Sha256::digest(bearer.trim().as_bytes()).into();
        let now = Instant::now();
        self.sessions.retain(|_, (_, exp)| *exp > now);
        if let Some((name, _)) = self.sessions.get(&hash) {
            let a = self.accounts.get(name)?;
            return Some(Person {
                name: name.clone(),
                role: a.role,
            });
        }
        let hex_hash = hex::encode(hash);
        self.accounts.iter().find_map(|(name, a)| {
            let t = a.token_sha256.as_ref()?;
            bool::from(t.as_bytes().ct_eq(hex_hash.as_bytes())).then(|| Person {
                name: name.clone(),
                role: a.role,
            })
        })
    }

    /// The password hash to check for `name` now, or why a login may not be tried.
    pub fn login_target(&self, name: &str) -> Result<String, String> {
        if let Some((n, since)) = self.failures.get(name)
            && *n >= MAX_FAILURES
            && since.elapsed() < LOCKOUT
        {
            return Err(format!(
                "too many failed logins for {name}; try again in {} s",
                (LOCKOUT - since.elapsed()).as_secs() + 1
            ));
        }
        // An unknown account and a wrong password get the same answer.
        Ok(self
            .accounts
            .get(name)
            .and_then(|a| a.password_hash.clone())
            .unwrap_or_default())
    }

    /// Records a login attempt's outcome; on success opens a session and returns its token.
    pub fn login_result(&mut self, name: &str, ok: bool, session: String) -> Option<Person> {
        if !ok {
            let e = self
                .failures
                .entry(name.to_string())
                .or_insert((0, Instant::now()));
            if e.1.elapsed() >= LOCKOUT {
                *e = (0, Instant::now());
            }
            e.0 += 1;
            e.1 = Instant::now();
            return None;
        }
        self.failures.remove(name);
        let role = self.accounts.get(name)?.role;
        let hash: [u8; 32] = Sha256::digest(session.as_bytes()).into();
        self.sessions
            .insert(hash, (name.to_string(), Instant::now() + SESSION_TTL));
        Some(Person {
            name: name.to_string(),
            role,
        })
    }
}

/// Checks `password` against a PHC hash (slow by design: call off the async threads). An
/// empty hash never matches, but costs the same time as a real check.
pub fn check_password(phc: &str, password: &str) -> bool {
    if phc.is_empty() {
        // Burn the same time as a real check, so unknown accounts cannot be told apart.
        let _ = hash_password(password);
        return false;
    }
    verify_password(phc, password)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn passwords_tokens_sessions_and_lockout() {
        let phc = hash_password("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert_ne!(phc, hash_password("correct horse").unwrap(), "salted");
        assert!(check_password(&phc, "correct horse"));
        assert!(!check_password(&phc, "wrong"));
        assert!(!check_password("", "anything"));

        let mut accounts = Accounts::new(HashMap::from([
            (
                "ana".to_string(),
                Account {
                    role: Role::Approver,
                    password_hash: Some(phc),
                    token_sha256: None,
                },
            ),
            (
                "vi".to_string(),
                Account {
                    role: Role::Viewer,
                    password_hash: None,
                    token_sha256: Some(token_sha256("vi-token")),
                },
            ),
        ]));
        assert_eq!(accounts.by_token("vi-token").unwrap().role, Role::Viewer);
        assert!(accounts.by_token("nope").is_none());
        let who = accounts
            .login_result("ana", true, "session-1".into())
            .unwrap();
        assert_eq!(who.role, Role::Approver);
        assert_eq!(accounts.by_token("session-1").unwrap().name, "ana");
        for _ in 0..MAX_FAILURES {
            accounts.login_result("ana", false, String::new());
        }
        assert!(
            accounts
                .login_target("ana")
                .unwrap_err()
                .contains("too many")
        );
        // Removing the account ends its session.
        accounts.replace(HashMap::new());
        assert!(accounts.by_token("session-1").is_none());
        assert!(Role::Approver > Role::Operator && Role::Operator > Role::Viewer);
    }
}
