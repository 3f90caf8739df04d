//! Every task of a running gateway in one `JoinSet`, each with its name and the stage it
//! belongs to, so that stopping can wait for the stages in the order the data flows, and
//! every task's end is logged — a panic included.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{AbortHandle, Id, JoinSet};
use tracing::{error, info, warn};

/// When a task is stopped, in the order of a graceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Sources (MQTT, serial ports, HL7) and what stops with them (SIGHUP reloads).
    Sources,
    /// Intake: ends once every source has dropped its sender.
    Intake,
    /// What delivers and keeps bindings current: sinks, parking, the PostgreSQL sync, the
    /// reporter. Stopped after intake, so that nothing committed waits for them in vain.
    Delivery,
    /// Loops with nothing to finish (summaries, watchers, the push applier, the systemd
    /// notifier): aborted last.
    Support,
}

/// A task's name and stage, by task id.
#[derive(Debug, Clone)]
struct Task {
    name: String,
    stage: Stage,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It returned.
    Returned,
    /// It panicked (the message is in the log).
    Panicked,
    /// It was aborted (a support task at the end of a stop).
    Aborted,
}

/// A task that ended, for the caller to judge: before a stop began, any ending is a fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub name: String,
    pub stage: Stage,
    pub how: Ending,
}

#[derive(Default)]
pub struct Tasks {
    set: JoinSet<()>,
    tasks: HashMap<Id, Task>,
    handles: Vec<(Stage, AbortHandle)>,
}

impl Tasks {
    pub fn spawn(&mut self, name: impl Into<String>, stage: Stage, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.tasks.insert(handle.id(), Task { name: name.into(), stage });
        self.handles.push((stage, handle));
    }

    /// Tasks of `stage` and earlier still running.
    fn running_up_to(&self, stage: Stage) -> usize {
        self.tasks.values().filter(|t| t.stage <= stage).count()
    }

    /// The next task to end, logged; `None` once none is left.
    pub async fn next(&mut self) -> Option<Ended> {
        let (id, how) = match self.set.join_next_with_id().await? {
            Ok((id, ())) => (id, Ending::Returned),
            Err(e) if e.is_panic() => (e.id(), Ending::Panicked),
            Err(e) => (e.id(), Ending::Aborted),
        };
        let task = self.tasks.remove(&id).unwrap_or(Task { name: "unknown".into(), stage: Stage::Support });
        match how {
            Ending::Returned => info!(task = %task.name, "Task ended."),
            Ending::Aborted => info!(task = %task.name, "Task stopped."),
            Ending::Panicked => error!(task = %task.name, "Task panicked; the gateway stops."),
        }
        Some(Ended { name: task.name, stage: task.stage, how })
    }

    /// Waits until every task of `stage` and the stages before it has ended; returns the
    /// first that panicked on the way.
    pub async fn finish_up_to(&mut self, stage: Stage) -> Option<Ended> {
        let mut fault = None;
        while self.running_up_to(stage) > 0 {
            let Some(ended) = self.next().await else { break };
            if ended.how == Ending::Panicked && fault.is_none() {
                fault = Some(ended);
            }
        }
        fault
    }

    /// Aborts every task left and waits for them.
    pub async fn abort_rest(&mut self) {
        for (_, h) in &self.handles {
            h.abort();
        }
        while self.next().await.is_some() {}
        if !self.tasks.is_empty() {
            warn!(left = self.tasks.len(), "Tasks unaccounted for at the end of the stop.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_finish_in_order_and_a_panic_is_reported_with_its_name() {
        let mut tasks = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("source", Stage::Sources, async move {
            let _ = rx.await;
        });
        tasks.spawn("delivery", Stage::Delivery, std::future::pending());
        tasks.spawn("intake", Stage::Intake, async { panic!("boom") });
        let _ = tx.send(());
        let fault = tasks.finish_up_to(Stage::Intake).await.expect("the panic");
        assert_eq!((fault.name.as_str(), fault.how), ("intake", Ending::Panicked));
        assert_eq!(tasks.running_up_to(Stage::Support), 1, "delivery still runs");
        tasks.abort_rest().await;
        assert_eq!(tasks.running_up_to(Stage::Support), 0);
    }
}
