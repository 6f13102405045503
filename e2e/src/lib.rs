//! Test harness for the end-to-end suite: a CRI client that drives containerd exactly as the
//! kubelet does, `ctr` for the plain containerd path, and checks for what a pod leaves behind.
//!
//! The suite runs against a containerd started by `e2e/testbed.sh start VERSION`, found
//! through the variables that command prints (`e2e/run.sh` does all of it).

pub mod http;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The image with every Wasm test workload at `/` (see e2e/testbed.sh images).
pub const WORKLOADS: &str = "wasmpod.test/workloads:1";
pub const BUSYBOX: &str = "wasmpod.test/busybox:1";
/// The wasi:http test handler (e2e/http-handler) at /handler.wasm, its entrypoint.
pub const HTTP_HANDLER: &str = "wasmpod.test/http:1";
pub const HANDLER: &str = "wasmtime";
/// The isolated host's handler: a process per container, native sidecars allowed.
pub const ISOLATED: &str = "wasmtime-isolated";
/// How long a test waits for a container that should exit on its own.
pub const EXIT_WAIT: Duration = Duration::from_secs(60);

/// The containerd under test, from the environment `e2e/testbed.sh start` prints.
#[derive(Debug, Clone)]
pub struct Bed {
    pub version: String,
    pub socket: PathBuf,
    pub ctr: PathBuf,
    pub run_dir: PathBuf,
    /// The shims' compile cache.
    pub cache_dir: PathBuf,
    /// host:port of the test registry (plain HTTP), holding e2e/testbed.sh's registry images.
    pub registry: String,
}

impl Bed {
    pub fn from_env() -> Bed {
        let var = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!(
                    "{k} is not set: the e2e suite needs a running test containerd; run e2e/run.sh"
                )
            })
        };
        Bed {
            version: var("WASMPOD_CONTAINERD_VERSION"),
            socket: var("WASMPOD_CONTAINERD_SOCKET").into(),
            ctr: var("WASMPOD_CTR").into(),
            run_dir: var("WASMPOD_RUN_DIR").into(),
            cache_dir: var("WASMPOD_CACHE_DIR").into(),
            // Only the registry tests need it (the installer's live test starts containerd
            // without a registry).
            registry: std::env::var("WASMPOD_REGISTRY").unwrap_or_default(),
        }
    }

    /// The reference of a registry image (e2e/testbed.sh registry_images).
    pub fn image(&self, name: &str) -> String {
        assert!(
            !self.registry.is_empty(),
            "WASMPOD_REGISTRY is not set: the registry tests need e2e/testbed.sh's registry; run e2e/run.sh"
        );
        format!("{}/wasmpod/{name}:1", self.registry)
    }

    /// Runs `ctr` in the given namespace and returns (exit code, stdout, stderr).
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let out = Command::new(&self.ctr)
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args)
            .output()
            .context("running ctr")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// A fresh directory for one test's files (logs, volumes).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let d = self.run_dir.join("scratch").join(unique(name));
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }
}

/// The test containerd and a CRI client on it.
pub async fn connect() -> (Bed, Cri) {
    let bed = Bed::from_env();
    let cri = Cri::connect(&bed.socket).await.expect("CRI connect");
    (bed, cri)
}

/// Runs one container in a fresh pod to its exit; returns the pod (for logs) and status.
pub async fn run_to_exit(name: &str, spec: ContainerSpec) -> (Pod, k8s_cri::v1::ContainerStatus) {
    let (bed, mut cri) = connect().await;
    let pod = cri
        .run_pod(&bed, name, HANDLER)
        .await
        .expect("RunPodSandbox");
    let id = cri.run(&pod, spec).await.expect("create+start");
    let status = cri.wait_exited(&id, EXIT_WAIT).await.expect("exit");
    cri.remove_pod(&pod).await.expect("remove pod");
    (pod, status)
}

