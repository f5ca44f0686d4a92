//! What an auditor is handed: checkpoint notes, proof files and log exports. None of them
//! makes the verifier panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = audit::Checkpoint::open(text, &key);
    }
    if let Ok(proof) = serde_json::from_slice::<audit::Proof>(data) {
        let _ = audit::check_proof(&proof, &key);
    }
    let _ = audit::export::verify(data, "fuzz.jsonl", &key, &[]);
});
