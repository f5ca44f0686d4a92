//! The seal stage: verifies frames' signatures ahead of the verifier, on a task of its own.
//!
//! A 100-sample frame costs about 50 µs to check, and most of that is its Ed25519
//! signature. With one task doing everything, that task sets the rate at which MQTT frames
//! are taken in. [`run`] moves the signature checks to a task ahead of the core's: it takes
//! the frames as they arrive, verifies their seals in batches against the device registry
//! and hands each batch on with its verdicts ([`SealedBatch`]). The core then checks
//! everything else (topic, body, replay window, freshness, samples) and takes a verdict on
//! trust only if it was reached under the registry the core holds at that moment: a key
//! rotated out or a device revoked between the two stages makes the core verify the frame
//! again under the new registry ([`crate::Verifier::check_sealed`]).
//!
//! The stage only verifies signatures. It decides nothing else, drops nothing, and keeps
//! the frames in the order they arrived; a frame it cannot judge (not an envelope, an
//! unknown device, unsigned) goes on unchecked, and the verifier gives the reason.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use frames::{Alg, Envelope, FrameError, Kind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::mqtt::RawFrame;
use crate::{Device, KeyMaterial, Registry, Verifier};

/// The seal verdict on one frame, valid under the registry it was reached with.
#[derive(Debug, Clone)]
pub(crate) enum Seal {
    /// Not verified ahead: the verifier verifies it itself.
    Unchecked,
    /// Verified by the device's key at this index in the registry.
    Verified(usize),
    /// Verified and refused, for this reason.
    Refused(FrameError),
}

impl Seal {
    /// The index of the key that verifies the envelope: the verdict, or a verification now.
    pub(crate) fn or_verify(
        self,
        env: &Envelope<'_>,
        topic: &str,
        device: &Device,
    ) -> Result<usize, FrameError> {
        match self {
            Seal::Verified(k) => Ok(k),
            Seal::Refused(e) => Err(e),
            Seal::Unchecked => Verifier::verify_seal(env, topic, device),
        }
    }
}

/// Frames in the order they arrived, each with its seal verdict and the registry the
/// verdicts were reached under. Only a [`SealStage`] makes one, and only
/// [`crate::Verifier::check_sealed`] reads the verdicts.
#[derive(Debug)]
pub struct SealedBatch {
    pub(crate) registry: Arc<Registry>,
    pub(crate) frames: Vec<RawFrame>,
    pub(crate) seals: Vec<Seal>,
}

