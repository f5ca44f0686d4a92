//! The signed envelope that carries telemetry from edge devices and commands to the plant.
//!
//! The byte layout is specified in `docs/frame-format.md`; this crate is its reference
//! implementation. It does no I/O besides key files ([`keys`]).
//!
//! - [`encode`] builds an envelope, signed with Ed25519 when given a key.
//! - [`Envelope::decode`] checks the structure and bounds of untrusted bytes without
//!   parsing the body; [`Envelope::verify`] checks the signature against a known key.
//! - [`TelemetryBody`] and [`CommandBody`] are the bodies, parsed only after the
//!   signature has been checked; [`TelemetryView`] reads a telemetry body in place (its
//!   strings borrowed from the frame), as ingest does.
//! - A telemetry body is JSON (envelope version 1) or the compact binary encoding
//!   (version 2, [`BodyEncoding::Binary`]); [`encode_telemetry`] writes either,
//!   [`encode_body`] seals body bytes already written, and [`TelemetryView::read`] reads
//!   whichever the envelope says. Commands are JSON only.

mod binary;
pub mod keys;

pub use binary::{MAX_TABLE, SAMPLE_BYTES};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use plant_model::PlantCommand;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Largest body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest whole envelope accepted, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = MAX_BODY_BYTES + 256;
/// Most samples in one telemetry frame.
pub const MAX_SAMPLES: usize = 2048;
/// Domain separator that starts every signed message.
pub const SIGNING_CONTEXT: &[u8] = b"twinguard/envelope/v1\0";

/// How a body is encoded; the envelope's version byte says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyEncoding {
    /// Version 1: a JSON body (telemetry and commands).
    Json = 1,
    /// Version 2: the binary telemetry body (telemetry only).
    Binary = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Samples from an edge device, magic `TGF1`.
    Telemetry,
    /// A command to the plant, magic `TGC1`.
    Command,
}

