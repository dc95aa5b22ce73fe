//! Instance events: created, started, paused, resumed, exited (with the
//! status), deleted, oom. Published on a broadcast channel that `GET
//! /events` streams as JSON lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::proto::ExitView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Started,
    Paused,
    Resumed,
    Exited,
    Deleted,
    Oom,
}

/// One event, one JSON line on `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event of this sproutd process.
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub id: String,
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// For `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<ExitView>,
}

/// Events not yet read by a slow subscriber before it is told it lagged.
const CAPACITY: usize = 4096;

#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            seq: AtomicU64::new(1),
        }
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn publish(
        &self,
        kind: EventKind,
        id: &str,
        function: &str,
        pid: Option<i32>,
        exit: Option<ExitView>,
    ) {
        let event = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            at: sprout_runtime::state::rfc3339(SystemTime::now()),
            kind,
            id: id.to_string(),
            function: function.to_string(),
            pid,
            exit,
        };
        tracing::info!(
            container = %id,
            function = %function,
            event = ?kind,
            pid = ?pid,
            exit_code = ?exit.and_then(|e| e.exit_code),
            "instance event"
        );
        // No subscriber is not an error.
        let _ = self.tx.send(event);
    }
}

/// Which events a `GET /events` wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: Option<String>,
    pub function: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.id.as_ref().is_none_or(|id| *id == e.id)
            && self.function.as_ref().is_none_or(|f| *f == e.function)
    }
}
