//! Bindings: which monitoring stream (and so which patient) a device's reading belongs to.
//!
//! A binding joins `devices` → `signal_streams` → `timeseries_binding` →
//! `timeseries_binding_tag` into what resolution needs: the stream identity that becomes tags,
//! the InfluxDB destination, and the stream's time window. Bindings come from a file today
//! (the same format is the export format of later sources) and always pass through the SQLite
//! cache, so the gateway starts and works offline from its last copy.
//!
//! Invariants:
//! - a table is replaced whole (one `Arc` swap), never edited in place, so a reading is never
//!   resolved against half an update;
//! - nothing about a patient but the patient's id is ever held here (names are personal data).

pub mod file;
pub mod postgres;
pub mod push;
pub mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::lineproto;
pub use view::{Freshness, View, ViewRx, ViewTx};

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
        if !crate::model::valid_serial(&self.serial) {
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

/// A binding ready for the hot path: its series prefix is encoded once, here.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub binding: Binding,
    pub prefix: String,
    /// Queue id of the destination (see `queue::QueueHandle::destination_id`).
    pub dest_id: i64,
    /// Queue key of the stream (see `queue::QueueHandle::stream_key`), for activity.
    pub stream_key: i64,
}

/// All bindings in force, by serial. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct BindingTable {
    by_serial: HashMap<String, Vec<Compiled>>,
    /// Where this copy came from and when, for status and logs.
    pub source: String,
    pub version: String,
}

impl BindingTable {
    pub fn new(compiled: Vec<Compiled>, source: String, version: String) -> Self {
        let mut by_serial: HashMap<String, Vec<Compiled>> = HashMap::new();
        for c in compiled {
            by_serial.entry(c.binding.serial.clone()).or_default().push(c);
        }
        Self { by_serial, source, version }
    }

    pub fn for_serial(&self, serial: &str) -> &[Compiled] {
        self.by_serial.get(serial).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.by_serial.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_serial.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Compiled> {
        self.by_serial.values().flatten()
    }
}

pub type SharedTable = Arc<BindingTable>;

/// Serde for optional RFC 3339 timestamps held as epoch nanoseconds. A timestamp without a
/// zone is read as UTC (the central schema's `TIMESTAMP` columns are UTC).
mod opt_rfc3339 {
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

    pub fn parse(s: &str) -> Option<i64> {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return t.timestamp_nanos_opt();
        }
        chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
            .ok()
            .and_then(|t| t.and_utc().timestamp_nanos_opt())
    }
}

/// Builds the table in force at start: the bindings file if configured (stored into the
/// cache first), else the cached copy (kept from the last sync), else an empty table.
pub async fn load_table(
    file: Option<&std::path::Path>,
    queue: &crate::queue::QueueHandle,
) -> Result<BindingTable, Vec<String>> {
    let one = |e: crate::queue::QueueError| vec![e.to_string()];
    let (bindings, source, version) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
            let b = file::parse(&text)
                .map_err(|p| p.into_iter().map(|m| format!("{}: {m}", path.display())).collect::<Vec<_>>())?;
            let source = format!("file {}", path.display());
            let version = version_of(&b);
            queue.replace_bindings(b.clone(), source.clone(), version.clone()).await.map_err(one)?;
            (b, source, version)
        }
        None => queue.load_bindings().await.map_err(one)?.unwrap_or_else(|| (Vec::new(), "none".into(), String::new())),
    };
    compile(bindings, source, version, queue).await.map_err(one)
}

/// Encodes every binding's series prefix and registers its destination.
pub async fn compile(
    bindings: Vec<Binding>,
    source: String,
    version: String,
    queue: &crate::queue::QueueHandle,
) -> Result<BindingTable, crate::queue::QueueError> {
    let mut compiled = Vec::with_capacity(bindings.len());
    for b in bindings {
        let dest_id = queue.destination_id(b.destination()).await?;
        let stream_key = queue.stream_key(b.stream_id.clone()).await?;
        compiled.push(Compiled { prefix: b.series_prefix(), binding: b, dest_id, stream_key });
    }
    Ok(BindingTable::new(compiled, source, version))
}

/// The version of a binding list: a content hash, so an unchanged reload changes nothing.
pub fn version_of(bindings: &[Binding]) -> String {
    let text = serde_json::to_string(bindings).unwrap_or_default();
    format!("{:016x}", fnv1a(text.as_bytes()))
}

/// Replaces the bindings in force by `list` from `source`, if it differs from the current
/// table: the cache first (one transaction), then the table (one swap). Bindings that fail
/// validation are left out and logged; the rest apply.
pub async fn apply(
    list: Vec<Binding>,
    source: &str,
    queue: &crate::queue::QueueHandle,
    view: &ViewTx,
) -> Result<bool, String> {
    apply_if(list, source, queue, view, false).await
}

/// As [`apply`]; with `always`, the cache and table are replaced even when the content is
/// unchanged (a newer signed snapshot must be recorded as the one in force).
pub async fn apply_if(
    list: Vec<Binding>,
    source: &str,
    queue: &crate::queue::QueueHandle,
    view: &ViewTx,
    always: bool,
) -> Result<bool, String> {
    let (list, refused): (Vec<Binding>, Vec<Binding>) = list.into_iter().partition(|b| b.problems().is_empty());
    for b in &refused {
        tracing::error!(device = %crate::model::loggable(&b.serial), stream = %b.stream_id, problems = %b.problems().join("; "), "Binding refused; the device's readings stay parked until it is fixed centrally.");
    }
    let version = version_of(&list);
    if !always && view.borrow().table.version == version {
        return Ok(false);
    }
    queue.replace_bindings(list.clone(), source.to_owned(), version.clone()).await.map_err(|e| e.to_string())?;
    let n = list.len();
    let table = compile(list, source.to_owned(), version.clone(), queue).await.map_err(|e| e.to_string())?;
    View::put_table(view, table);
    tracing::info!(bindings = n, %source, %version, "Bindings updated.");
    Ok(true)
}

/// A stable content hash, used as the version of a bindings file.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
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
