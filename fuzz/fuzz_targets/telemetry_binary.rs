//! The binary telemetry body (envelope version 2) never panics, whatever the bytes, and
//! whatever it reads is written back and read again to the same samples.
#![no_main]

use frames::{BodyEncoding, TelemetryBody, TelemetryView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(view) = TelemetryView::parse_binary(data) else {
        return;
    };
    let body = TelemetryBody::from(view);
    let bytes = body
        .to_bytes(BodyEncoding::Binary)
        .expect("a body that was read can be written");
    let again = TelemetryBody::from(TelemetryView::parse_binary(&bytes).expect("written body reads"));
    assert_eq!((again.seq, again.ts_ms), (body.seq, body.ts_ms));
    assert_eq!(again.samples.len(), body.samples.len());
    for (a, b) in again.samples.iter().zip(&body.samples) {
        assert_eq!(
            (&a.signal, a.t_ms, a.value.to_bits(), &a.unit),
            (&b.signal, b.t_ms, b.value.to_bits(), &b.unit)
        );
    }
});
