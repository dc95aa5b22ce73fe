//! Task events to containerd: each is an `Envelope` forwarded over
//! containerd's ttrpc socket by the crate's queueing publisher (in order,
//! retried on a dropped connection). A shim without a publisher (its
//! `TTRPC_ADDRESS` unset or unreachable) logs and drops them.

use std::time::SystemTime;

use containerd_shim::protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
    TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics;
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::publisher::RemotePublisher;

use super::stdio::StdioPaths;

/// How a process ended, as every response and event reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The code, or 128 + the signal.
    pub status: u32,
    pub at: SystemTime,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// The publisher of one shim (one containerd namespace).
pub struct Events {
    publisher: Option<RemotePublisher>,
    namespace: String,
}

impl Events {
    pub fn new(publisher: Option<RemotePublisher>, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(p) = &self.publisher else {
            tracing::debug!("no publisher: dropping {topic}");
            return;
        };
        if let Err(e) = p
            .publish(Default::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    pub async fn create(
        &self,
        id: &str,
        bundle: &str,
        rootfs: &[Mount],
        io: &StdioPaths,
        checkpoint: &str,
        pid: u32,
    ) {
        let ev = TaskCreate {
            container_id: id.into(),
            bundle: bundle.into(),
            rootfs: rootfs.to_vec(),
            io: Some(TaskIO {
                stdin: io.stdin.clone(),
                stdout: io.stdout.clone(),
                stderr: io.stderr.clone(),
                terminal: io.terminal,
                ..Default::default()
            })
            .into(),
            checkpoint: checkpoint.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn start(&self, id: &str, pid: u32) {
        let ev = TaskStart {
            container_id: id.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// `process_id` is the exec id, or the container id for the init.
    pub async fn exit(&self, id: &str, process_id: &str, pid: u32, exit: Exit) {
        let ev = TaskExit {
            container_id: id.into(),
            id: process_id.into(),
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn delete(&self, id: &str, pid: u32, exit: Exit) {
        let ev = TaskDelete {
            container_id: id.into(),
            id: id.into(),
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_added(&self, id: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_started(&self, id: &str, exec_id: &str, pid: u32) {
        let ev = TaskExecStarted {
            container_id: id.into(),
            exec_id: exec_id.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn paused(&self, id: &str) {
        let ev = TaskPaused {
            container_id: id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn resumed(&self, id: &str) {
        let ev = TaskResumed {
            container_id: id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn oom(&self, id: &str) {
        let ev = TaskOOM {
            container_id: id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn checkpointed(&self, id: &str, path: &str) {
        let ev = TaskCheckpointed {
            container_id: id.into(),
            checkpoint: path.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_CHECKPOINTED_EVENT_TOPIC, Box::new(ev))
            .await;
    }
}
