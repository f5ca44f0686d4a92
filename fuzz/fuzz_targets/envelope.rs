//! Envelope decoding and body parsing never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = frames::Envelope::decode(data) {
        let _ = frames::TelemetryBody::parse(env.body);
        let _ = frames::TelemetryView::read(&env);
        let _ = frames::TelemetryView::parse_binary(env.body);
        let _ = frames::CommandBody::parse(env.body);
        let _ = env.ed25519_signature();
        let _ = env.verify_hmac("t", &[0u8; 32]);
    }
});
