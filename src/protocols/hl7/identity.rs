//! Which device each observation of a message belongs to: the one its own OBX-18 names, else
//! the one the nearest row above it in the OBX-4 containment tree names, else the message's
//! (module docs of [`super`], "Identity").

use std::collections::{BTreeSet, HashMap};

use super::message::{Delims, part, unescape};

/// Which device each observation of a message belongs to (module docs, "Identity").
pub(super) struct Devices {
    /// OBX-4 of the rows whose OBX-18 names a device (`2.0.0.0` for an MDS), and that device;
    /// `None` where rows of the same place name different devices.
    rows: HashMap<String, Option<String>>,
    /// The device of the whole message: the only one its OBX-18s name, else MSH-3's; `None`
    /// when its OBX-18s name several.
    pub(super) message: Option<String>,
    /// How many devices the OBX-18s name.
    pub(super) named: usize,
}

impl Devices {
    /// The devices the OBX-18s of a message name, by OBX-4, and the message's own device.
    pub(super) fn of(obx: &[Vec<&str>], msh3: &str, d: Delims) -> Self {
        let mut rows: HashMap<String, Option<String>> = HashMap::new();
        let mut named: BTreeSet<String> = BTreeSet::new();
        for f in obx {
            let Some(serial) = obx18_serial(f, d) else { continue };
            let place = f.get(4).copied().unwrap_or("").trim();
            if !place.is_empty() {
                let row = rows.entry(place.to_owned()).or_insert_with(|| Some(serial.clone()));
                if row.as_ref().is_some_and(|s| *s != serial) {
                    *row = None;
                }
            }
            named.insert(serial);
        }
        let ok = |s: &str| {
            let s = unescape(s.trim(), d);
            crate::model::valid_serial(&s).then_some(s)
        };
        let count = named.len();
        let message = match count {
            0 => (part(msh3, d.component, 2) == "EUI-64")
                .then(|| ok(part(msh3, d.component, 1)))
                .flatten()
                .or_else(|| ok(part(msh3, d.component, 0))),
            1 => named.pop_first(),
            _ => None,
        };
        Self { rows, message, named: count }
    }

    /// The device of one OBX: its own OBX-18, else the nearest row above it in the containment
    /// tree of OBX-4 (channel `2.1.1.0`, VMD `2.1.0.0`, MDS `2.0.0.0`) that names one, else
    /// the message's. `None`: the observation cannot be tied to one device.
    pub(super) fn of_obx(&self, f: &[&str], d: Delims) -> Option<String> {
        if let Some(own) = obx18_serial(f, d) {
            return Some(own);
        }
        let place: Vec<&str> = f.get(4).copied().unwrap_or("").trim().split('.').collect();
        // PCD containment has four levels; a deeper OBX-4 is no tree to walk (and walking
        // one of thousands of levels would cost their square).
        let depths = if place.len() <= MAX_CONTAINMENT_LEVELS { 1..place.len() } else { 0..0 };
        for depth in depths.rev() {
            let mut above = place[..depth].to_vec();
            above.resize(place.len(), "0");
            if let Some(row) = self.rows.get(&above.join(".")) {
                return row.clone();
            }
        }
        self.message.clone()
    }
}

/// Most OBX-4 levels looked up in the containment tree (MDS.VMD.CHAN.METRIC, and some room).
const MAX_CONTAINMENT_LEVELS: usize = 8;

/// The device an OBX names in OBX-18 (equipment instance identifier), if a valid serial.
fn obx18_serial(f: &[&str], d: Delims) -> Option<String> {
    let s = unescape(part(f.get(18).copied().unwrap_or(""), d.component, 0).trim(), d);
    crate::model::valid_serial(&s).then_some(s)
}

#[cfg(test)]
mod tests {
    use crate::decode::RejectReason;
    use crate::fields::FieldValue;
    use crate::protocols::hl7::ack::AckCode;
    use crate::protocols::hl7::decode::Message;
    use crate::protocols::hl7::testutil::decode;
    use crate::protocols::testutil::NOW;
    use crate::protocols::testutil::field;

    #[test]
    fn each_observation_belongs_to_the_device_that_names_it_or_its_containment() {
        let msg = |rows: &[&str]| {
            let mut m = String::from("MSH|^~\\&|CMS^CENTRAL^L|W|GW|H|20240517103015+0000||ORU^R01|C1|P|2.6\r");
            for r in rows {
                m.push_str(r);
                m.push('\r');
            }
            decode(m.as_bytes(), NOW)
        };
        let mds = |place: &str, dev: &str| {
            format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|{place}|||||||X|||||||{dev}^M^{dev}^EUI-64")
        };
        let hr = |place: &str, v: u32, dev: &str| {
            format!("OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|{place}|{v}|/min|||||R|||||||{dev}")
        };
        let serials = |m: &Message| {
            let mut v: Vec<(String, Option<FieldValue>)> =
                m.decoded.readings.iter().map(|r| (r.serial.clone(), field(r, "heart_rate"))).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let reasons = |m: &Message| m.decoded.rejected.iter().map(|r| r.reason).collect::<Vec<_>>();

        // Two monitors: each heart rate goes to its MDS's device; one under neither is refused.
        let m = msg(&[
            &mds("1.0.0.0", "A1"),
            &hr("1.1.1.1", 71, ""),
            &mds("2.0.0.0", "B2"),
            &hr("2.1.1.1", 82, ""),
            &hr("", 90, ""),
        ]);
        assert_eq!(serials(&m), [("A1".into(), Some(FieldValue::Int(71))), ("B2".into(), Some(FieldValue::Int(82)))]);
        assert_eq!(reasons(&m), [RejectReason::AmbiguousDevice]);
        assert_eq!(m.ack, AckCode::Accept);

        // An OBX-18 of its own wins; a VMD row naming a module is nearer than the MDS.
        let m =
            msg(&[&mds("1.0.0.0", "A1"), &mds("1.2.0.0", "OX3"), &hr("1.2.1.1", 73, ""), &hr("1.1.1.1", 74, "OWN4")]);
        assert_eq!(
            serials(&m),
            [("OWN4".into(), Some(FieldValue::Int(74))), ("OX3".into(), Some(FieldValue::Int(73)))]
        );

        // Two rows of one place naming different devices: what sits below them is nobody's.
        let m = msg(&[&mds("1.0.0.0", "A1"), &mds("1.0.0.0", "B2"), &hr("1.1.1.1", 75, "")]);
        assert!(m.decoded.readings.is_empty());
        assert_eq!(reasons(&m), [RejectReason::AmbiguousDevice]);

        // One device named: everything of the message is its, OBX-4 or not.
        let m = msg(&[&mds("1.0.0.0", "A1"), &hr("", 76, "")]);
        assert_eq!(serials(&m), [("A1".into(), Some(FieldValue::Int(76)))]);
        // None named: MSH-3's first component.
        assert_eq!(serials(&msg(&[&hr("1.1.1.1", 77, "")])), [("CMS".into(), Some(FieldValue::Int(77)))]);
    }
}
