//! Sparkplug B: any bytes on any message type, through the host's state machine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut host = sparkplug::Host::new("g");
    // The first byte picks the topic, so that births, data and deaths are all reached.
    let (kind, rest) = data.split_first().map_or((0, data), |(k, r)| (*k, r));
    let topics = [
        "spBv1.0/g/NBIRTH/n",
        "spBv1.0/g/NDATA/n",
        "spBv1.0/g/NDEATH/n",
        "spBv1.0/g/DBIRTH/n/d",
        "spBv1.0/g/DDATA/n/d",
        "spBv1.0/g/DDEATH/n/d",
    ];
    // A valid birth first, then the fuzzed message.
    let mut edge = sparkplug::EdgeNode::new("g", "n");
    for (t, b) in edge.births(0, &[("d".into(), vec![("m".into(), Some(1.0))])]) {
        let _ = host.handle(&t, &b);
    }
    let topic = topics[usize::from(kind) % topics.len()];
    let _ = host.handle(topic, rest);
    let _ = sparkplug::decode(rest);
});
