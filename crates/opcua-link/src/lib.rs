//! OPC UA for twinguard, on async-opcua (pure-Rust crypto, no OpenSSL).
//!
//! - [`client`]: the source (subscriptions to configured nodes, reconnects that report
//!   gaps) and the actuation path (Write, Call).
//! - [`pki`]: the certificate trust list behind `twinguard pki list|trust|reject`.
//! - [`server`]: the reference plant served over OPC UA, for `demo --transport opcua`.
//!
//! Only Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss are offered;
//! security mode None only where a source explicitly allows it.

pub mod client;
pub mod pki;
pub mod server;

pub use client::{
    Connection, Mode, NodeRef, Policy, SourceConfig, Subscribe, UaError, UaEvent, UaValue,
    UserIdentity,
};
