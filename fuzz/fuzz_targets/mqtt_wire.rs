//! Fuzz target: arbitrary bytes from a "broker" into the MQTT packet parser; every invariant
//! is checked by `heartguard_gateway::ingest::mqtt::wire::fuzz` (shared with the corpus replay
//! test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| heartguard_gateway::ingest::mqtt::wire::fuzz(data));