/// CRI creates the containerd task, and so calls the shim's create, in StartContainer. A
/// refused task must fail StartContainer and show in the container status (what
/// `kubectl describe pod` shows), with nothing left running.
pub async fn start_error(name: &str, spec: ContainerSpec) -> String {
    let (bed, mut cri) = connect().await;
    let pod = cri
        .run_pod(&bed, name, HANDLER)
        .await
        .expect("RunPodSandbox");
    let id = cri.create(&pod, spec).await.expect("CreateContainer");
    let err = cri.start(&id).await.expect_err("StartContainer must fail");
    let status = cri.status(&id).await.expect("status");
    assert_eq!(status.reason, "StartError", "{status:?}");
    assert!(
        status.message.len() > 20 && format!("{err:#}").contains(&status.message),
        "the status message is the start error: {status:?} vs {err:#}"
    );
    assert_ne!(status.exit_code, 0);
    cri.remove_pod(&pod).await.expect("remove pod");
    assert!(
        eventually(Duration::from_secs(10), || shim_processes(&pod.id)
            .is_empty())
        .await,
        "shim left running after a failed start"
    );
    assert_eq!(mounts_mentioning(&id), Vec::<String>::new());
    status.message
}

pub fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A CRI client over containerd's socket, as the kubelet has.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    /// How often `wait_exited` polls ContainerStatus.
    pub poll: Duration,
}

