//! containerd's task API for the pod: each call translated to the pod's (`pod.rs`) and back,
//! and the one place that decides which ttrpc code an error is. The code matters: containerd
//! treats NOT_FOUND on kill/delete as "already gone", and CRI shows the message of a failed
//! create to the user as the container's waiting reason.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest,
    PidsResponse, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, Code, Result as TtrpcResult};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::util::convert_to_any;
use oci_spec::runtime::LinuxResources;
use wasmpod_image::ImageError;

use crate::error::Error;
use crate::events::timestamp;
use crate::guest::Wasm;
use crate::pod::{Create, Exec, Phase, Pod, Stdio};
use crate::spec;

/// The ttrpc code containerd gets for an error.
pub fn code(e: &Error) -> Code {
    match e {
        Error::NotFound(_)
        | Error::ExecNotFound(_)
        | Error::DeletedWhileCreating(_)
        | Error::DeletedWhileWaiting(_)
        | Error::AlreadyFinished(_) => Code::NOT_FOUND,
        Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
        Error::NotStartable { .. }
        | Error::NotRunning(_)
        | Error::NothingToExecInto(_)
        | Error::StillRunning(_)
        | Error::Cgroup { .. }
        | Error::Netns { .. } => Code::FAILED_PRECONDITION,
        Error::Terminal
        | Error::Spec(_)
        | Error::NoCommand
        | Error::CapabilityDropped
        | Error::HttpSettings(_)
        | Error::NotWasm { .. }
        | Error::Lookup { .. }
        | Error::Image(ImageError::Invalid(_))
        | Error::Pin(_)
        | Error::NoExecProcess
        | Error::ExecMissing { .. }
        | Error::ExecNotWasm { .. }
        | Error::ExecLookup { .. }
        | Error::ExecProcess(_)
        | Error::Compile { .. }
        | Error::StdioScheme(_)
        | Error::Resources(_) => Code::INVALID_ARGUMENT,
        Error::Image(_)
        | Error::RootfsDir { .. }
        | Error::Mount { .. }
        | Error::Stdio { .. }
        | Error::Engine(_)
        | Error::Runtime(_)
        | Error::Internal(_) => Code::INTERNAL,
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(code(&e), e.to_string()))
    }
}

/// The containerd task service for one pod.
#[derive(Clone)]
pub struct TaskService {
    pod: Arc<Pod<Wasm>>,
}

impl TaskService {
    pub(crate) fn new(pod: Pod<Wasm>) -> Self {
        TaskService { pod: Arc::new(pod) }
    }
}