impl Kind {
    fn magic(self) -> &'static [u8; 4] {
        match self {
            Kind::Telemetry => b"TGF1",
            Kind::Command => b"TGC1",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alg {
    None = 0,
    Ed25519 = 1,
    /// HMAC-SHA256 with a per-device secret, for devices too small for Ed25519.
    HmacSha256 = 2,
}

impl Alg {
    /// Length of the trailer (signature or tag) in bytes.
    pub fn trailer_len(self) -> usize {
        match self {
            Alg::None => 0,
            Alg::Ed25519 => 64,
            Alg::HmacSha256 => 32,
        }
    }
}

/// How an envelope is sealed.
#[derive(Clone, Copy)]
pub enum Seal<'a> {
    None,
    Ed25519(&'a SigningKey),
    /// The device's shared secret (at least 32 bytes).
    HmacSha256(&'a [u8]),
}

impl Seal<'_> {
    fn alg(&self) -> Alg {
        match self {
            Seal::None => Alg::None,
            Seal::Ed25519(_) => Alg::Ed25519,
            Seal::HmacSha256(_) => Alg::HmacSha256,
        }
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn hmac_tag(secret: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(message);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0u8; 32],
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("envelope is {0} bytes, more than the limit of {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    #[error("envelope truncated: {0}")]
    Truncated(&'static str),
    #[error("bad magic {0:02x?}, expected TGF1 or TGC1")]
    BadMagic([u8; 4]),
    #[error(
        "unsupported envelope version {0}, expected 1 (JSON body) or 2 (binary telemetry body)"
    )]
    BadVersion(u8),
    #[error("commands use envelope version 1 (JSON body), this one has version {0}")]
    CommandVersion(u8),
    #[error("unknown signature algorithm {0}")]
    BadAlg(u8),
    #[error("signer id is not 1-64 characters of [A-Za-z0-9_.-]")]
    BadSigner,
    #[error("body is {0} bytes, more than the limit of {MAX_BODY_BYTES}")]
    BodyTooLarge(usize),
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    #[error("envelope is unsigned")]
    Unsigned,
    #[error("signature does not verify")]
    BadSignature,
    #[error("envelope is sealed with {found:?}, the key is for {expected:?}")]
    WrongAlg { found: Alg, expected: Alg },
    #[error("HMAC secrets must be at least 32 bytes")]
    WeakSecret,
    #[error("body is not valid: {0}")]
    BadBody(String),
}

/// A structurally valid envelope; its signature is not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub kind: Kind,
    /// How the body is encoded (the version byte).
    pub encoding: BodyEncoding,
    pub alg: Alg,
    pub signer: &'a str,
    pub body: &'a [u8],
    signed: &'a [u8],
    /// The signature (64 bytes) or HMAC tag (32 bytes); empty when unsigned.
    trailer: &'a [u8],
}

/// Builds an envelope. With a key it is signed (alg 1), without one it is unsigned (alg 0).
pub fn encode(
    kind: Kind,
    topic: &str,
    signer: &str,
    body: &[u8],
    key: Option<&SigningKey>,
) -> Result<Vec<u8>, FrameError> {
    let seal = match key {
        Some(k) => Seal::Ed25519(k),
        None => Seal::None,
    };
    encode_sealed(kind, topic, signer, body, seal)
}

/// Builds an envelope with a JSON body (version 1), sealed as `seal` says.
pub fn encode_sealed(
    kind: Kind,
    topic: &str,
    signer: &str,
    body: &[u8],
    seal: Seal<'_>,
) -> Result<Vec<u8>, FrameError> {
    encode_body(kind, BodyEncoding::Json, topic, signer, body, seal)
}

/// Builds a telemetry envelope whose body is `body` written in `encoding`, sealed as
/// `seal` says.
pub fn encode_telemetry(
    topic: &str,
    signer: &str,
    body: &TelemetryBody,
    encoding: BodyEncoding,
    seal: Seal<'_>,
) -> Result<Vec<u8>, FrameError> {
    let bytes = body.to_bytes(encoding)?;
    encode_body(Kind::Telemetry, encoding, topic, signer, &bytes, seal)
}

/// Builds an envelope around body bytes already written in `encoding` (its version
/// byte), sealed as `seal` says. The body is not parsed: a device that writes its own
/// bodies seals them with this. Commands must be JSON.
pub fn encode_body(
    kind: Kind,
    encoding: BodyEncoding,
    topic: &str,
    signer: &str,
    body: &[u8],
    seal: Seal<'_>,
) -> Result<Vec<u8>, FrameError> {
    if kind == Kind::Command && encoding != BodyEncoding::Json {
        return Err(FrameError::CommandVersion(encoding as u8));
    }
    if !signer_ok(signer) {
        return Err(FrameError::BadSigner);
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(FrameError::BodyTooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(11 + signer.len() + body.len() + 64);
    out.extend_from_slice(kind.magic());
    out.push(encoding as u8);
    out.push(seal.alg() as u8);
    out.push(signer.len() as u8);
    out.extend_from_slice(signer.as_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    match seal {
        Seal::None => {}
        Seal::Ed25519(key) => {
            let sig = key.sign(&signing_message(topic, &out));
            out.extend_from_slice(&sig.to_bytes());
        }
        Seal::HmacSha256(secret) => {
            if secret.len() < 32 {
                return Err(FrameError::WeakSecret);
            }
            let tag = hmac_tag(secret, &signing_message(topic, &out));
            out.extend_from_slice(&tag);
        }
    }
    Ok(out)
}

/// The exact bytes an Ed25519 signature covers.
pub fn signing_message(topic: &str, envelope_without_signature: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        SIGNING_CONTEXT.len() + topic.len() + 1 + envelope_without_signature.len(),
    );
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(topic.as_bytes());
    m.push(0);
    m.extend_from_slice(envelope_without_signature);
    m
}

fn signer_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn take<'a>(
    bytes: &'a [u8],
    at: usize,
    n: usize,
    what: &'static str,
) -> Result<&'a [u8], FrameError> {
    bytes
        .get(at..at.checked_add(n).ok_or(FrameError::Truncated(what))?)
        .ok_or(FrameError::Truncated(what))
}

impl<'a> Envelope<'a> {
    /// Checks layout and bounds. Never panics, whatever the bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Envelope<'a>, FrameError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(FrameError::TooLarge(bytes.len()));
        }
        let magic: [u8; 4] = take(bytes, 0, 4, "magic")?
            .try_into()
            .map_err(|_| FrameError::Truncated("magic"))?;
        let kind = match &magic {
            b"TGF1" => Kind::Telemetry,
            b"TGC1" => Kind::Command,
            _ => return Err(FrameError::BadMagic(magic)),
        };
        let head = take(bytes, 4, 3, "header")?;
        let (version, alg, signer_len) = match head {
            [v, a, s] => (*v, *a, *s as usize),
            _ => return Err(FrameError::Truncated("header")),
        };
        let encoding = match (version, kind) {
            (1, _) => BodyEncoding::Json,
            (2, Kind::Telemetry) => BodyEncoding::Binary,
            (2, Kind::Command) => return Err(FrameError::CommandVersion(version)),
            (other, _) => return Err(FrameError::BadVersion(other)),
        };
        let alg = match alg {
            0 => Alg::None,
            1 => Alg::Ed25519,
            2 => Alg::HmacSha256,
            other => return Err(FrameError::BadAlg(other)),
        };
        let signer = take(bytes, 7, signer_len, "signer id")?;
        let signer = std::str::from_utf8(signer).map_err(|_| FrameError::BadSigner)?;
        if !signer_ok(signer) {
            return Err(FrameError::BadSigner);
        }
        let at = 7 + signer_len;
        let len_bytes: [u8; 4] = take(bytes, at, 4, "body length")?
            .try_into()
            .map_err(|_| FrameError::Truncated("body length"))?;
        let body_len = u32::from_be_bytes(len_bytes) as usize;
        if body_len > MAX_BODY_BYTES {
            return Err(FrameError::BodyTooLarge(body_len));
        }
        let body = take(bytes, at + 4, body_len, "body")?;
        let signed_len = at + 4 + body_len;
        let trailer = take(bytes, signed_len, alg.trailer_len(), "signature")?;
        let total = signed_len + alg.trailer_len();
        if bytes.len() > total {
            return Err(FrameError::TrailingBytes(bytes.len() - total));
        }
        Ok(Envelope {
            kind,
            encoding,
            alg,
            signer,
            body,
            signed: take(bytes, 0, signed_len, "envelope")?,
            trailer,
        })
    }