impl Cri {
    pub async fn connect(socket: &Path) -> Result<Cri> {
        let socket = socket.to_path_buf();
        let channel =
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .context("connecting to containerd's CRI socket")?;
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            poll: Duration::from_millis(20),
        })
    }

    /// PullImage, as the kubelet does before creating a container; the image reference.
    pub async fn pull(&mut self, image: &str) -> Result<String> {
        let resp = self
            .images
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .with_context(|| format!("PullImage {image}"))?;
        Ok(resp.into_inner().image_ref)
    }

    /// RunPodSandbox on the host network (no CNI), as a kubelet would for `hostNetwork: true`.
    pub async fn run_pod(&mut self, bed: &Bed, name: &str, handler: &str) -> Result<Pod> {
        self.run_pod_in(bed, name, handler, "").await
    }

    /// RunPodSandbox on the pod network: its own network namespace and an address from the
    /// test bed's CNI bridge, as for an ordinary pod.
    pub async fn run_pod_networked(&mut self, bed: &Bed, name: &str, handler: &str) -> Result<Pod> {
        self.run_pod_with(bed, name, handler, "", NamespaceMode::Pod, &[])
            .await
    }

    /// RunPodSandbox on the host network with the pod's annotations (`metadata.annotations`,
    /// which the kubelet passes to CRI as they are).
    pub async fn run_pod_annotated(
        &mut self,
        bed: &Bed,
        name: &str,
        handler: &str,
        annotations: &[(&str, &str)],
    ) -> Result<Pod> {
        self.run_pod_with(bed, name, handler, "", NamespaceMode::Node, annotations)
            .await
    }

    /// The pod's IP address on the pod network (PodSandboxStatus).
    pub async fn pod_ip(&mut self, pod: &Pod) -> Result<String> {
        let status = self
            .runtime
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner()
            .status
            .context("no sandbox status")?;
        let ip = status
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .context("the pod has no IP")?;
        Ok(ip)
    }

    /// RunPodSandbox with the given cgroup parent (what the kubelet passes as the pod cgroup).
    pub async fn run_pod_in(
        &mut self,
        bed: &Bed,
        name: &str,
        handler: &str,
        cgroup_parent: &str,
    ) -> Result<Pod> {
        self.run_pod_with(bed, name, handler, cgroup_parent, NamespaceMode::Node, &[])
            .await
    }

    async fn run_pod_with(
        &mut self,
        bed: &Bed,
        name: &str,
        handler: &str,
        cgroup_parent: &str,
        network: NamespaceMode,
        annotations: &[(&str, &str)],
    ) -> Result<Pod> {
        let uid = unique(name);
        let log_dir = bed.scratch(&format!("logs-{name}"));
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: "wasmpod-e2e".into(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: network as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                cgroup_parent: cgroup_parent.to_string(),
                ..Default::default()
            }),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let id = self
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_string(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            config,
            log_dir,
        })
    }

    pub async fn create(&mut self, pod: &Pod, c: ContainerSpec) -> Result<String> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: c.name.clone(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: c.image.clone(),
                ..Default::default()
            }),
            command: c.command.clone(),
            args: c.args.clone(),
            envs: c
                .env
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts: c
                .mounts
                .iter()
                .map(|(host, container, ro)| Mount {
                    host_path: host.to_string_lossy().into_owned(),
                    container_path: container.clone(),
                    readonly: *ro,
                    ..Default::default()
                })
                .chain(c.image_mounts.iter().map(|(image, container)| Mount {
                    container_path: container.clone(),
                    readonly: true,
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }))
                .collect(),
            log_path: format!("{}.log", c.name),
            stdin: c.stdin,
            linux: Some(LinuxContainerConfig {
                resources: c.resources.map(Resources::to_cri),
                security_context: c.run_as.map(|(uid, gid)| LinuxContainerSecurityContext {
                    run_as_user: Some(Int64Value { value: uid }),
                    run_as_group: Some(Int64Value { value: gid }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let resp = self
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await?;
        Ok(resp.into_inner().container_id)
    }

    pub async fn start(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .context("StartContainer")?;
        Ok(())
    }

    /// Create then start; the container id.
    pub async fn run(&mut self, pod: &Pod, c: ContainerSpec) -> Result<String> {
        let id = self.create(pod, c).await.context("CreateContainer")?;
        self.start(&id).await?;
        Ok(id)
    }

    pub async fn status(&mut self, id: &str) -> Result<ContainerStatus> {
        self.runtime
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?
            .into_inner()
            .status
            .context("no status")
    }

    /// Polls ContainerStatus, as the kubelet's PLEG does, until the container has exited.
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> Result<ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id).await?;
            if s.state == ContainerState::ContainerExited as i32 {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("container {id} did not exit within {timeout:?}: {s:?}");
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    pub async fn stop(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        self.runtime
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_s,
            })
            .await
            .context("StopContainer")?;
        Ok(())
    }

    /// UpdateContainerResources, as the kubelet does for an in-place pod resize.
    pub async fn update(&mut self, id: &str, r: Resources) -> Result<()> {
        self.runtime
            .update_container_resources(UpdateContainerResourcesRequest {
                container_id: id.to_string(),
                linux: Some(r.to_cri()),
                ..Default::default()
            })
            .await
            .context("UpdateContainerResources")?;
        Ok(())
    }

    /// ContainerStats (`kubectl top`'s source) of one container.
    pub async fn stats(&mut self, id: &str) -> Result<ContainerStats> {
        self.runtime
            .container_stats(ContainerStatsRequest {
                container_id: id.to_string(),
            })
            .await
            .context("ContainerStats")?
            .into_inner()
            .stats
            .context("no stats")
    }

    /// The container's total CPU time in nanoseconds, from ContainerStats.
    pub async fn cpu_ns(&mut self, id: &str) -> Result<u64> {
        Ok(self
            .stats(id)
            .await?
            .cpu
            .and_then(|c| c.usage_core_nano_seconds)
            .map(|v| v.value)
            .unwrap_or(0))
    }

    /// The container's memory in bytes (its working set), from ContainerStats.
    pub async fn memory_bytes(&mut self, id: &str) -> Result<u64> {
        Ok(self
            .stats(id)
            .await?
            .memory
            .and_then(|m| m.working_set_bytes)
            .map(|v| v.value)
            .unwrap_or(0))
    }

    /// Cores the container used over `window`, from two ContainerStats readings.
    pub async fn cpu_share(&mut self, ids: &[&str], window: Duration) -> Result<Vec<f64>> {
        let mut before = Vec::new();
        for id in ids {
            before.push(self.cpu_ns(id).await?);
        }
        let t = Instant::now();
        tokio::time::sleep(window).await;
        let wall = t.elapsed().as_nanos() as f64;
        let mut out = Vec::new();
        for (id, b) in ids.iter().zip(before) {
            out.push((self.cpu_ns(id).await? - b) as f64 / wall);
        }
        Ok(out)
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet does when a pod is deleted.
    /// ExecSync, as `kubectl exec` without stdin does through the kubelet: (exit code, stdout,
    /// stderr), or the error containerd answered with.
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<(i32, String, String)> {
        let resp = self
            .runtime
            .exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|c| c.to_string()).collect(),
                timeout: timeout_s,
            })
            .await
            .map_err(|s| anyhow::anyhow!("ExecSync {cmd:?}: {}", s.message()))?
            .into_inner();
        Ok((
            resp.exit_code,
            String::from_utf8_lossy(&resp.stdout).into_owned(),
            String::from_utf8_lossy(&resp.stderr).into_owned(),
        ))
    }

    pub async fn remove_pod(&mut self, pod: &Pod) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .context("StopPodSandbox")?;
        self.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .context("RemovePodSandbox")?;
        Ok(())
    }
}

