//! `wasmpod-installer`: see `wasmpod-installer --help`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::{error, info};

use wasmpod_installer::config::ConfigVersion;
use wasmpod_installer::install::{reconcile_label, verify_and_label, Installer};
use wasmpod_installer::node::{KubeNodes, Nodes};
use wasmpod_installer::restart::{HostSystemd, Restarter, ShellRestarter};
use wasmpod_installer::verify::{CriVerifier, Verifier};
use wasmpod_installer::{
    manifests, runtimeclass, verify, DEFAULT_BIN_DIR, DEFAULT_HANDLERS, DEFAULT_STATE_DIR,
    HANDLERS, ISOLATED_SHIM_BINARY, SHIM_BINARY,
};

const ABOUT: &str = "Installs wasmpod's containerd shims on a Kubernetes node";
const LONG_ABOUT: &str = "\
Installs wasmpod's containerd shims (containerd-shim-wasmtime-v1, and
containerd-shim-wasmtime-isolated-v1 for `wasmtime-isolated`) on a Kubernetes node, registers
the runtime handlers `wasmtime` and `wasmtime-isolated` in containerd's config, restarts
containerd only if the config changed, verifies the handlers through containerd's CRI, and only
then labels the node wasmpod.dev/wasmtime=ready (the RuntimeClasses schedule on that label).

Usually run by the Helm chart's DaemonSet (charts/wasmpod) with the host's root at /host:
  helm install wasmpod charts/wasmpod -n wasmpod --create-namespace     # install
  helm upgrade wasmpod charts/wasmpod -n wasmpod                        # upgrade: the shim is
      swapped atomically; containerd is restarted only if its config has to change
  # uninstall: each installer removes its node's label first, then takes wasmpod's runtimes
  # out of containerd's config (the original byte for byte if nobody else changed it since),
  # removes the shim and restarts containerd:
  helm upgrade wasmpod charts/wasmpod -n wasmpod --reuse-values --set installer.uninstallOnStop=true --wait
  helm upgrade wasmpod charts/wasmpod -n wasmpod --reuse-values --set installer.enabled=false
  kubectl -n wasmpod wait --for=delete pod -l app.kubernetes.io/component=installer --timeout=300s
  helm uninstall wasmpod -n wasmpod

