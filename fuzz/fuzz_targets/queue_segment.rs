//! Fuzz target: arbitrary bytes as a stored queue segment (a damaged database file); the
//! decoder must return an error, never panic, and what it reads must encode back the same
//! (`heartguard_gateway::queue::segment::fuzz`, shared with the corpus replay test).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| heartguard_gateway::queue::segment::fuzz(data));