/// What a test wants of one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// (host path, container path, read-only)
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Image volumes: (image, container path), mounted read-only as the kubelet asks for a
    /// pod's `volumes[].image` (containerd 2.1 and later).
    pub image_mounts: Vec<(String, String)>,
    /// Limits as the kubelet sets them.
    pub resources: Option<Resources>,
    /// `stdin: true`: containerd gives the container a stdin FIFO and holds it open.
    pub stdin: bool,
    /// `securityContext.runAsUser` and `runAsGroup`.
    pub run_as: Option<(i64, i64)>,
}

/// A container's `resources.limits`, in the form the kubelet passes to CRI.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub memory_bytes: i64,
    /// `limits.cpu` in millicores (0: none).
    pub cpu_millis: i64,
    /// `requests.cpu` in millicores (0: none, then the limit counts as the request).
    pub cpu_request_millis: i64,
}

impl Resources {
    pub fn to_cri(self) -> LinuxContainerResources {
        LinuxContainerResources {
            memory_limit_in_bytes: self.memory_bytes,
            cpu_period: if self.cpu_millis > 0 { 100_000 } else { 0 },
            cpu_quota: self.cpu_millis * 100,
            // As the kubelet computes them: requests (or the limit) in 1024ths of a core,
            // and the minimum, 2, for containers that request nothing.
            cpu_shares: match (self.cpu_request_millis, self.cpu_millis) {
                (r, _) if r > 0 => (r * 1024 / 1000).max(2),
                (_, l) if l > 0 => (l * 1024 / 1000).max(2),
                _ => 2,
            },
            ..Default::default()
        }
    }
}

impl ContainerSpec {
    /// A container of the workloads image running `/<module>.wasm` with `args`.
    pub fn wasm(name: &str, module: &str, args: &[&str]) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: WORKLOADS.into(),
            command: vec![format!("/{module}")],
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
    pub log_dir: PathBuf,
}

impl Pod {
    /// The container's CRI log (what `kubectl logs` reads), as (stream, line) pairs.
    pub fn log(&self, container: &str) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.log_dir.join(format!("{container}.log")))
            .unwrap_or_default();
        parse_cri_log(&text)
    }

    pub fn log_text(&self, container: &str) -> String {
        self.log(container)
            .into_iter()
            .map(|(_, l)| l)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the container's log has a line containing `needle`.
    pub async fn wait_log(&self, container: &str, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log_text(container).contains(needle) {
            if Instant::now() > deadline {
                bail!(
                    "log of {container} has no {needle:?} after {timeout:?}: {:?}",
                    self.log_text(container)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Parses the CRI log format: `<RFC3339 time> <stdout|stderr> <P|F> <text>`, joining partial
/// lines.
pub fn parse_cri_log(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut partial: Option<(String, String)> = None;
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, stream, tag, msg) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("F"),
            parts.next().unwrap_or(""),
        );
        let (s, mut acc) = partial
            .take()
            .unwrap_or((stream.to_string(), String::new()));
        acc.push_str(msg);
        if tag == "P" {
            partial = Some((s, acc));
        } else {
            out.push((s, acc));
        }
    }
    out
}

/// Waits up to 10 s for the shim of pod `id` to exit (a shim ends with its pod), or panics
/// naming what still runs.
pub async fn assert_shim_gone(id: &str) {
    assert!(
        eventually(Duration::from_secs(10), || shim_processes(id).is_empty()).await,
        "shim left running: {:?}",
        shim_processes(id)
    );
}

/// Processes of our shims (either host) whose command line names this id (`-id <id>`).
pub fn shim_processes(id: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| {
            a.ends_with("containerd-shim-wasmtime-v1")
                || a.ends_with("containerd-shim-wasmtime-isolated-v1")
        });
        if is_shim && args.windows(2).any(|w| w[0] == "-id" && w[1] == id) {
            pids.push(pid);
        }
    }
    pids
}

