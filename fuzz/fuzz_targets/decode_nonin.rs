//! Fuzz target: arbitrary bytes into the nonin decoder; every invariant is checked by
//! `heartguard_gateway::protocols::fuzzing::nonin` (shared with the corpus replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| heartguard_gateway::protocols::fuzzing::nonin(data));
