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

pub mod config;
pub mod file;
pub mod postgres;
pub mod push;
pub mod view;

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::Binding;

pub use view::{Freshness, View, ViewRx, ViewTx};

/// A binding ready for the hot path: its series prefix is encoded once, here.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub binding: Binding,
    pub prefix: String,
    /// Queue id of the destination (see `queue::handle::QueueHandle::destination_id`).
    pub dest_id: i64,
    /// Queue key of the stream (see `queue::handle::QueueHandle::stream_key`), for activity.
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

/// Builds the table in force at start: the bindings file if configured (stored into the
/// cache first), else the cached copy (kept from the last sync), else an empty table.
pub async fn load_table(
    file: Option<&std::path::Path>,
    queue: &crate::queue::handle::QueueHandle,
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
        None => queue
            .load_bindings()
            .await
            .map_err(one)?
            .map(|c| (c.bindings, c.source, c.version))
            .unwrap_or_else(|| (Vec::new(), "none".into(), String::new())),
    };
    compile(bindings, source, version, queue).await.map_err(one)
}

/// Encodes every binding's series prefix and registers its destination.
pub async fn compile(
    bindings: Vec<Binding>,
    source: String,
    version: String,
    queue: &crate::queue::handle::QueueHandle,
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
    queue: &crate::queue::handle::QueueHandle,
    view: &ViewTx,
) -> Result<bool, String> {
    apply_if(list, source, queue, view, false).await
}

/// As [`apply`]; with `always`, the cache and table are replaced even when the content is
/// unchanged (a newer signed snapshot must be recorded as the one in force).
pub async fn apply_if(
    list: Vec<Binding>,
    source: &str,
    queue: &crate::queue::handle::QueueHandle,
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