impl SealedBatch {
    /// Verifies the seals of `frames` under `registry`.
    pub(crate) fn new(registry: Arc<Registry>, frames: Vec<RawFrame>) -> SealedBatch {
        let seals = seal_frames(
            &registry,
            frames
                .iter()
                .map(|f| (f.topic.as_str(), f.payload.as_slice())),
        );
        SealedBatch {
            registry,
            frames,
            seals,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frames, without their verdicts (for a path that does not use seals).
    pub fn into_frames(self) -> Vec<RawFrame> {
        self.frames
    }
}

/// Verifies seals against the registry its verifier holds ([`Verifier::seal_stage`]).
#[derive(Debug, Clone)]
pub struct SealStage {
    registry: watch::Receiver<Arc<Registry>>,
}

impl SealStage {
    pub(crate) fn new(registry: watch::Receiver<Arc<Registry>>) -> SealStage {
        SealStage { registry }
    }

    /// Verifies the seals of `frames` under the verifier's current registry.
    pub fn seal(&self, frames: Vec<RawFrame>) -> SealedBatch {
        let registry = self.registry.borrow().clone();
        SealedBatch::new(registry, frames)
    }
}

/// Runs a seal stage between `input` (the MQTT subscriber's frames) and `output` (the
/// core), taking up to `max_batch` frames that are waiting at once. When `finish` fires (or
/// is dropped), `input` is closed to new frames and what it already holds is sealed and
/// handed on; the stage ends when `input` is empty and closed, or `output` is gone.
pub async fn run(
    stage: SealStage,
    mut input: mpsc::Receiver<RawFrame>,
    output: mpsc::Sender<SealedBatch>,
    mut finish: oneshot::Receiver<()>,
    max_batch: usize,
) {
    let mut finishing = false;
    loop {
        let first = if finishing {
            input.recv().await
        } else {
            tokio::select! {
                biased;
                _ = &mut finish => {
                    finishing = true;
                    input.close();
                    continue;
                }
                f = input.recv() => f,
            }
        };
        let Some(first) = first else { break };
        // Wait for room ahead of the core before taking the rest: while the core is behind,
        // frames gather in `input` and the next batch is verified in one go, which costs
        // less per signature than a few at a time.
        let Ok(permit) = output.reserve().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch.max(1) {
            match input.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        permit.send(stage.seal(batch));
    }
}

/// A frame whose Ed25519 signature goes into the batch: where its verdict goes, the key
/// the batch tries, and what a one-by-one verification needs if the batch fails.
struct Candidate<'a, 'r> {
    frame: usize,
    key: usize,
    topic: &'a str,
    env: Envelope<'a>,
    device: &'r Device,
    message: Vec<u8>,
    signature: ed25519_dalek::Signature,
    verifying: VerifyingKey,
}

/// The seal verdicts on `frames` (topic, bytes) under `registry`. Ed25519 signatures made
/// with each device's newest Ed25519 key are verified in one batch; if the batch fails (a
/// bad signature, or a frame sealed with an older key during a rotation), each of those
/// frames is verified on its own, so the verdicts never differ from one-by-one
/// verification. HMAC seals are verified one by one.
pub(crate) fn seal_frames<'a>(
    registry: &Registry,
    frames: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> Vec<Seal> {
    let mut seals = Vec::new();
    let mut candidates = Vec::new();
    for (i, (topic, bytes)) in frames.enumerate() {
        seals.push(Seal::Unchecked);
        let Ok(env) = Envelope::decode(bytes) else {
            continue;
        };
        if env.kind != Kind::Telemetry || env.alg == Alg::None {
            continue;
        }
        let Some(device) = registry.device(env.signer) else {
            continue;
        };
        // The device's newest Ed25519 key is the one its frames normally carry.
        let newest = (env.alg == Alg::Ed25519)
            .then(|| {
                device
                    .keys
                    .iter()
                    .enumerate()
                    .rev()
                    .find_map(|(k, dk)| match &dk.material {
                        KeyMaterial::Ed25519(v) => Some((k, *v)),
                        KeyMaterial::HmacSha256(_) => None,
                    })
            })
            .flatten();
        match (newest, env.ed25519_signature()) {
            (Some((key, verifying)), Ok(signature)) => candidates.push(Candidate {
                frame: i,
                key,
                topic,
                message: env.message(topic),
                env,
                device,
                signature,
                verifying,
            }),
            _ => {
                if let Some(slot) = seals.get_mut(i) {
                    *slot = verdict(Verifier::verify_seal(&env, topic, device));
                }
            }
        }
    }
    let batch_ok = candidates.len() >= 2 && {
        let messages: Vec<&[u8]> = candidates.iter().map(|c| c.message.as_slice()).collect();
        let signatures: Vec<_> = candidates.iter().map(|c| c.signature).collect();
        let keys: Vec<VerifyingKey> = candidates.iter().map(|c| c.verifying).collect();
        ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
    };
    for c in candidates {
        if let Some(slot) = seals.get_mut(c.frame) {
            *slot = if batch_ok {
                Seal::Verified(c.key)
            } else {
                verdict(Verifier::verify_seal(&c.env, c.topic, c.device))
            };
        }
    }
    seals
}

fn verdict(r: Result<usize, FrameError>) -> Seal {
    match r {
        Ok(k) => Seal::Verified(k),
        Err(e) => Seal::Refused(e),
    }
}
