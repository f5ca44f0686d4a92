//! Configuration, plant file and policy parsers never panic and always locate errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The plant whose assets policies name (parsed once).
fn plant() -> &'static plant_model::Plant {
    static PLANT: std::sync::OnceLock<plant_model::Plant> = std::sync::OnceLock::new();
    PLANT.get_or_init(plant_model::Plant::reference)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = twinguard_config::Config::parse(text) {
            assert!(!errors.is_empty());
        }
        let _ = plant_model::Plant::parse(text, "fuzz");
        let _ = guard::Policy::parse(text, "fuzz", plant());
    }
});
