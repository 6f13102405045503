//! The shim daemon containerd starts: `start` (one process per pod), `delete`, and the task
//! service it serves.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::{Config, DeleteResponse, Flags, StartOpts};
use wasmpod_image::Containerd;

use crate::task::TaskService;
use crate::{events, guest, node, pod, spec};

/// containerd's name for this runtime (`runtime_type`).
pub const RUNTIME_TYPE: &str = "io.containerd.wasmtime.v1";

pub struct PodShim {
    namespace: String,
    /// containerd's API socket, for reading Wasm artifacts from its content store.
    address: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for PodShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        // The pod host forks nothing, so it has no children to reap.
        config.no_reaper = true;
        config.no_sub_reaper = true;
        config.no_setup_logger = true;
        // Only the daemon (no action) has containerd reading its log FIFO.
        if args.action.is_empty() {
            // One malloc arena: the pod's threads allocate little, and every extra arena
            // keeps megabytes resident per pod.
            // SAFETY: mallopt only tunes the allocator; called before the daemon's threads
            // allocate in earnest.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
            if let Err(e) = crate::logger::init(args.debug, pod_attributes(&args.id)) {
                eprintln!("cannot open the shim log: {e}");
            }
            raise_open_files_limit();
        }
        PodShim {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    #[tracing::instrument(skip_all, fields(id = %opts.id))]
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the container's bundle directory.
        let grouping = spec::load(Path::new("."))
            .ok()
            .and_then(|s| s.annotations().as_ref()?.get(spec::SANDBOX_ID).cloned())
            .unwrap_or_else(|| opts.id.clone());
        // containerd writes the runtime's options to stdin. containerd-shim's spawn would parse
        // them as runc's options and take a field of another message (the generic options
        // containerd sends for non-runc runtimes, e.g. `SystemdCgroup = false` from the
        // installer) as the shim's cgroup. The pod host needs none of them: the cgroup comes
        // from the sandbox spec. So they are read here and dropped.
        let mut options = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut options);
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    #[tracing::instrument(skip_all)]
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // containerd calls this when the shim is gone; all that can be left is our mount.
        node::unmount(Path::new("rootfs"));
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(Timestamp {
                seconds: now.as_secs() as i64,
                nanos: now.subsec_nanos() as i32,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // The pod is gone: what it traced is sent before the process ends.
        tokio::task::spawn_blocking(crate::traces::flush).await.ok();
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let pid = std::process::id();
        TaskService::new(pod::Pod::new(
            pid,
            Box::new(events::Publisher::new(publisher, &self.namespace, pid)),
            Box::new(node::Host::default()),
            guest::Wasm::new(Containerd::new(Path::new(&self.address), &self.namespace)),
            self.exit.clone(),
        ))
    }
}

/// What traces say of the pod this shim serves: the sandbox's id and, from CRI's annotations
/// on the sandbox's spec (the daemon starts in the sandbox's bundle), the pod's name,
/// namespace and uid.
fn pod_attributes(sandbox: &str) -> Vec<(String, String)> {
    let mut out = vec![("wasmpod.sandbox.id".to_string(), sandbox.to_string())];
    let spec = spec::load(Path::new(".")).ok();
    let annotations = spec.as_ref().and_then(|s| s.annotations().as_ref());
    for (key, attribute) in [
        ("io.kubernetes.cri.sandbox-name", "k8s.pod.name"),
        ("io.kubernetes.cri.sandbox-namespace", "k8s.namespace.name"),
        ("io.kubernetes.cri.sandbox-uid", "k8s.pod.uid"),
    ] {
        if let Some(v) = annotations.and_then(|a| a.get(key)) {
            out.push((attribute.to_string(), v.clone()));
        }
    }
    out
}

/// The pod's containers share this process's descriptors, and each is held to its own
/// `RLIMIT_NOFILE` inside the engine: the process itself may use what the node allows, so
/// that the pod's containers together, not one of them, reach the kernel's limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(
                    "cannot raise the open files limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
