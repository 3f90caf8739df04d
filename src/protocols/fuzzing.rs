//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the corpus replay test
//! (`tests/fuzz_corpus.rs`): decode arbitrary bytes, then check every invariant a decoder
//! promises. A panic here is a finding. Not used by the daemon.

use super::decoded::{Decoded, PortIdentity};
use super::{Protocol, hl7};
use crate::model::{Reading, valid_serial};

const NOW: i64 = 1_764_000_000_000_000_000;

fn check(readings: &[Reading]) {
    for r in readings {
        assert!(valid_serial(&r.serial), "invalid serial {:?}", r.serial);
        assert!(!r.fields.is_empty(), "reading without fields");
        for (spec, v) in &r.fields {
            assert!(spec.accepts(*v), "{} = {v:?} is mistyped or out of range", spec.name);
        }
        for w in r.fields.windows(2) {
            assert!(w[0].0.name < w[1].0.name, "fields not sorted and unique");
        }
    }
}

/// Feeds `data` to a fresh decoder of `protocol` whole, and again cut in two at a point the
/// first byte chooses: both must yield the same readings.
fn stream(protocol: Protocol, data: &[u8]) {
    let id = PortIdentity { serial: Some("FUZZ-1".into()), signal_type: None };
    let whole = protocol.decoder(id.clone()).feed(data, NOW);
    check(&whole.readings);
    let cut = data.first().map_or(0, |b| usize::from(*b) * data.len() / 256);
    let mut d = protocol.decoder(id);
    let Decoded { mut readings, .. } = d.feed(&data[..cut], NOW);
    readings.extend(d.feed(&data[cut..], NOW).readings);
    check(&readings);
    assert_eq!(readings, whole.readings, "a split changed the readings");
}

pub fn nonin(data: &[u8]) {
    for p in [Protocol::NoninDf8, Protocol::NoninDf7, Protocol::NoninDf2] {
        stream(p, data);
    }
}

pub fn masimo(data: &[u8]) {
    stream(Protocol::MasimoAscii1, data);
}

pub fn datex(data: &[u8]) {
    stream(Protocol::DatexS5, data);
}

/// The gateway clock of the decoders under fuzzing: [`NOW`], a 2 min tolerance.
const FUZZ_NOW: crate::decode::Now = crate::decode::Now { ns: NOW, future_tolerance_ns: 120_000_000_000 };

pub fn hl7(data: &[u8]) {
    // The machine's zone takes the daylight-saving paths wherever it has them.
    check(&hl7::decode::decode_message(data, FUZZ_NOW, hl7::time::Zone::Local).decoded.readings);
    let m = hl7::decode::decode_message(data, FUZZ_NOW, hl7::time::Zone::utc());
    check(&m.decoded.readings);
    let ack = hl7::ack::build_ack(m.header.as_ref(), m.ack, m.reason, "A1", "20240517103016+0000");
    assert!(hl7::ack::parse_ack(&ack[1..ack.len() - 2]).is_some(), "unreadable ACK");
    let mut f = super::framer::Framer::new(4096);
    f.push(data);
    while f.next(hl7::mllp::scan_mllp).is_some() {}
}

pub fn json(data: &[u8]) {
    let d = crate::decode::json::decode(data, Some("FUZZ-1"), FUZZ_NOW, 64 * 1024);
    for r in &d.readings {
        for (spec, v) in &r.fields {
            assert_eq!(
                std::mem::discriminant(&spec.kind),
                std::mem::discriminant(&match v {
                    crate::fields::FieldValue::Int(_) => crate::fields::FieldKind::Int,
                    crate::fields::FieldValue::Float(_) => crate::fields::FieldKind::Float,
                    crate::fields::FieldValue::Bool(_) => crate::fields::FieldKind::Bool,
                }),
                "{} mistyped",
                spec.name
            );
        }
    }
}

/// A fuzz target's checks.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the directories of `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("decode_nonin", nonin),
    ("decode_masimo", masimo),
    ("decode_datex", datex),
    ("decode_hl7", hl7),
    ("decode_json", json),
    ("mqtt_wire", crate::ingest::mqtt::wire::fuzz),
    ("queue_segment", crate::queue::segment::fuzz),
];