    /// Checks the Ed25519 signature for the topic it arrived on. Unsigned envelopes fail.
    pub fn verify(&self, topic: &str, key: &VerifyingKey) -> Result<(), FrameError> {
        let sig = self.ed25519_signature()?;
        key.verify_strict(&signing_message(topic, self.signed), &sig)
            .map_err(|_| FrameError::BadSignature)
    }

    /// The Ed25519 signature, for batch verification.
    pub fn ed25519_signature(&self) -> Result<Signature, FrameError> {
        match self.alg {
            Alg::None => Err(FrameError::Unsigned),
            Alg::Ed25519 => {
                let bytes: [u8; 64] = self
                    .trailer
                    .try_into()
                    .map_err(|_| FrameError::Truncated("signature"))?;
                Ok(Signature::from_bytes(&bytes))
            }
            found => Err(FrameError::WrongAlg {
                found,
                expected: Alg::Ed25519,
            }),
        }
    }

    /// The exact message the signature or tag covers, for the topic it arrived on.
    pub fn message(&self, topic: &str) -> Vec<u8> {
        signing_message(topic, self.signed)
    }

    /// Checks the HMAC-SHA256 tag with the device's secret, in constant time.
    pub fn verify_hmac(&self, topic: &str, secret: &[u8]) -> Result<(), FrameError> {
        use hmac::Mac;
        match self.alg {
            Alg::None => return Err(FrameError::Unsigned),
            Alg::HmacSha256 => {}
            found => {
                return Err(FrameError::WrongAlg {
                    found,
                    expected: Alg::HmacSha256,
                });
            }
        }
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| FrameError::WeakSecret)?;
        mac.update(&signing_message(topic, self.signed));
        mac.verify_slice(self.trailer)
            .map_err(|_| FrameError::BadSignature)
    }

    pub fn is_signed(&self) -> bool {
        self.alg != Alg::None
    }
}

/// One value of one signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSample {
    pub signal: String,
    pub t_ms: i64,
    pub value: f64,
    pub unit: String,
}

