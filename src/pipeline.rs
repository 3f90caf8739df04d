//! What every stage of the data path shares, as one value: the queue, the bindings in force
//! (with their freshness), the counters, and the channel that tells the sinks how many points
//! a commit added per destination. Stages take a [`Pipeline`] instead of the same four or
//! five arguments each; [`Pipeline::for_test`] builds one on a fresh queue for tests.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::bindings::table::BindingTable;
use crate::bindings::view::{Freshness, View, ViewRx, ViewTx};
use crate::queue::handle::QueueHandle;
use crate::telemetry::Counters;

/// Points a commit added, per destination id: a hint for the sinks' batching, never needed
/// for correctness (a sink also reads the queue on its flush interval).
pub type Touched = Vec<(i64, u64)>;

/// The shared handles of the data path. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub queue: QueueHandle,
    pub view: ViewRx,
    pub counters: Arc<Counters>,
    pub touched: mpsc::UnboundedSender<Touched>,
}

impl Pipeline {
    /// A pipeline over `queue` and `view`; the receiver is the sinks' end of `touched`.
    pub fn new(queue: QueueHandle, view: ViewRx, counters: Arc<Counters>) -> (Self, mpsc::UnboundedReceiver<Touched>) {
        let (touched, rx) = mpsc::unbounded_channel();
        (Self { queue, view, counters, touched }, rx)
    }

    /// For tests: a queue of its own in `data_dir`, an empty binding table that is always
    /// fresh (put a table in force with the returned sender), fresh counters.
    pub fn for_test(data_dir: &std::path::Path) -> Result<TestPipeline, crate::queue::QueueError> {
        let (queue, store) =
            QueueHandle::open(data_dir, crate::queue::Synchronous::Normal, crate::queue::Limits::default())?;
        let (view_tx, view) = watch::channel(View::new(BindingTable::default(), Freshness::always()));
        let (pipe, touched) = Self::new(queue, view, Arc::new(Counters::default()));
        Ok(TestPipeline { pipe, view_tx, touched, store })
    }
}

/// What [`Pipeline::for_test`] builds: the pipeline and the ends a test drives.
pub struct TestPipeline {
    pub pipe: Pipeline,
    pub view_tx: ViewTx,
    pub touched: mpsc::UnboundedReceiver<Touched>,
    pub store: std::thread::JoinHandle<()>,
}
