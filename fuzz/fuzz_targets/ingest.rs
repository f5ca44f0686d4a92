//! The whole ingest check on arbitrary frames (including unsigned ones on a source that
//! allows them, so that bodies are parsed and samples checked) never panics.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;

struct State {
    verifier: ingest::Verifier,
    source: Arc<ingest::SourceInfo>,
    topic: String,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| {
        let plant = Arc::new(plant_model::Plant::reference());
        let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
        let verifier = ingest::Verifier::new(
            plant.clone(),
            vec![ingest::Device::ed25519("gw-tank", "tank", key.verifying_key())],
            ingest::IngestConfig::default(),
        );
        let mut source = ingest::SourceInfo::mqtt_plain("fuzz");
        source.allow_unsigned = true;
        Mutex::new(State {
            verifier,
            source: Arc::new(source),
            topic: plant.telemetry_topic("tank"),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut guard = state().lock().unwrap_or_else(|p| p.into_inner());
    let State { verifier, source, topic } = &mut *guard;
    let _ = verifier.check(source, topic, data, 1_767_225_600_000);
    let frames = [(topic.clone(), data.to_vec()), (topic.clone(), data.to_vec())];
    let _ = verifier.check_batch(source, &frames, 1_767_225_600_000);
});