Where the config lives (detected under --host-root):
  kind, kubeadm, EKS, AKS  /etc/containerd/config.toml (version 2 = containerd 1.6/1.7,
                           version 3 = containerd 2.x, version 4 = `containerd config
                           default` of 2.3+; created if missing)
  k3s                      .../config-v3.toml.d/wasmpod.toml where k3s's config imports that
                           directory, else /var/lib/rancher/k3s/agent/etc/containerd/config[-v3].toml.tmpl,
                           built on {{ template \"base\" . }}; refuses k3s's own `wasmtime`
                           handler (io.containerd.wasmtime.v2 runs containerd-shim-wasmtime-v2,
                           never wasmpod's shim)
  RKE2                     /var/lib/rancher/rke2/agent/etc/containerd/config[-v3].toml.tmpl;
                           restarts whichever of rke2-server/rke2-agent is active
  k0s                      /etc/k0s/containerd.d/wasmpod.toml (a drop-in, version 2 or 3 as
                           /var/lib/k0s/bin/containerd --version says); k0s reloads
                           containerd itself, nothing is restarted
  MicroK8s                 /var/snap/microk8s/current/args/containerd-template.toml
kind: load the image (kind load docker-image) and pin the node image (config version 2 or 3).
k3s: delete k3s' own `wasmtime` RuntimeClass (or --disable=runtimes) before the chart.
charts/wasmpod/README.md has the details for each distribution.
Immutable hosts (Talos, Bottlerocket, Container-Optimized OS) and read-only bin dirs are refused
with guidance, changing nothing; so is a `wasmtime`/`wasmtime-isolated` runtime another project
registered (unless --take-over-handlers). If containerd does not serve the handlers after the
restart, the previous config goes back and containerd is restarted on it. Runs on one node
take turns (a lock next to --state-dir).

By hand on a node (as root):
  wasmpod-installer install --shim ./containerd-shim-wasmtime-v1 \\
      --isolated-shim ./containerd-shim-wasmtime-isolated-v1 --skip-label
  wasmpod-installer status
  wasmpod-installer uninstall --skip-label";

#[derive(Parser)]
#[command(name = "wasmpod-installer", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the shim, configure containerd, verify, label the node.
    Install(NodeArgs),
    /// Remove the node label, take wasmpod's runtimes out of the config, remove the shim, restart.
    Uninstall(NodeArgs),
    /// Report what is installed (JSON).
    Status(NodeArgs),
    /// Install, then keep the node label true while running; on SIGTERM remove the label
    /// (and uninstall with --uninstall-on-stop). What the chart's DaemonSet runs.
    Run {
        #[command(flatten)]
        node: NodeArgs,
        /// Seconds between handler checks.
        #[arg(long, default_value_t = 30)]
        interval: u64,
        /// Uninstall completely on SIGTERM (set before `helm uninstall`).
        #[arg(long, env = "WASMPOD_UNINSTALL_ON_STOP")]
        uninstall_on_stop: bool,
    },
    /// Check through containerd's CRI that the runtime handlers are registered.
    Verify(NodeArgs),
    /// Print the RuntimeClass objects (YAML).
    Runtimeclass {
        /// Handlers to create RuntimeClasses for.
        #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_HANDLERS.map(String::from))]
        handlers: Vec<String>,
        /// A toleration, `key[=value]:Effect` (repeatable); `*` tolerates every taint.
        #[arg(long = "toleration")]
        tolerations: Vec<String>,
        /// overhead.podFixed.cpu (e.g. 10m).
        #[arg(long)]
        overhead_cpu: Option<String>,
        /// overhead.podFixed.memory (e.g. 4Mi).
        #[arg(long)]
        overhead_memory: Option<String>,
    },
    /// Check rendered manifests: each object must parse into its k8s-openapi type unchanged.
    #[command(hide = true)]
    CheckManifests { files: Vec<PathBuf> },
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// The host's root filesystem as this process sees it.
    #[arg(long, env = "WASMPOD_HOST_ROOT", default_value = "/")]
    host_root: PathBuf,
    /// Host directory for the shim.
    #[arg(long, env = "WASMPOD_BIN_DIR", default_value = DEFAULT_BIN_DIR)]
    bin_dir: PathBuf,
    /// Host directory for backups and the install record.
    #[arg(long, env = "WASMPOD_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The shim to install [default: containerd-shim-wasmtime-v1 next to this binary].
    #[arg(long, env = "WASMPOD_SHIM")]
    shim: Option<PathBuf>,
    /// The isolated host's shim, installed with the `wasmtime-isolated` handler
    /// [default: containerd-shim-wasmtime-isolated-v1 next to this binary].
    #[arg(long, env = "WASMPOD_ISOLATED_SHIM")]
    isolated_shim: Option<PathBuf>,
    /// Host path of containerd's config, instead of detecting the distribution.
    #[arg(long, env = "WASMPOD_CONTAINERD_CONFIG")]
    containerd_config: Option<PathBuf>,
    /// Config version to write where no file says (2: containerd 1.x, 3: containerd 2.x,
    /// 4: containerd 2.3 and later, which read 3 too)
    /// [default: ask containerd].
    #[arg(long, value_enum)]
    config_version: Option<Version>,
    /// containerd's socket as this process sees it [default: the distribution's, under --host-root].
    #[arg(long, env = "WASMPOD_CONTAINERD_ADDRESS")]
    containerd_address: Option<PathBuf>,
    /// Do not restart containerd (tests, or when you restart it yourself).
    #[arg(long)]
    no_restart: bool,
    /// Restart containerd with this shell command instead of systemctl ($UNIT is set).
    #[arg(long, env = "WASMPOD_RESTART_COMMAND")]
    restart_command: Option<String>,
    /// A process in the host's namespaces, entered to run systemctl or --restart-command on
    /// the host from a container (with hostPID). PID 1 on every node.
    #[arg(long, env = "WASMPOD_HOST_PID", default_value_t = 1)]
    host_pid: u32,
    /// Do not verify through the CRI nor touch the node label (no Kubernetes API).
    #[arg(long)]
    skip_label: bool,
    /// Verify the handlers through the CRI even with --skip-label.
    #[arg(long)]
    verify: bool,
    /// This node's name (the chart passes it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Handlers to register.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_HANDLERS.map(String::from))]
    handlers: Vec<String>,
    /// Seconds to wait for containerd to show the handlers.
    #[arg(long, default_value_t = 60)]
    verify_timeout: u64,
    /// Replace a `wasmtime` or `wasmtime-isolated` runtime that another project registered in
    /// containerd's config with wasmpod's, instead of refusing; uninstall puts it back.
    #[arg(long, env = "WASMPOD_TAKE_OVER_HANDLERS")]
    take_over_handlers: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Version {
    #[value(name = "2")]
    V2,
    #[value(name = "3")]
    V3,
    #[value(name = "4")]
    V4,
}

impl NodeArgs {
    fn installer(&self) -> Result<Installer> {
        let beside_me = |binary: &str| -> Result<PathBuf> {
            Ok(std::env::current_exe()
                .context("locating this binary")?
                .with_file_name(binary))
        };
        let shim = match &self.shim {
            Some(s) => s.clone(),
            None => beside_me(SHIM_BINARY)?,
        };
        let isolated_shim = match &self.isolated_shim {
            Some(s) => s.clone(),
            None => beside_me(ISOLATED_SHIM_BINARY)?,
        };
        for h in &self.handlers {
            if !HANDLERS.contains(&h.as_str()) {
                bail!("unknown handler {h:?}: wasmpod's handlers are {HANDLERS:?}");
            }
        }
        let restarter: Box<dyn Restarter> = match &self.restart_command {
            Some(c) => Box::new(ShellRestarter(c.clone(), self.host_pid)),
            None => Box::new(HostSystemd(self.host_pid)),
        };
        Ok(Installer {
            host_root: self.host_root.clone(),
            bin_dir: self.bin_dir.clone(),
            state_dir: self.state_dir.clone(),
            shim_source: shim,
            isolated_shim_source: isolated_shim,
            config_override: self.containerd_config.clone(),
            config_version: self.config_version.map(|v| match v {
                Version::V2 => ConfigVersion::V2,
                Version::V3 => ConfigVersion::V3,
                Version::V4 => ConfigVersion::V4,
            }),
            socket: self.containerd_address.clone(),
            handlers: self.handlers.clone(),
            restart: !self.no_restart,
            restarter,
            // The same check that gates the label also decides, right after a restart,
            // whether the new config stays.
            verifier: (!self.skip_label || self.verify).then(|| {
                Box::new(CriVerifier {
                    timeout: Duration::from_secs(self.verify_timeout),
                }) as Box<dyn Verifier>
            }),
            take_over_handlers: self.take_over_handlers,
        })
    }

    fn node(&self) -> Result<String> {
        self.node_name.clone().context(
            "the node name is needed to label it: pass --node-name or NODE_NAME (or --skip-label)",
        )
    }
}

#[tracing::instrument(skip_all)]
async fn install(args: &NodeArgs, inst: &Installer) -> Result<Option<(KubeNodes, String)>> {
    let report = inst.install().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let socket = inst.socket(&inst.layout());
    let timeout = Duration::from_secs(args.verify_timeout);
    if args.skip_label {
        if args.verify {
            verify::wait_for_handlers(&socket, &args.handlers, timeout).await?;
        }
        return Ok(None);
    }
    let node = args.node()?;
    let nodes = KubeNodes::from_env().await?;
    verify_and_label(&socket, &args.handlers, &nodes, &node, timeout).await?;
    info!(node, "node labeled wasmpod.dev/wasmtime=ready");
    Ok(Some((nodes, node)))
}

#[tracing::instrument(skip_all)]
async fn uninstall(args: &NodeArgs, inst: &Installer, nodes: Option<&dyn Nodes>) -> Result<()> {
    if !args.skip_label {
        let node = args.node()?;
        match nodes {
            Some(n) => n.set_ready(&node, false).await?,
            None => KubeNodes::from_env().await?.set_ready(&node, false).await?,
        }
        info!(node, "node label removed");
    }
    let report = inst.uninstall().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

#[tracing::instrument(skip_all)]
async fn run(args: &NodeArgs, interval: u64, uninstall_on_stop: bool) -> Result<()> {
    if args.skip_label {
        bail!("`run` keeps the node label: it cannot run with --skip-label");
    }
    // Registered first: as a container's PID 1 this process would otherwise ignore a SIGTERM
    // that arrives during the install, and be killed only at the end of the grace period.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let inst = args.installer()?;
    let Some((nodes, node)) = install(args, &inst).await? else {
        bail!("`run` keeps the node label: it cannot run with --skip-label");
    };
    let socket = inst.socket(&inst.layout());
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(interval)) => {}
        }
        if let Err(e) = reconcile_label(&socket, &args.handlers, &nodes, &node).await {
            error!(error = %e, "cannot check or update the node label");
        }
    }
    info!("stopping: removing the node label");
    if uninstall_on_stop {
        uninstall(args, &inst, Some(&nodes)).await
    } else {
        nodes.set_ready(&node, false).await?;
        info!("the shim and the containerd config stay for the next installer pod");
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Install(a) => {
            install(&a, &a.installer()?).await?;
        }
        Cmd::Uninstall(a) => uninstall(&a, &a.installer()?, None).await?,
        Cmd::Status(a) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&a.installer()?.status()?)?
            )
        }
        Cmd::Run {
            node,
            interval,
            uninstall_on_stop,
        } => run(&node, interval, uninstall_on_stop).await?,
        Cmd::Verify(a) => {
            let inst = a.installer()?;
            let socket = inst.socket(&inst.layout());
            let present = verify::wait_for_handlers(
                &socket,
                &a.handlers,
                Duration::from_secs(a.verify_timeout),
            )
            .await?;
            println!("verified {:?} (containerd has {present:?})", a.handlers);
        }
        Cmd::Runtimeclass {
            handlers,
            tolerations,
            overhead_cpu,
            overhead_memory,
        } => {
            let opts = runtimeclass::Options {
                handlers,
                tolerations: tolerations
                    .iter()
                    .map(|t| runtimeclass::parse_toleration(t))
                    .collect::<Result<_, _>>()?,
                overhead_cpu,
                overhead_memory,
            };
            print!("{}", runtimeclass::to_yaml(&runtimeclass::build(&opts))?);
        }
        Cmd::CheckManifests { files } => {
            for f in files {
                let text = std::fs::read_to_string(&f).with_context(|| f.display().to_string())?;
                for (kind, name) in
                    manifests::check(&text).with_context(|| f.display().to_string())?
                {
                    println!("ok {} {kind}/{name}", f.display());
                }
            }
        }
    }
    Ok(())
}
