//! Configuration, plant file and policy parsers never panic and always locate errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = twinguard_config::Config::parse(text) {
            assert!(!errors.is_empty());
        }
        let _ = plant_model::Plant::parse(text, "fuzz");
        let _ = guard::Policy::parse(text, "fuzz", &["tank", "pump"]);
    }
});
