//! Agent proposals from the HTTP API: authentication never panics on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sp) = serde_json_from(data) else { return };
    let mut reg = guard::AgentRegistry::default();
    reg.register("optimiser", ed25519_dalek::SigningKey::from_bytes(&[2u8; 32]).verifying_key());
    let _ = reg.issue_token("optimiser", "t".repeat(64), 0);
    let _ = reg.authenticate(&sp, 0);
});

fn serde_json_from(data: &[u8]) -> Result<guard::SignedProposal, ()> {
    let text = std::str::from_utf8(data).map_err(|_| ())?;
    // Split the input into the three fields so the fuzzer reaches the body parser.
    let mut parts = text.splitn(3, '\u{1}');
    Ok(guard::SignedProposal {
        body: parts.next().unwrap_or("").to_string(),
        token: parts.next().unwrap_or("").to_string(),
        signature: parts.next().unwrap_or("").to_string(),
    })
}
