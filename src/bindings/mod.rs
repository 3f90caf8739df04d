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
pub mod source;
pub mod table;
pub mod view;

use crate::model::Binding;
use crate::queue::QueueError;
use crate::queue::handle::QueueHandle;
use source::{BindingSource, UnknownSource};
use table::{BindingTable, Compiled};
use view::{View, ViewTx};

/// Builds the table in force at start: the bindings file if configured (stored into the
/// cache first), else the cached copy (kept from the last sync), else an empty table.
pub async fn load_table(file: Option<&std::path::Path>, queue: &QueueHandle) -> Result<BindingTable, Vec<String>> {
    let one = |e: QueueError| vec![e.to_string()];
    let (bindings, source, version) = match file {
        Some(path) => {
            let b = file::load(path)?;
            let source = BindingSource::File(path.to_path_buf());
            let version = version_of(&b);
            queue.replace_bindings(b.clone(), source.to_string(), version.clone()).await.map_err(one)?;
            (b, source, version)
        }
        None => match queue.load_bindings().await.map_err(one)? {
            Some(crate::queue::cache::CachedBindings { bindings: b, source, version }) => {
                let source = source.parse().map_err(|e: UnknownSource| vec![format!("binding cache: {e}")])?;
                (b, source, version)
            }
            None => (Vec::new(), BindingSource::None, String::new()),
        },
    };
    compile(bindings, source, version, queue).await.map_err(one)
}

/// Encodes every binding's series prefix and registers its destination.
pub async fn compile(
    bindings: Vec<Binding>,
    source: BindingSource,
    version: String,
    queue: &QueueHandle,
) -> Result<BindingTable, QueueError> {
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
    source: BindingSource,
    queue: &QueueHandle,
    view: &ViewTx,
) -> Result<bool, QueueError> {
    apply_if(list, source, queue, view, false).await
}

/// As [`apply`]; with `always`, the cache and table are replaced even when the content is
/// unchanged (a newer signed snapshot must be recorded as the one in force).
pub async fn apply_if(
    list: Vec<Binding>,
    source: BindingSource,
    queue: &QueueHandle,
    view: &ViewTx,
    always: bool,
) -> Result<bool, QueueError> {
    let (list, refused): (Vec<Binding>, Vec<Binding>) = list.into_iter().partition(|b| b.problems().is_empty());
    for b in &refused {
        tracing::error!(device = %crate::model::loggable(&b.serial), stream = %b.stream_id, problems = %b.problems().join("; "), "Binding refused; the device's readings stay parked until it is fixed centrally.");
    }
    let version = version_of(&list);
    if !always && view.borrow().table.version == version {
        return Ok(false);
    }
    let text = source.to_string();
    queue.replace_bindings(list.clone(), text.clone(), version.clone()).await?;
    let n = list.len();
    let table = compile(list, source, version.clone(), queue).await?;
    View::put_table(view, table);
    tracing::info!(bindings = n, source = %text, %version, "Bindings updated.");
    Ok(true)
}

/// A stable content hash, used as the version of a bindings file.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Limits, Synchronous};

    /// The cache keeps a table's source as text; at start it reads back as the source it was,
    /// so the version of a pushed snapshot still bars older ones.
    #[tokio::test]
    async fn the_cached_source_reads_back_as_the_source_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (queue, _store) = QueueHandle::open(dir.path(), Synchronous::Normal, Limits::default()).expect("open");
        assert_eq!(load_table(None, &queue).await.expect("nothing cached").source, BindingSource::None);
        let pushed = BindingSource::Push { version: 5, key: "0123456789abcdef".into() };
        queue.replace_bindings(Vec::new(), pushed.to_string(), "v".into()).await.expect("store");
        let table = load_table(None, &queue).await.expect("cached");
        assert_eq!(table.source, pushed);
        assert_eq!(table.source.push_version(), 5);
        queue.replace_bindings(Vec::new(), "cache".into(), "v".into()).await.expect("store");
        let problems = load_table(None, &queue).await.expect_err("a source the gateway never writes");
        assert_eq!(problems, ["binding cache: the source \"cache\" is not one this gateway writes"]);
    }
}
