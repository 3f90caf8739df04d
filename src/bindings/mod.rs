//! Bindings: which monitoring stream (and so which patient) a device's reading belongs to.
//!
//! A binding joins `devices` → `signal_streams` → `timeseries_binding` →
//! `timeseries_binding_tag` into what resolution needs: the stream identity that becomes tags,
//! the InfluxDB destination, and the stream's time window. Bindings come from one source: a
//! file, PostgreSQL or signed MQTT pushes; whichever it is, a copy always passes through the
//! SQLite cache first, so the gateway starts and works offline from its last copy.
//!
//! Invariants:
//! - a table is replaced whole (one `Arc` swap), never edited in place, so a reading is never
//!   resolved against half an update;
//! - nothing about a patient but the patient's id is ever held here (names are personal data).
//!
//! Layout: this file loads, compiles and applies binding lists; [`table`] is what resolution
//! reads, [`view`] publishes it with its freshness; [`file`], [`postgres`] and [`push`] are
//! the sources; [`config`] is the `[bindings]` section.

pub mod config;
pub mod file;
pub mod postgres;
pub mod push;
pub mod table;
pub mod view;

use crate::model::Binding;
use table::{BindingTable, Compiled};
use view::{View, ViewTx};

/// Builds the table in force at start: the bindings file if configured (stored into the
/// cache first), else the cached copy (kept from the last sync), else an empty table.
pub async fn load_table(
    file: Option<&std::path::Path>,
    queue: &crate::queue::QueueHandle,
) -> Result<BindingTable, Vec<String>> {
    let one = |e: crate::queue::QueueError| vec![e.to_string()];
    let (bindings, source, version) = match file {
        Some(path) => {
            let b = file::load(path)?;
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
