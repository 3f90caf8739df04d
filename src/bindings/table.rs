//! The binding table resolution reads: every binding in force, compiled for the hot path and
//! indexed by device serial.
//!
//! A table is immutable: a new copy replaces it whole (one `Arc` swap, see [`super::view`]),
//! so a reading is never resolved against half an update.

use std::collections::HashMap;
use std::sync::Arc;

use super::source::BindingSource;
use crate::model::Binding;

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
    /// Where this copy came from, for status and logs.
    pub source: BindingSource,
    pub version: String,
}

impl BindingTable {
    pub fn new(compiled: Vec<Compiled>, source: BindingSource, version: String) -> Self {
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