/// The body of a telemetry frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryBody {
    pub seq: u64,
    pub ts_ms: i64,
    pub samples: Vec<WireSample>,
}

/// The body of a command envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    pub seq: u64,
    pub ts_ms: i64,
    pub command_id: String,
    pub asset: String,
    pub command: PlantCommand,
}

/// A telemetry body read in place: the same fields as [`TelemetryBody`], whose strings
/// borrow from the frame's bytes (they are copied only when they hold JSON escapes).
/// Ingest reads every frame this way; a hundred samples then allocate one vector instead
/// of two hundred strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryView<'a> {
    pub seq: u64,
    pub ts_ms: i64,
    #[serde(borrow)]
    pub samples: Vec<SampleView<'a>>,
}

/// One value of one signal, read in place (see [`TelemetryView`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleView<'a> {
    #[serde(borrow)]
    pub signal: Cow<'a, str>,
    pub t_ms: i64,
    pub value: f64,
    #[serde(borrow)]
    pub unit: Cow<'a, str>,
}

impl<'a> TelemetryView<'a> {
    /// Reads the body of a telemetry envelope in the encoding its version byte names.
    pub fn read(envelope: &Envelope<'a>) -> Result<TelemetryView<'a>, FrameError> {
        match envelope.encoding {
            BodyEncoding::Json => TelemetryView::parse(envelope.body),
            BodyEncoding::Binary => TelemetryView::parse_binary(envelope.body),
        }
    }

    /// Reads a binary body (envelope version 2); signal ids and units borrow from it.
    pub fn parse_binary(body: &'a [u8]) -> Result<TelemetryView<'a>, FrameError> {
        binary::parse(body)
    }

    /// Reads a JSON body (envelope version 1).
    pub fn parse(body: &'a [u8]) -> Result<TelemetryView<'a>, FrameError> {
        let b: TelemetryView<'a> =
            serde_json::from_slice(body).map_err(|e| FrameError::BadBody(e.to_string()))?;
        if b.samples.len() > MAX_SAMPLES {
            return Err(FrameError::BadBody(format!(
                "{} samples, more than the limit of {MAX_SAMPLES}",
                b.samples.len()
            )));
        }
        Ok(b)
    }
}

impl From<SampleView<'_>> for WireSample {
    fn from(s: SampleView<'_>) -> WireSample {
        WireSample {
            signal: s.signal.into_owned(),
            t_ms: s.t_ms,
            value: s.value,
            unit: s.unit.into_owned(),
        }
    }
}

impl From<TelemetryView<'_>> for TelemetryBody {
    fn from(v: TelemetryView<'_>) -> TelemetryBody {
        TelemetryBody {
            seq: v.seq,
            ts_ms: v.ts_ms,
            samples: v.samples.into_iter().map(WireSample::from).collect(),
        }
    }
}

impl TelemetryBody {
    /// Parses a JSON body with the same checks as [`TelemetryView::parse`], into owned
    /// strings.
    pub fn parse(body: &[u8]) -> Result<TelemetryBody, FrameError> {
        TelemetryView::parse(body).map(TelemetryBody::from)
    }

    /// Reads the body of a telemetry envelope in whichever encoding it has, into owned
    /// strings.
    pub fn read(envelope: &Envelope<'_>) -> Result<TelemetryBody, FrameError> {
        TelemetryView::read(envelope).map(TelemetryBody::from)
    }

    /// The body's bytes in `encoding`. JSON cannot fail; the binary encoding fails,
    /// naming the cause, for bodies it cannot hold (see `docs/frame-format.md`).
    pub fn to_bytes(&self, encoding: BodyEncoding) -> Result<Vec<u8>, FrameError> {
        match encoding {
            BodyEncoding::Json => Ok(to_body(self)),
            BodyEncoding::Binary => binary::write(self),
        }
    }
}

impl CommandBody {
    pub fn parse(body: &[u8]) -> Result<CommandBody, FrameError> {
        serde_json::from_slice(body).map_err(|e| FrameError::BadBody(e.to_string()))
    }
}

/// Serialises a body to JSON bytes.
pub fn to_body<T: Serialize>(body: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string keys).
    serde_json::to_vec(body).unwrap_or_default()
}