#[async_trait]
impl Task for TaskService {
    #[tracing::instrument(skip_all, fields(id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let create = Create {
            id: req.id,
            bundle: req.bundle,
            rootfs: req.rootfs,
            stdio: Stdio {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            },
            terminal: req.terminal,
        };
        self.pod.create(create).await?;
        Ok(CreateTaskResponse {
            pid: self.pod.pid(),
            ..Default::default()
        })
    }

    #[tracing::instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        self.pod.start(&req.id, &req.exec_id).await?;
        Ok(StartResponse {
            pid: self.pod.pid(),
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let s = self.pod.status(&req.id, &req.exec_id)?;
        Ok(StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle: s.bundle,
            pid: self.pod.pid(),
            status: match s.phase {
                Phase::Created => Status::CREATED,
                Phase::Running => Status::RUNNING,
                Phase::Stopped => Status::STOPPED,
            }
            .into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            exit_status: s.exited.map(|e| e.status).unwrap_or_default(),
            exited_at: s
                .exited
                .map(|e| MessageField::some(timestamp(e.at)))
                .unwrap_or_default(),
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exited = self.pod.wait(&req.id, &req.exec_id).await?;
        Ok(WaitResponse {
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }

    #[tracing::instrument(skip_all, fields(id = %req.id, exec = %req.exec_id, signal = req.signal))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.pod.kill(&req.id, &req.exec_id, req.signal).await?;
        Ok(Empty::new())
    }

    #[tracing::instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let exited = self.pod.delete(&req.id, &req.exec_id).await?;
        Ok(DeleteResponse {
            pid: self.pod.pid(),
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        self.pod.status(&req.id, "")?;
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid: self.pod.pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        use containerd_shim::protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics,
        };
        let usage = self.pod.meter(&req.id)?;
        let memory = usage.memory_bytes();
        let metrics = Metrics {
            cpu: MessageField::some(CPUStat {
                usage: MessageField::some(CPUUsage {
                    total: usage.cpu_ns(),
                    user: usage.cpu_ns(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory: MessageField::some(MemoryStat {
                usage: MessageField::some(MemoryEntry {
                    usage: memory,
                    ..Default::default()
                }),
                rss: memory,
                total_rss: memory,
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = convert_to_any(Box::new(metrics)).map_err(|e| Error::Internal(e.to_string()))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    // containerd polls this: at debug, so that the shim's log keeps to what happens.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let _ = req;
        Ok(ConnectResponse {
            shim_pid: self.pod.pid(),
            task_pid: self.pod.pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    /// `kubectl exec`: another Wasm program of the container, in the container's context.
    #[tracing::instrument(skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let process = match req.spec.as_ref() {
            Some(any) => Some(serde_json::from_slice(&any.value).map_err(Error::ExecProcess)?),
            None => None,
        };
        self.pod
            .exec(Exec {
                id: req.id,
                exec_id: req.exec_id,
                process,
                stdio: Stdio {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                },
                terminal: req.terminal,
            })
            .await?;
        Ok(Empty::new())
    }

    /// containerd closes a process's stdin when its side is done; the guest sees the FIFO's
    /// end of file once containerd has closed its end, so there is nothing to do here.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %req.id, exec = %req.exec_id))]
    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.pod.status(&req.id, &req.exec_id)?;
        Ok(Empty::new())
    }

    /// UpdateContainerResources (in-place pod resize).
    #[tracing::instrument(skip_all, fields(id = %req.id))]
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources: LinuxResources =
            serde_json::from_slice(&req.resources.value).map_err(Error::Resources)?;
        self.pod
            .update(&req.id, spec::resource_limits(&resources))?;
        Ok(Empty::new())
    }

    #[tracing::instrument(skip_all)]
    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.pod.exit_if_idle();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::other("x")
    }

    #[test]
    fn errors_map_to_the_codes_containerd_expects() {
        let cases = [
            (Error::NotFound("c".into()), Code::NOT_FOUND),
            (Error::ExecNotFound("e".into()), Code::NOT_FOUND),
            (Error::AlreadyFinished("c".into()), Code::NOT_FOUND),
            (Error::DeletedWhileCreating("c".into()), Code::NOT_FOUND),
            (Error::AlreadyExists("c".into()), Code::ALREADY_EXISTS),
            (Error::StillRunning("c".into()), Code::FAILED_PRECONDITION),
            (
                Error::NotStartable {
                    id: "c".into(),
                    phase: Phase::Stopped,
                },
                Code::FAILED_PRECONDITION,
            ),
            (
                Error::Netns {
                    path: "/n".into(),
                    source: io(),
                },
                Code::FAILED_PRECONDITION,
            ),
            (Error::Terminal, Code::INVALID_ARGUMENT),
            (Error::NoCommand, Code::INVALID_ARGUMENT),
            (
                Error::Image(ImageError::Invalid("x".into())),
                Code::INVALID_ARGUMENT,
            ),
            (
                Error::Image(ImageError::Unanswered("x".into())),
                Code::INTERNAL,
            ),
            (
                Error::Stdio {
                    path: "/p".into(),
                    source: io(),
                },
                Code::INTERNAL,
            ),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code, "{message}");
                    assert_eq!(s.message(), message);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn messages_name_the_container_and_the_cause() {
        let e = Error::NotStartable {
            id: "app".into(),
            phase: Phase::Running,
        };
        assert_eq!(e.to_string(), "container app cannot start: it is Running");
        let e = Error::Netns {
            path: "/var/run/netns/cni-1".into(),
            source: io(),
        };
        assert_eq!(
            e.to_string(),
            "cannot enter the pod's network namespace /var/run/netns/cni-1: x; the container \
             is not started on the node's network instead"
        );
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
