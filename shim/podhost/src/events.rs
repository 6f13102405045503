//! The pod's events, published to containerd as its task events.

use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::Context;

use crate::pod::{Event, Events};

/// containerd's event service, as the shim was told to reach it.
pub struct Publisher {
    publisher: RemotePublisher,
    namespace: String,
    /// The shim's pid, every container's "process".
    pid: u32,
}

impl Publisher {
    pub fn new(publisher: RemotePublisher, namespace: &str, pid: u32) -> Self {
        Publisher {
            publisher,
            namespace: namespace.to_string(),
            pid,
        }
    }
}

#[async_trait]
impl Events for Publisher {
    async fn publish(&self, event: Event) {
        let pid = self.pid;
        let (topic, message): (&str, Box<dyn MessageDyn>) = match event {
            Event::Created {
                id,
                bundle,
                rootfs,
                stdio,
                terminal,
            } => (
                topics::TASK_CREATE_EVENT_TOPIC,
                Box::new(TaskCreate {
                    container_id: id,
                    bundle,
                    rootfs,
                    io: MessageField::some(TaskIO {
                        stdin: stdio.stdin,
                        stdout: stdio.stdout,
                        stderr: stdio.stderr,
                        terminal,
                        ..Default::default()
                    }),
                    pid,
                    ..Default::default()
                }),
            ),
            Event::ExecAdded { id, exec_id } => (
                topics::TASK_EXEC_ADDED_EVENT_TOPIC,
                Box::new(TaskExecAdded {
                    container_id: id,
                    exec_id,
                    ..Default::default()
                }),
            ),
            Event::Started { id, exec_id } if exec_id.is_empty() => (
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id,
                    pid,
                    ..Default::default()
                }),
            ),
            Event::Started { id, exec_id } => (
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id,
                    exec_id,
                    pid,
                    ..Default::default()
                }),
            ),
            Event::OutOfMemory { id } => (
                topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id,
                    ..Default::default()
                }),
            ),
            Event::Exited {
                id,
                exec_id,
                status,
                at,
            } => (
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    // containerd names a process by its exec id, the init by the container's.
                    id: if exec_id.is_empty() {
                        id.clone()
                    } else {
                        exec_id
                    },
                    container_id: id,
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(timestamp(at)),
                    ..Default::default()
                }),
            ),
            Event::Deleted { id, status, at } => (
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: id.clone(),
                    id,
                    pid,
                    exit_status: status,
                    exited_at: MessageField::some(timestamp(at)),
                    ..Default::default()
                }),
            ),
        };
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, message)
            .await
        {
            tracing::warn!("cannot publish {topic}: {e}");
        }
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}
