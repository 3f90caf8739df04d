//! A binding: which monitoring stream (and so which patient) a device's readings belong to
//! between two instants, and where its points go, in the form files, snapshots and the cache
//! exchange; [`crate::bindings`] turns bindings into the table resolution reads.
//!
//! Nothing about a patient but the patient's id is ever held here (names are personal data).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lineproto;

/// Tag keys the gateway itself writes; a binding's custom tags may not reuse them.
pub const CORE_TAGS: [&str; 5] = ["device_id", "org_id", "patient_id", "signal_type", "stream_id"];

/// Tag keys that would carry personal data (the platform's old generator tagged
/// `patient_name`); refused in any binding. Names, identifiers that name a person outside the
/// platform (record, insurance and national numbers), birth data and contact details.
/// Compared without regard to case, `-` or `_`.
pub const PERSONAL_TAGS: &[&str] = &[
    "patientname",
    "personname",
    "name",
    "patient",
    "firstname",
    "lastname",
    "fullname",
    "surname",
    "givenname",
    "familyname",
    "middlename",
    "maidenname",
    "nickname",
    "initials",
    "mrn",
    "medicalrecordnumber",
    "patientnumber",
    "ssn",
    "socialsecuritynumber",
    "nationalid",
    "nhsnumber",
    "insurancenumber",
    "insuranceid",
    "passport",
    "dob",
    "birthdate",
    "dateofbirth",
    "birthday",
    "birthplace",
    "address",
    "streetaddress",
    "phone",
    "phonenumber",
    "email",
];

/// True when a tag key would carry personal data.
pub fn is_personal_tag(key: &str) -> bool {
    let norm: String = key.chars().filter(|c| *c != '_' && *c != '-').flat_map(char::to_lowercase).collect();
    PERSONAL_TAGS.contains(&norm.as_str())
}

/// One binding, as exchanged in files and stored in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub serial: String,
    pub device_id: String,
    pub stream_id: String,
    pub patient_id: String,
    #[serde(default)]
    pub org_id: String,
    pub signal_type: String,
    #[serde(default)]
    pub influx_org: String,
    pub influx_bucket: String,
    pub measurement: String,
    /// Stream start (`signal_streams.started_at`, UTC). Absent: covers every earlier reading.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub started_at: Option<i64>,
    /// Stream end (`signal_streams.ended_at`, UTC), exclusive. Absent: still active.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_rfc3339")]
    pub ended_at: Option<i64>,
    /// The stream's nominal sample rate (`signal_streams.sample_rate_hz`), for gap detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<f64>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Binding {
    /// Every problem with this binding, each naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut required = |name: &str, v: &str| {
            if v.trim().is_empty() {
                p.push(format!("{name}: must not be empty"));
            }
        };
        required("serial", &self.serial);
        required("device_id", &self.device_id);
        required("stream_id", &self.stream_id);
        required("patient_id", &self.patient_id);
        required("signal_type", &self.signal_type);
        required("influx_bucket", &self.influx_bucket);
        required("measurement", &self.measurement);
        if !super::reading::valid_serial(&self.serial) {
            p.push("serial: at most 80 characters, no control characters, '/', '+' or '#'".into());
        }
        if self.measurement.starts_with(['_', '#']) {
            p.push("measurement: must not start with '_' (reserved) or '#' (a comment line)".into());
        }
        for k in self.tags.keys() {
            if k.is_empty() || k.starts_with('_') || k == "time" {
                p.push(format!("tags.{k:?}: tag keys must be non-empty, not 'time', not start with '_'"));
            }
            if is_personal_tag(k) {
                p.push(format!("tags.{k}: personal data must never be written to InfluxDB"));
            }
            if CORE_TAGS.contains(&k.as_str()) {
                p.push(format!("tags.{k}: '{k}' is written by the gateway itself and cannot be overridden"));
            }
        }
        if let (Some(s), Some(e)) = (self.started_at, self.ended_at)
            && e <= s
        {
            p.push("ended_at: must be after started_at".into());
        }
        p
    }

    /// Does this binding's stream cover a reading taken at `ts_ns`?
    pub fn covers(&self, ts_ns: i64) -> bool {
        self.started_at.is_none_or(|s| s <= ts_ns) && self.ended_at.is_none_or(|e| ts_ns < e)
    }

    /// The InfluxDB destination of this binding's points.
    pub fn destination(&self) -> Destination {
        Destination { org: self.influx_org.clone(), bucket: self.influx_bucket.clone() }
    }

    /// `measurement,tags…` with the core tags and the custom tags, escaped and sorted.
    pub fn series_prefix(&self) -> String {
        let core = [
            ("device_id", self.device_id.as_str()),
            ("org_id", self.org_id.as_str()),
            ("patient_id", self.patient_id.as_str()),
            ("signal_type", self.signal_type.as_str()),
            ("stream_id", self.stream_id.as_str()),
        ];
        lineproto::series_prefix(
            &self.measurement,
            core.into_iter().chain(self.tags.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        )
    }
}

