//! Which distribution keeps containerd's config where, and hosts wasmpod refuses.

use std::path::{Path, PathBuf};

use crate::{host_path, Error, Result};

/// The distributions wasmpod knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distro {
    /// containerd configured in `/etc/containerd/config.toml` (kubeadm, kind, EKS, AKS, …).
    Containerd,
    K3s,
    Rke2,
    K0s,
    MicroK8s,
}

/// How wasmpod changes the distribution's containerd configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TOML file edited in place (containerd's `config.toml`, MicroK8s' template). It may
    /// be missing: containerd then runs on its defaults and wasmpod creates it.
    TomlFile(PathBuf),
    /// A k3s/RKE2 Go template built on `{{ template "base" . }}`; `generated` is the
    /// config.toml the distribution renders from it (read for its version, runc's options
    /// and its own handlers).
    Template { path: PathBuf, generated: PathBuf },
    /// A file of wasmpod's own in a drop-in directory (k0s), with `main` the generated
    /// config it is merged into and `containerd` the binary the distribution runs (asked for
    /// its version, which decides the drop-in's config version).
    DropIn {
        path: PathBuf,
        main: PathBuf,
        containerd: PathBuf,
    },
}

impl Target {
    /// The host path wasmpod writes.
    pub fn path(&self) -> &Path {
        match self {
            Target::TomlFile(p) => p,
            Target::Template { path, .. } | Target::DropIn { path, .. } => path,
        }
    }
}

impl Distro {
    /// Whether the distribution reloads containerd by itself when wasmpod's file changes, so
    /// that the installer must not restart anything.
    pub fn reloads_containerd_itself(self) -> bool {
        self == Distro::K0s
    }
}

/// Where a distribution keeps things; all paths are host paths (absolute, without the host root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub distro: Distro,
    pub target: Target,
    /// The systemd units that may run containerd (those installed on the host, or all
    /// candidates when none is found); of several, the active one is restarted.
    pub services: Vec<String>,
    /// containerd's socket.
    pub socket: PathBuf,
}

pub const K3S_DIR: &str = "/var/lib/rancher/k3s/agent/etc/containerd";
pub const RKE2_DIR: &str = "/var/lib/rancher/rke2/agent/etc/containerd";
pub const MICROK8S_TEMPLATE: &str = "/var/snap/microk8s/current/args/containerd-template.toml";
pub const K0S_CONFIG: &str = "/etc/k0s/containerd.toml";
pub const K0S_DROPIN: &str = "/etc/k0s/containerd.d/wasmpod.toml";
/// The containerd k0s stages from its own bundle and runs.
pub const K0S_CONTAINERD: &str = "/var/lib/k0s/bin/containerd";
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// Refuses hosts whose OS is immutable (from `/etc/os-release`).
pub fn check_mutable(host_root: &Path) -> Result<()> {
    let text = std::fs::read_to_string(host_path(host_root, "/etc/os-release")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let id = field("ID").unwrap_or_default();
    let guidance = match id.as_str() {
        "talos" => {
            "On Talos, add the shim with a system extension and the runtime with a machine \
             config patch (/etc/cri/conf.d); then label the node wasmpod.dev/wasmtime=ready and \
             install the chart with installer.enabled=false."
        }
        "bottlerocket" => {
            "On Bottlerocket, use a variant or bootstrap container that ships the shim, and add \
             the runtime through its settings API; then label the node \
             wasmpod.dev/wasmtime=ready and install the chart with installer.enabled=false."
        }
        "cos" => {
            "On Container-Optimized OS /opt and /etc are read-only or reset on boot: run Wasm \
             pods on a node pool with a mutable image (e.g. Ubuntu with containerd), or bake the \
             shim and config into the node image."
        }
        _ => return Ok(()),
    };
    Err(Error::ImmutableHost {
        os: field("PRETTY_NAME").unwrap_or(id),
        guidance: guidance.into(),
    })
}

fn installed_units(host_root: &Path, units: &[&str]) -> Vec<String> {
    let exists = |u: &str| {
        [
            "/etc/systemd/system",
            // where RKE2's tarball install (INSTALL_RKE2_TAR_PREFIX=/usr/local) puts its units
            "/usr/local/lib/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ]
        .iter()
        .any(|d| host_path(host_root, format!("{d}/{u}.service")).exists())
    };
    let mut v: Vec<String> = units
        .iter()
        .filter(|u| exists(u))
        .map(|u| u.to_string())
        .collect();
    if v.is_empty() {
        v = units.iter().map(|u| u.to_string()).collect();
    }
    v
}

/// Finds the layout of the host under `host_root`. `config_override` names containerd's config
/// explicitly (a containerd started with `--config`), skipping detection.
pub fn detect(host_root: &Path, config_override: Option<&Path>) -> Layout {
    let exists = |p: &str| host_path(host_root, p).exists();
    if let Some(path) = config_override {
        return Layout {
            distro: Distro::Containerd,
            target: Target::TomlFile(path.to_path_buf()),
            services: vec!["containerd".into()],
            socket: "/run/containerd/containerd.sock".into(),
        };
    }
    for (distro, dir, units) in [
        (Distro::K3s, K3S_DIR, ["k3s", "k3s-agent"]),
        (Distro::Rke2, RKE2_DIR, ["rke2-server", "rke2-agent"]),
    ] {
        if exists(dir) {
            let dirp = PathBuf::from(dir);
            return Layout {
                distro,
                // The template name depends on the config version, settled by the installer.
                target: Target::Template {
                    path: dirp.join("config.toml.tmpl"),
                    generated: dirp.join("config.toml"),
                },
                services: installed_units(host_root, &units),
                socket: "/run/k3s/containerd/containerd.sock".into(),
            };
        }
    }
    if exists(MICROK8S_TEMPLATE) {
        return Layout {
            distro: Distro::MicroK8s,
            target: Target::TomlFile(MICROK8S_TEMPLATE.into()),
            services: vec!["snap.microk8s.daemon-containerd".into()],
            socket: "/var/snap/microk8s/common/run/containerd.sock".into(),
        };
    }
    if exists("/etc/k0s") {
        return Layout {
            distro: Distro::K0s,
            target: Target::DropIn {
                path: K0S_DROPIN.into(),
                main: K0S_CONFIG.into(),
                containerd: K0S_CONTAINERD.into(),
            },
            // k0s watches its drop-in directory and reloads containerd itself; restarting
            // k0scontroller would take the control plane down with it.
            services: Vec::new(),
            socket: "/run/k0s/containerd.sock".into(),
        };
    }
    Layout {
        distro: Distro::Containerd,
        target: Target::TomlFile(CONTAINERD_CONFIG.into()),
        services: vec!["containerd".into()],
        socket: "/run/containerd/containerd.sock".into(),
    }
}

/// Refuses a directory (or, if it does not exist yet, its nearest existing ancestor) that
/// cannot be written, by creating and removing a probe file. Root ignores permission bits,
/// so this is the only reliable test for read-only mounts and immutable directories.
pub fn check_writable(dir: &Path) -> Result<()> {
    let mut d = dir;
    loop {
        match std::fs::metadata(d) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(Error::ReadOnly {
                    path: dir.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", d.display()),
                    ),
                })
            }
            Err(_) => match d.parent() {
                Some(p) => d = p,
                None => break,
            },
        }
    }
    let probe = d.join(format!(".wasmpod-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(Error::ReadOnly {
            path: dir.to_path_buf(),
            source,
        }),
    }
}