/// A pod cgroup with a memory limit, made before RunPodSandbox as the kubelet makes one (the
/// limit is the sum of the containers' plus the RuntimeClass overhead). Removed on drop, once
/// the pod's shim has left it.
pub struct LimitedPodCgroup {
    /// The cgroup parent to give RunPodSandbox.
    pub parent: String,
    dir: PathBuf,
}

impl LimitedPodCgroup {
    pub fn new(name: &str, memory_bytes: u64) -> Self {
        let parent = format!("/wasmpod-e2e/{}", unique(name));
        let (root, limit_file) = if Path::new("/sys/fs/cgroup/memory").is_dir() {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        } else {
            ("/sys/fs/cgroup", "memory.max")
        };
        let dir = Path::new(root).join(parent.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let cgroup = LimitedPodCgroup { parent, dir };
        std::fs::write(cgroup.dir.join(limit_file), memory_bytes.to_string())
            .unwrap_or_else(|e| panic!("{}/{limit_file}: {e}", cgroup.dir.display()));
        cgroup
    }

    /// The memory charged to the pod's cgroup now and at its peak, in bytes.
    pub fn memory_usage(&self) -> Result<(u64, u64)> {
        let read = |names: [&str; 2]| -> Result<u64> {
            let file = names
                .iter()
                .map(|n| self.dir.join(n))
                .find(|p| p.exists())
                .with_context(|| format!("none of {names:?} in {}", self.dir.display()))?;
            Ok(std::fs::read_to_string(&file)?.trim().parse()?)
        };
        Ok((
            read(["memory.usage_in_bytes", "memory.current"])?,
            read(["memory.max_usage_in_bytes", "memory.peak"])?,
        ))
    }
}

impl Drop for LimitedPodCgroup {
    fn drop(&mut self) {
        for dir in [self.dir.as_path(), self.dir.parent().unwrap_or(&self.dir)] {
            // The shared parent stays while another test's pod uses it.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Processes whose cgroup (any hierarchy) mentions `id`: what is left of a container.
pub fn processes_in_cgroups_mentioning(id: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cgroup = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
            cgroup.contains(id).then_some(pid)
        })
        .collect()
}

/// Mount points whose path mentions `id`.
pub fn mounts_mentioning(id: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(id))
        .map(str::to_string)
        .collect()
}

/// Cgroup directories named after `id`, in v1 hierarchies or the v2 tree.
pub fn cgroups_mentioning(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if e.file_name().to_string_lossy().contains(id) {
                found.push(p);
            } else if p.components().count() < 8 {
                stack.push(p);
            }
        }
    }
    found
}

/// Polls `check` until it returns true or the timeout passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The hex sha256 of bytes, as in OCI digests and containerd's content store paths.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_are_parsed_and_partials_joined() {
        let text = "2026-01-01T00:00:00.1Z stdout P hel\n\
                    2026-01-01T00:00:00.2Z stdout F lo\n\
                    2026-01-01T00:00:00.3Z stderr F oops\n";
        assert_eq!(
            parse_cri_log(text),
            vec![
                ("stdout".to_string(), "hello".to_string()),
                ("stderr".to_string(), "oops".to_string())
            ]
        );
    }
}