/// Where a point goes: org + bucket (v2), or database[/retention policy] in `bucket` (v1,
/// InfluxDB's own v2-compatibility mapping).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub org: String,
    pub bucket: String,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.org.is_empty() {
            write!(f, "bucket {:?}", self.bucket)
        } else {
            write!(f, "bucket {:?} (org {:?})", self.bucket, self.org)
        }
    }
}

/// Serde for optional RFC 3339 timestamps held as epoch nanoseconds. A timestamp without a
/// zone is read as UTC (the central schema's `TIMESTAMP` columns are UTC).
mod opt_rfc3339 {
    use super::parse_rfc3339 as parse;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ns) => s.serialize_str(
                &chrono::DateTime::from_timestamp_nanos(*ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            ),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse(&s).ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time"))))
            .transpose()
    }
}

/// An RFC 3339 time (or `YYYY-MM-DD HH:MM:SS[.f]`, read as UTC), in ns since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t.timestamp_nanos_opt();
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .and_then(|t| t.and_utc().timestamp_nanos_opt())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Binding {
        Binding {
            serial: "ABC-001".into(),
            device_id: "d".into(),
            stream_id: "s".into(),
            patient_id: "p".into(),
            org_id: "o".into(),
            signal_type: "vital_signs".into(),
            influx_org: "heartguard".into(),
            influx_bucket: "heartguard_vitals".into(),
            measurement: "vital_signs".into(),
            started_at: None,
            ended_at: None,
            sample_rate_hz: None,
            tags: BTreeMap::from([("location".into(), "ICU-5".into())]),
        }
    }

    #[test]
    fn core_tags_cannot_be_overridden_and_reserved_names_are_refused() {
        let mut b = sample();
        b.tags.insert("patient_id".into(), "x".into());
        b.tags.insert("_x".into(), "x".into());
        b.measurement = "_m".into();
        let p = b.problems();
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(sample().problems().is_empty());
    }

    #[test]
    fn personal_tag_keys_are_refused_in_any_spelling() {
        for key in [
            "patient_name",
            "Given-Name",
            "family_name",
            "SSN",
            "social_security_number",
            "date_of_birth",
            "phone_number",
            "e_mail",
            "nhs_number",
            "MRN",
        ] {
            let mut b = sample();
            b.tags.insert(key.into(), "x".into());
            assert!(
                b.problems().iter().any(|p| p.contains("personal data")),
                "{key} must be refused: {:?}",
                b.problems()
            );
        }
        for key in ["location", "priority", "ward", "bed", "unit"] {
            assert!(!is_personal_tag(key), "{key}");
        }
    }

    #[test]
    fn window_is_start_inclusive_end_exclusive() {
        let mut b = sample();
        b.started_at = Some(10);
        b.ended_at = Some(20);
        assert!(!b.covers(9) && b.covers(10) && b.covers(19) && !b.covers(20));
    }

    #[test]
    fn prefix_has_core_and_custom_tags_sorted() {
        assert_eq!(
            sample().series_prefix(),
            "vital_signs,device_id=d,location=ICU-5,org_id=o,patient_id=p,signal_type=vital_signs,stream_id=s"
        );
    }
}
