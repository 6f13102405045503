//! install / uninstall / status: everything is planned (read, parsed, decided) before the
//! first write, so a refusal changes nothing on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml_edit::DocumentMut;
use tracing::{error, info, warn};

use crate::config::{self, ConfigVersion, RuntimeSettings};
use crate::distro::{self, Distro, Layout, Target};
use crate::lock::NodeLock;
use crate::node::Nodes;
use crate::restart::Restarter;
use crate::shim::{self, digest, write_atomic};
use crate::verify::Verifier;
use crate::{
    host_path, io_err, verify, Error, Result, HANDLER, HANDLER_ISOLATED, ISOLATED_SHIM_BINARY,
    SHIM_BINARY,
};

/// The first lines of a `config.toml` wasmpod creates (there was none).
const CREATED_HEADER: &str = "# Written by wasmpod-installer: this file did not exist, so \
                              containerd ran on its defaults.\n# `wasmpod-installer \
                              uninstall` removes it again.\n";
/// The first lines of wasmpod's k0s drop-in.
const DROP_IN_HEADER: &str = "# Written by wasmpod-installer (k0s merges this drop-in into its \
                              containerd config).\n# `wasmpod-installer uninstall` removes it.\n";

/// The first lines of wasmpod's drop-in in k3s/RKE2's containerd drop-in directory.
const K3S_DROP_IN_HEADER: &str = "# Written by wasmpod-installer (k3s/RKE2's containerd config \
                                  imports this directory's drop-ins).\n# `wasmpod-installer \
                                  uninstall` removes it.\n";
/// Its name.
const K3S_DROP_IN_NAME: &str = "wasmpod.toml";
/// The line by which k0s knows its containerd config is its own to generate.
const K0S_MANAGED_MARKER: &str = "# k0s_managed=true";

/// Where and how to install.
pub struct Installer {
    /// The host's root as the installer sees it (`/host` in the chart's DaemonSet).
    pub host_root: PathBuf,
    /// Host path of the shim directory.
    pub bin_dir: PathBuf,
    /// Host path of wasmpod's backups and install record.
    pub state_dir: PathBuf,
    /// The pod host's shim binary to copy (a path as the installer sees it).
    pub shim_source: PathBuf,
    /// The isolated host's shim binary, copied when `wasmtime-isolated` is registered.
    pub isolated_shim_source: PathBuf,
    /// Host path of containerd's config, skipping distribution detection.
    pub config_override: Option<PathBuf>,
    /// The config version to write when the file does not say (or to insist on).
    pub config_version: Option<ConfigVersion>,
    /// containerd's socket as the installer sees it; default: the distribution's, under
    /// the host root.
    pub socket: Option<PathBuf>,
    /// The handlers to register.
    pub handlers: Vec<String>,
    /// Restart containerd when the config changed.
    pub restart: bool,
    pub restarter: Box<dyn Restarter>,
    /// Checks the handlers after a restart; when they are not served, the previous config
    /// goes back and containerd is restarted on it. `None`: no check (by hand, without
    /// `--verify`).
    pub verifier: Option<Box<dyn Verifier>>,
    /// Replace a `wasmtime`/`wasmtime-isolated` runtime of another project in the config
    /// instead of refusing (`--take-over-handlers`); uninstall puts it back.
    pub take_over_handlers: bool,
}

/// What wasmpod changed on a host, kept in `<state-dir>/state.json` for uninstall.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub distro: Distro,
    /// Host path of the file wasmpod edits or owns.
    pub config: PathBuf,
    /// Whether the file existed before install (its bytes are in the backup).
    pub original_existed: bool,
    /// sha256 of the content wasmpod wrote.
    pub written_sha256: String,
    /// sha256 of what install made of the original file. While the config still has exactly
    /// these bytes nobody else changed it, and uninstall restores the original byte for byte;
    /// otherwise it removes only wasmpod's entries. Absent in records written before it
    /// existed (`written_sha256` stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pristine_sha256: Option<String>,
    pub bin_dir: PathBuf,
    pub shim_sha256: String,
    /// The isolated host's shim, when its handler is registered (absent in records written
    /// before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated_shim_sha256: Option<String>,
    pub services: Vec<String>,
    pub handlers: Vec<String>,
}

/// What `install` or `uninstall` did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub distro: Distro,
    pub config: PathBuf,
    pub config_version: Option<ConfigVersion>,
    pub config_changed: bool,
    pub shim_changed: bool,
    pub restarted: Option<String>,
    pub handlers: Vec<String>,
}

struct Plan {
    layout: Layout,
    path: PathBuf,
    current: Option<String>,
    desired: String,
    version: ConfigVersion,
    handlers: Vec<String>,
}

fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

impl Installer {
    fn hp(&self, p: impl AsRef<Path>) -> PathBuf {
        host_path(&self.host_root, p)
    }

    fn state_file(&self) -> PathBuf {
        self.hp(self.state_dir.join("state.json"))
    }

    /// The lock that serialises installer runs on this node: next to the state directory,
    /// not in it, since uninstall removes that directory.
    pub fn lock_file(&self) -> PathBuf {
        let dir = self.hp(&self.state_dir);
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        dir.with_file_name(format!("{name}.lock"))
    }

    fn backup_file(&self, config: &Path) -> PathBuf {
        let name = config
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "%");
        self.hp(self.state_dir.join("backup").join(name))
    }

    /// containerd's socket as the installer reaches it.
    pub fn socket(&self, layout: &Layout) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.hp(&layout.socket))
    }

    pub fn layout(&self) -> Layout {
        distro::detect(&self.host_root, self.config_override.as_deref())
    }

    pub fn read_state(&self) -> Result<Option<State>> {
        let path = self.state_file();
        match read_opt(&path)? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|source| Error::Json {
                    context: format!("reading {}", path.display()),
                    source,
                }),
        }
    }

    /// The version to write when no file says: `--config-version`, else containerd's own
    /// answer over the CRI.
    async fn fallback_version(&self, layout: &Layout, path: &Path) -> Result<ConfigVersion> {
        if let Some(v) = self.config_version {
            return Ok(v);
        }
        let socket = self.socket(layout);
        match verify::containerd_version(&socket).await {
            Ok(v) => ConfigVersion::for_containerd(&v).ok_or(Error::UnknownVersion {
                path: path.to_path_buf(),
                version: format!("for containerd {v}"),
            }),
            Err(e) => {
                warn!(error = %e, "could not ask containerd for its version");
                Err(Error::VersionUnknown {
                    path: path.to_path_buf(),
                })
            }
        }
    }

    /// The version `<binary> --version` prints (`containerd <module> <version> <revision>`),
    /// run from the host root (k0s's containerd is a static binary); `None` when there is no
    /// such binary or it does not answer in time.
    async fn binary_version(&self, binary: &Path) -> Option<String> {
        let path = self.hp(binary);
        if !path.is_file() {
            return None;
        }
        let run = tokio::process::Command::new(&path)
            .arg("--version")
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(10), run).await {
            Ok(Ok(out)) if out.status.success() => {
                let v = containerd_version_of(&String::from_utf8_lossy(&out.stdout));
                if v.is_none() {
                    warn!(binary = %path.display(), "cannot read a version in what --version printed");
                }
                v
            }
            Ok(Ok(out)) => {
                warn!(binary = %path.display(), status = %out.status, "--version failed");
                None
            }
            Ok(Err(e)) => {
                warn!(binary = %path.display(), error = %e, "cannot run --version");
                None
            }
            Err(_) => {
                warn!(binary = %path.display(), "--version did not answer within 10 s");
                None
            }
        }
    }

    fn settings(&self, handlers: Vec<String>, systemd_cgroup: Option<bool>) -> RuntimeSettings {
        RuntimeSettings {
            bin_dir: self.bin_dir.to_string_lossy().into_owned(),
            systemd_cgroup,
            handlers,
        }
    }

    /// Reads and decides everything; writes nothing.
    #[tracing::instrument(skip_all)]
    async fn plan(&self) -> Result<Plan> {
        distro::check_mutable(&self.host_root)?;
        let layout = self.layout();
        info!(distro = ?layout.distro, target = %layout.target.path().display(), "detected");
        let handlers = self.handlers.clone();
        match &layout.target {
            Target::TomlFile(path) => {
                let current = read_opt(&self.hp(path))?;
                let s = self.settings(handlers.clone(), None);
                let (version, desired) = match &current {
                    Some(text) => {
                        let doc = config::parse(text, path)?;
                        let v =
                            config::agree(config::version(&doc, path)?, self.config_version, path)?;
                        let taken = self.foreign_runtimes(&doc, v, &s, path, true)?;
                        config::patch_text(text, path, self.config_version, &s, &taken)?
                    }
                    None => {
                        let v = self.fallback_version(&layout, path).await?;
                        (v, config::fresh(v, &s, CREATED_HEADER)?)
                    }
                };
                Ok(Plan {
                    path: path.clone(),
                    current,
                    desired,
                    version,
                    handlers,
                    layout,
                })
            }
            Target::Template { path, generated } => {
                let gen_text = read_opt(&self.hp(generated))?;
                let gen = gen_text
                    .as_deref()
                    .map(|t| config::parse(t, generated))
                    .transpose()?;
                let version = match &gen {
                    Some(doc) => config::agree(
                        config::version(doc, generated)?,
                        self.config_version,
                        generated,
                    )?,
                    None => self.fallback_version(&layout, generated).await?,
                };
                let systemd = gen
                    .as_ref()
                    .and_then(|d| config::systemd_cgroup(d, version));
                let dir = path.parent().unwrap_or(Path::new("/"));
                let v2_tmpl = dir.join("config.toml.tmpl");
                // Newer k3s/RKE2 render `imports` of a drop-in directory into the config
                // (config-v3.toml.d/*.toml for version 3, config.toml.d/*.toml for 2), and
                // containerd merges the drop-ins' tables into the config's: a file of
                // wasmpod's own there beats any template. An install made into the template
                // stays there (moving it is an uninstall and an install).
                let dropin_dir = dir.join(match version {
                    ConfigVersion::V2 => "config.toml.d",
                    ConfigVersion::V3 | ConfigVersion::V4 => "config-v3.toml.d",
                });
                let dropin = dropin_dir.join(K3S_DROP_IN_NAME);
                let imported = gen.as_ref().is_some_and(|d| {
                    config::imports(d)
                        .iter()
                        .any(|i| Path::new(i) == dropin_dir.join("*.toml"))
                });
                let use_dropin =
                    imported && self.read_state()?.is_none_or(|st| st.config == dropin);
                let path = match version {
                    _ if use_dropin => dropin,
                    ConfigVersion::V2 => v2_tmpl,
                    // k3s/RKE2 render version 3 from config-v3.toml.tmpl; should a release
                    // render 4, its CRI tables are named the same and the template is that one.
                    ConfigVersion::V3 | ConfigVersion::V4 => {
                        let v3 = dir.join("config-v3.toml.tmpl");
                        if !self.hp(&v3).exists() && self.hp(&v2_tmpl).exists() {
                            return Err(Error::UnsupportedTemplate {
                                path: v2_tmpl,
                                reason:
                                    "containerd 2.x reads config-v3.toml.tmpl, and creating it \
                                         would hide your config.toml.tmpl: move your changes to \
                                         config-v3.toml.tmpl (built on {{ template \"base\" . }}, \
                                         config version 3), then run the installer again"
                                        .into(),
                            });
                        }
                        v3
                    }
                };
                let current = read_opt(&self.hp(&path))?;
                // k3s/RKE2 register a `wasmtime` handler of their own when they find a
                // containerd-shim-wasmtime-v1 in /opt/kwasm/bin, /usr/bin or /usr/sbin:
                // runtime_type io.containerd.wasmtime.v2 with only options.BinaryName
                // (k3s pkg/agent/containerd/runwasi.go). containerd starts the shim that
                // runtime_type names, containerd-shim-wasmtime-v2, never BinaryName (a runc
                // option), so that handler cannot run wasmpod's shim wherever it is: adopting
                // it would register a handler that runs no wasmpod code. The template cannot
                // redefine its table either (a duplicate table is invalid TOML).
                let ours = self
                    .bin_dir
                    .join(SHIM_BINARY)
                    .to_string_lossy()
                    .into_owned();
                if let (Some(doc), true) = (&gen, handlers.iter().any(|h| h == HANDLER)) {
                    if let Some(theirs) = config::runtimes(doc, version).into_iter().find(|r| {
                        r.name == HANDLER && r.runtime_path.as_deref() != Some(ours.as_str())
                    }) {
                        return Err(Error::K3sHandlerConflict {
                            path: generated.clone(),
                            binary: theirs
                                .binary_name
                                .clone()
                                .unwrap_or_else(|| "(no options.BinaryName)".into()),
                            runtime_type: theirs
                                .runtime_type
                                .clone()
                                .unwrap_or_else(|| "(none)".into()),
                            runs: theirs.shim_binary(),
                        });
                    }
                }
                let s = self.settings(handlers.clone(), systemd);
                if let Some(doc) = &gen {
                    self.foreign_runtimes(doc, version, &s, generated, false)?;
                }
                let desired = match use_dropin {
                    true => {
                        if let Some(c) = &current {
                            config::parse(c, &path)?;
                        }
                        config::fresh(version, &s, K3S_DROP_IN_HEADER)?
                    }
                    false => config::patch_template(current.as_deref(), &path, version, &s)?,
                };
                Ok(Plan {
                    path,
                    current,
                    desired,
                    version,
                    handlers,
                    layout,
                })
            }
            Target::DropIn {
                path,
                main,
                containerd,
            } => {
                let main_text = read_opt(&self.hp(main))?;
                let main_doc = main_text
                    .as_deref()
                    .map(|t| config::parse(t, main))
                    .transpose()?;
                // The containerd k0s runs decides: k0s up to 1.35 runs containerd 1.7 (version
                // 2, io.containerd.grpc.v1.cri), from 1.36 containerd 2.x, whose preflight
                // refuses a drop-in that says version 2 or names io.containerd.grpc.v1.cri.
                // The main config says the same once k0s has rewritten it, but a k0s that was
                // just upgraded, or a config the user manages, may still say the old one.
                let running = self.binary_version(containerd).await;
                let version = match (
                    running.as_deref().and_then(ConfigVersion::for_containerd),
                    &main_doc,
                ) {
                    (Some(v), _) => {
                        info!(containerd = %containerd.display(), version = running.as_deref().unwrap_or_default(), config_version = v.number(), "k0s's containerd");
                        config::agree(v, self.config_version, containerd)?
                    }
                    (None, Some(doc)) => {
                        config::agree(config::version(doc, main)?, self.config_version, main)?
                    }
                    (None, None) => self.fallback_version(&layout, main).await?,
                };
                // k0s merges /etc/k0s/containerd.d into containerd's config only while
                // containerd.toml carries its `# k0s_managed=true` line (k0s's containerd
                // component, isK0sManagedConfig); a file the user took over reads drop-ins
                // only if it imports them itself, and wasmpod's would otherwise do nothing.
                if let (Some(text), Some(doc)) = (&main_text, &main_doc) {
                    let managed = text.lines().any(|l| l == K0S_MANAGED_MARKER);
                    let dir = path.parent().unwrap_or(Path::new("/"));
                    let imported = config::imports(doc)
                        .iter()
                        .any(|i| Path::new(i) == dir.join("*.toml") || Path::new(i) == path);
                    if !managed && !imported {
                        return Err(Error::UnsupportedTemplate {
                            path: main.clone(),
                            reason: format!(
                                "this containerd config is yours, not k0s's (it has no \
                                 `{K0S_MANAGED_MARKER}` line), so k0s does not merge the \
                                 drop-ins of {} into it and wasmpod's would have no effect. \
                                 Add \"{}\" to its imports, or add wasmpod's runtimes to it \
                                 yourself (deploy/containerd/ has the tables)",
                                dir.display(),
                                dir.join("*.toml").display()
                            ),
                        });
                    }
                }
                let systemd = main_doc
                    .as_ref()
                    .and_then(|d| config::systemd_cgroup(d, version));
                let current = read_opt(&self.hp(path))?;
                if let Some(c) = &current {
                    config::parse(c, path)?;
                }
                let s = self.settings(handlers.clone(), systemd);
                if let Some(doc) = &main_doc {
                    self.foreign_runtimes(doc, version, &s, main, false)?;
                }
                let desired = config::fresh(version, &s, DROP_IN_HEADER)?;
                Ok(Plan {
                    path: path.clone(),
                    current,
                    desired,
                    version,
                    handlers,
                    layout,
                })
            }
        }
    }

    /// The handlers to register whose runtime in `doc` (read from `path`) another project
    /// wrote (neither what these settings write, see [`config::FoundRuntime::is_wasmpod`], nor
    /// what the install record says wasmpod wrote): refused, unless `--take-over-handlers`
    /// says to replace them and the file is one wasmpod edits in place (`editable`). Returns
    /// the runtimes to replace.
    fn foreign_runtimes(
        &self,
        doc: &DocumentMut,
        version: ConfigVersion,
        settings: &RuntimeSettings,
        path: &Path,
        editable: bool,
    ) -> Result<Vec<String>> {
        let recorded = self.read_state()?.map(|st| RuntimeSettings {
            bin_dir: st.bin_dir.to_string_lossy().into_owned(),
            systemd_cgroup: None,
            handlers: st.handlers,
        });
        let mut taken = Vec::new();
        for r in config::runtimes(doc, version) {
            if !settings.handlers.contains(&r.name) || r.is_wasmpod(settings) {
                continue;
            }
            // What the install record says wasmpod wrote is wasmpod's, even where these flags
            // would write it differently (a moved bin dir: refused later, with its own reason).
            if recorded
                .as_ref()
                .is_some_and(|rec| rec.handlers.contains(&r.name) && r.is_wasmpod(rec))
            {
                continue;
            }
            let table = config::runtime_table(version, &r.name);
            if self.take_over_handlers && editable {
                warn!(config = %path.display(), table, found = %r.describe(), "--take-over-handlers: replacing another project's runtime with wasmpod's (uninstall puts it back)");
                taken.push(r.name);
                continue;
            }
            let hint = if editable {
                "Remove that runtime, leave the handler out (--handlers; the chart's \
                 runtimeClasses.*.enabled), or install with --take-over-handlers (the chart's \
                 installer.takeOverHandlers=true) to replace it with wasmpod's; uninstall puts \
                 it back"
            } else {
                "wasmpod does not edit that file, so it cannot replace the runtime: remove it \
                 where it comes from, or leave the handler out (--handlers; the chart's \
                 runtimeClasses.*.enabled)"
            };
            return Err(Error::HandlerTaken {
                path: path.to_path_buf(),
                handler: r.name.clone(),
                table,
                found: r.describe(),
                hint: hint.into(),
            });
        }
        Ok(taken)
    }

    /// Copies the shim, registers the handlers, restarts containerd if the config changed.
    /// Labeling is separate ([`verify_and_label`]), after this returned.
    #[tracing::instrument(skip_all, fields(host_root = %self.host_root.display()))]
    pub async fn install(&self) -> Result<Report> {
        let _lock = NodeLock::acquire(&self.lock_file()).await?;
        let plan = self.plan().await?;
        let target = self.hp(&plan.path);
        let backup = self.backup_file(&plan.path);
        let state_dir = self.hp(&self.state_dir);
        for dir in [
            self.hp(&self.bin_dir),
            target.parent().map(Path::to_path_buf).unwrap_or_default(),
            state_dir.clone(),
        ] {
            distro::check_writable(&dir)?;
        }
        let previous = self.read_state()?;
        if let Some(prev) = &previous {
            if prev.config != plan.path || prev.bin_dir != self.bin_dir {
                return Err(Error::Invalid(format!(
                    "wasmpod is installed with config {} and bin dir {}, and this install would \
                     use {} and {} (a distribution upgrade, or other flags): run \
                     `wasmpod-installer uninstall` with the old settings first (nothing was changed)",
                    prev.config.display(),
                    prev.bin_dir.display(),
                    plan.path.display(),
                    self.bin_dir.display()
                )));
            }
        }
        // A backup that differs from the file, while the file does not carry our runtimes,
        // means the config changed under us: refuse rather than lose the real original.
        if let (Some(bytes), Some(cur)) = (read_opt(&backup)?, &plan.current) {
            let ours = match &plan.layout.target {
                Target::Template { .. } => config::template_has_block(cur),
                _ => config::parse(cur, &plan.path)
                    .map(|d| config::has_any_wasmpod_runtime(&d, plan.version))
                    .unwrap_or(false),
            };
            if &bytes != cur && !ours {
                return Err(Error::BackupDiffers {
                    backup,
                    path: plan.path,
                });
            }
        }

        let config_changed = plan.current.as_deref() != Some(plan.desired.as_str());
        // Decided before the first write, so a node where the unit cannot be told changes
        // nothing.
        let reloads_itself = plan.layout.distro.reloads_containerd_itself();
        let unit = match config_changed && self.restart && !reloads_itself {
            true => Some(self.unit_to_restart(&plan.layout.services)?),
            false => None,
        };

        let wants_isolated = plan.handlers.iter().any(|h| h == HANDLER_ISOLATED);
        // Both sources must be there before anything is written.
        for (source, binary, wanted) in [
            (&self.shim_source, SHIM_BINARY, true),
            (
                &self.isolated_shim_source,
                ISOLATED_SHIM_BINARY,
                wants_isolated,
            ),
        ] {
            if wanted && !source.is_file() {
                return Err(Error::ShimMissing {
                    path: source.clone(),
                    flag: shim::flag_for(binary),
                });
            }
        }
        let shim = shim::install(
            &self.host_root,
            &self.bin_dir,
            &self.shim_source,
            SHIM_BINARY,
        )?;
        let isolated = match wants_isolated {
            true => Some(shim::install(
                &self.host_root,
                &self.bin_dir,
                &self.isolated_shim_source,
                ISOLATED_SHIM_BINARY,
            )?),
            false => None,
        };
        let original_existed = match &previous {
            Some(s) if s.config == plan.path => s.original_existed,
            _ => plan.current.is_some(),
        };
        // The backup is taken once, even when the config needs no change (it may already carry
        // the runtimes), so uninstall always has the original to restore.
        if original_existed && !backup.exists() {
            if let Some(cur) = &plan.current {
                write_atomic(&backup, cur.as_bytes(), 0o600)?;
                info!(backup = %backup.display(), "original config backed up");
            }
        }
        // Whether this run patches the original itself (the first install, or one after a
        // rollback) or a config others changed since: only the former is pristine.
        let original = match original_existed {
            true => read_opt(&backup)?,
            false => None,
        };
        let pristine_sha256 = if plan.current == original {
            Some(digest(plan.desired.as_bytes()))
        } else {
            previous.as_ref().map(|p| {
                p.pristine_sha256
                    .clone()
                    .unwrap_or(p.written_sha256.clone())
            })
        };
        let mode = file_mode(&target);
        if config_changed {
            write_atomic(&target, plan.desired.as_bytes(), mode)?;
            info!(config = %plan.path.display(), "containerd config updated");
        } else {
            info!(config = %plan.path.display(), "containerd config already has the runtimes");
        }
        let state = State {
            distro: plan.layout.distro,
            config: plan.path.clone(),
            original_existed,
            written_sha256: digest(plan.desired.as_bytes()),
            pristine_sha256,
            bin_dir: self.bin_dir.clone(),
            shim_sha256: shim.digest.clone(),
            isolated_shim_sha256: isolated.as_ref().map(|i| i.digest.clone()),
            services: plan.layout.services.clone(),
            handlers: plan.handlers.clone(),
        };
        if previous.as_ref() != Some(&state) {
            let json = serde_json::to_vec_pretty(&state).map_err(|source| Error::Json {
                context: "writing the install record".into(),
                source,
            })?;
            write_atomic(&self.state_file(), &json, 0o600)?;
        }
        let restarted = match self.maybe_restart(config_changed, unit, reloads_itself) {
            Ok(r) => r,
            Err(e) => {
                // containerd still runs on the previous config: put it back, so that the next
                // run sees the change as still to do and restarts again, instead of finding a
                // config that looks installed but was never loaded.
                put_back(&plan, &target, mode)?;
                warn!(config = %plan.path.display(), error = %e, "restarting containerd failed: the previous config is restored");
                return Err(e);
            }
        };
        if config_changed && reloads_itself {
            info!(config = %plan.path.display(), "k0s reloads containerd when its drop-ins change: nothing is restarted");
            if let Some(verifier) = &self.verifier {
                let socket = self.socket(&plan.layout);
                if let Err(e) = verifier.verify(&socket, &plan.handlers).await {
                    // Putting the previous drop-in back makes k0s reload containerd on it.
                    put_back(&plan, &target, mode)?;
                    warn!(config = %plan.path.display(), error = %e, "the runtime handlers were not verified after k0s's reload: the previous drop-in is restored");
                    return Err(e);
                }
            }
        }
        if let (Some(unit), Some(verifier)) = (&restarted, &self.verifier) {
            let socket = self.socket(&plan.layout);
            if let Err(e) = verifier.verify(&socket, &plan.handlers).await {
                // containerd runs on the new config but does not serve the handlers (it
                // rejected the runtimes, or did not come back): go back to the config it
                // served before, so the node keeps running what it ran, and the next run
                // tries again.
                put_back(&plan, &target, mode)?;
                warn!(config = %plan.path.display(), error = %e, unit, "the runtime handlers were not verified after the restart: the previous config is restored, restarting containerd on it");
                match self.restarter.restart(unit) {
                    Ok(()) => info!(unit, "containerd restarted on the restored config"),
                    Err(e2) => {
                        error!(unit, error = %e2, "restarting containerd on the restored config failed too")
                    }
                }
                return Err(e);
            }
        }
        Ok(Report {
            distro: plan.layout.distro,
            config: plan.path,
            config_version: Some(plan.version),
            config_changed,
            shim_changed: shim.changed || isolated.is_some_and(|i| i.changed),
            restarted,
            handlers: plan.handlers,
        })
    }

    /// The unit whose restart makes containerd read its config again. Of several (RKE2's
    /// tarball lays down both rke2-server and rke2-agent on every node) it is the one systemd
    /// says runs: restarting the other would start it, a server on an agent node. A
    /// restarter that cannot tell (`--restart-command`) gets the first, as `$UNIT`.
    fn unit_to_restart(&self, services: &[String]) -> Result<String> {
        let many = match services {
            [] => return Ok("containerd".into()),
            [one] => return Ok(one.clone()),
            many => many,
        };
        let mut running = Vec::new();
        for unit in many {
            match self.restarter.is_active(unit)? {
                None => {
                    info!(unit = %many[0], candidates = ?many, "the restarter cannot tell which unit runs: using the first");
                    return Ok(many[0].clone());
                }
                Some(true) => running.push(unit.clone()),
                Some(false) => {}
            }
        }
        match running.as_slice() {
            [one] => {
                info!(unit = %one, candidates = ?many, "the active unit runs containerd");
                Ok(one.clone())
            }
            [] => Err(Error::NoActiveUnit {
                units: many.to_vec(),
            }),
            _ => Err(Error::SeveralActiveUnits { units: running }),
        }
    }

    /// Restarts `unit` (chosen by [`Self::unit_to_restart`]; `None` with --no-restart) when
    /// the config changed.
    /// `reloads_itself`: the distribution reloads containerd on its own (k0s).
    fn maybe_restart(
        &self,
        changed: bool,
        unit: Option<String>,
        reloads_itself: bool,
    ) -> Result<Option<String>> {
        if !changed {
            info!("config unchanged: containerd not restarted");
            return Ok(None);
        }
        if reloads_itself {
            return Ok(None);
        }
        let Some(unit) = unit else {
            warn!("config changed but --no-restart: restart containerd yourself to apply");
            return Ok(None);
        };
        info!(
            unit,
            "config changed: restarting (running pods may be affected on some distributions)"
        );
        self.restarter.restart(&unit)?;
        Ok(Some(unit))
    }

    /// Takes wasmpod's entries out of the config, removes the shim and the record, and
    /// restarts containerd if the config changed. A config nobody changed since install gets
    /// its original back byte for byte (a file wasmpod created is removed); one that others
    /// changed since keeps their changes, and loses only wasmpod's runtimes (or block). Remove
    /// the node label before calling this.
    #[tracing::instrument(skip_all, fields(host_root = %self.host_root.display()))]
    pub async fn uninstall(&self) -> Result<Option<Report>> {
        let _lock = NodeLock::acquire(&self.lock_file()).await?;
        let Some(state) = self.read_state()? else {
            info!("no install record: nothing to uninstall");
            return Ok(None);
        };
        let target = self.hp(&state.config);
        let current = read_opt(&target)?;
        let original = match state.original_existed {
            true => Some(
                std::fs::read_to_string(self.backup_file(&state.config))
                    .map_err(io_err(self.backup_file(&state.config)))?,
            ),
            false => None,
        };
        // Decided before anything is removed: a config that cannot be read leaves everything.
        let after = match &current {
            None => {
                warn!(config = %state.config.display(), "the config is gone: nothing to take wasmpod's entries out of");
                None
            }
            Some(cur) => {
                let pristine = state
                    .pristine_sha256
                    .as_deref()
                    .unwrap_or(&state.written_sha256);
                if digest(cur.as_bytes()) == pristine {
                    info!(config = %state.config.display(), "the config is as install left it: restoring the original byte for byte");
                    original.clone()
                } else {
                    info!(config = %state.config.display(), "the config changed since install: taking out only wasmpod's entries, keeping the rest as it is now");
                    self.unpatched(&state, cur, original.as_deref())?
                }
            }
        };
        let changed = after != current;
        let unit = match changed && self.restart && !state.distro.reloads_containerd_itself() {
            true => Some(self.unit_to_restart(&state.services)?),
            false => None,
        };
        if changed {
            match &after {
                Some(text) => write_atomic(&target, text.as_bytes(), file_mode(&target))?,
                None => std::fs::remove_file(&target).map_err(io_err(&target))?,
            }
        }
        let shim_changed = shim::remove(&self.host_root, &state.bin_dir)?;
        let state_dir = self.hp(&self.state_dir);
        std::fs::remove_dir_all(&state_dir).map_err(io_err(&state_dir))?;
        info!(config = %state.config.display(), changed, "wasmpod's entries are out of the config");
        let reloads_itself = state.distro.reloads_containerd_itself();
        if changed && reloads_itself {
            info!(config = %state.config.display(), "k0s reloads containerd when its drop-ins change: nothing is restarted");
        }
        let restarted = self.maybe_restart(changed, unit, reloads_itself)?;
        Ok(Some(Report {
            distro: state.distro,
            config: state.config,
            config_version: None,
            config_changed: changed,
            shim_changed,
            restarted,
            handlers: state.handlers,
        }))
    }

    /// `current` without wasmpod's entries; `None` when nothing else is left of a file wasmpod
    /// created.
    fn unpatched(
        &self,
        state: &State,
        current: &str,
        original: Option<&str>,
    ) -> Result<Option<String>> {
        let path = &state.config;
        let rest = match state.distro {
            // wasmpod's marked block in the Go template (not its drop-in, below)
            Distro::K3s | Distro::Rke2 if !is_k3s_dropin(path) => {
                let rest = config::remove_template_block(current, path)?
                    .unwrap_or_else(|| current.to_string());
                if !state.original_existed && rest.trim() == config::BASE_TEMPLATE {
                    return Ok(None);
                }
                rest
            }
            _ => {
                let settings = RuntimeSettings {
                    bin_dir: state.bin_dir.to_string_lossy().into_owned(),
                    systemd_cgroup: None,
                    handlers: state.handlers.clone(),
                };
                let (rest, done) = config::unpatch_text(current, path, &settings, original)?;
                info!(config = %path.display(), handlers = ?done, "wasmpod's runtimes taken out (or the ones it took over put back)");
                if !state.original_existed {
                    if config::holds_only_version(&rest, path)? {
                        return Ok(None);
                    }
                    // Someone else's now: wasmpod's header would say uninstall removes it.
                    for header in [CREATED_HEADER, DROP_IN_HEADER, K3S_DROP_IN_HEADER] {
                        if let Some(r) = rest.strip_prefix(header) {
                            return Ok(Some(r.to_string()));
                        }
                    }
                }
                rest
            }
        };
        Ok(Some(rest))
    }

    /// What is installed, from the record and the files.
    #[tracing::instrument(skip_all)]
    pub fn status(&self) -> Result<serde_json::Value> {
        let layout = self.layout();
        let state = self.read_state()?;
        let shim = |binary: &str| {
            shim::installed(&self.host_root, &self.bin_dir, binary).map(|d| {
                serde_json::json!({
                    "path": self.bin_dir.join(binary),
                    "sha256": d,
                })
            })
        };
        let config_path = state
            .as_ref()
            .map(|s| s.config.clone())
            .unwrap_or_else(|| layout.target.path().to_path_buf());
        let current = read_opt(&self.hp(&config_path))?;
        let config_matches = match (&state, &current) {
            (Some(s), Some(c)) => Some(digest(c.as_bytes()) == s.written_sha256),
            _ => None,
        };
        Ok(serde_json::json!({
            "distro": layout.distro,
            "config": config_path,
            "config_exists": current.is_some(),
            "config_as_installed": config_matches,
            "installed": state.is_some(),
            "handlers": state.as_ref().map(|s| s.handlers.clone()).unwrap_or_default(),
            "shim": shim(SHIM_BINARY),
            "isolated_shim": shim(ISOLATED_SHIM_BINARY),
            "backup": state.as_ref().map(|s| s.original_existed && self.backup_file(&s.config).exists()),
            "services": layout.services,
            "socket": self.socket(&layout),
        }))
    }
}

/// The version in `containerd --version`'s output: `containerd github.com/containerd/containerd
/// v1.7.23 <revision>` (the third word; distributions' builds drop the `v`).
pub fn containerd_version_of(output: &str) -> Option<String> {
    let line = output.lines().find(|l| l.starts_with("containerd "))?;
    let v = line.split_whitespace().nth(2)?;
    let digits = v.trim_start_matches('v');
    digits
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| v.to_string())
}

/// Whether a k3s/RKE2 install's file is wasmpod's drop-in rather than a template.
fn is_k3s_dropin(path: &Path) -> bool {
    path.parent()
        .and_then(|d| d.file_name())
        .is_some_and(|d| d.to_string_lossy().ends_with(".toml.d"))
}

/// The permission bits of `path`, or 0644 for a file that does not exist.
fn file_mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
        .unwrap_or(0o644)
}

/// Puts the config back as it was before this run wrote it (removes it if there was none).
fn put_back(plan: &Plan, target: &Path, mode: u32) -> Result<()> {
    match &plan.current {
        Some(cur) => write_atomic(target, cur.as_bytes(), mode),
        None => std::fs::remove_file(target).map_err(io_err(target)),
    }
}

/// Verifies the handlers through containerd's CRI, then labels the node ready. Never labels a
/// node whose handlers were not verified.
#[tracing::instrument(skip(nodes))]
pub async fn verify_and_label(
    socket: &Path,
    handlers: &[String],
    nodes: &dyn Nodes,
    node: &str,
    timeout: Duration,
) -> Result<()> {
    verify::wait_for_handlers(socket, handlers, timeout).await?;
    nodes.set_ready(node, true).await
}

/// One check of the running installer: the label follows whether containerd shows the
/// handlers now (removed when it stops showing them, put back when they return). Returns
/// whether the node is labeled afterwards.
#[tracing::instrument(skip(nodes))]
pub async fn reconcile_label(
    socket: &Path,
    handlers: &[String],
    nodes: &dyn Nodes,
    node: &str,
) -> Result<bool> {
    let want = match verify::check_handlers(socket, handlers).await {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e, "handlers not verified: the node must not be labeled");
            false
        }
    };
    if nodes.is_ready(node).await? != want {
        nodes.set_ready(node, want).await?;
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_versions_are_read_from_version_output() {
        for (out, want) in [
            // upstream builds, as k0s bundles them
            (
                "containerd github.com/containerd/containerd v1.7.23 57f17b0a\n",
                Some("v1.7.23"),
            ),
            (
                "containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b71\n",
                Some("v2.1.4"),
            ),
            // Debian's packages (the test bed's), printed here
            (
                "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1\n",
                Some("1.7.24~ds1"),
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n",
                Some("2.1.9+unknown"),
            ),
            ("something else\n", None),
            ("containerd github.com/containerd/containerd\n", None),
        ] {
            assert_eq!(containerd_version_of(out).as_deref(), want, "{out:?}");
        }
        assert_eq!(
            containerd_version_of("containerd x 1.7.24~ds1 y")
                .as_deref()
                .and_then(ConfigVersion::for_containerd),
            Some(ConfigVersion::V2)
        );
        assert_eq!(
            ConfigVersion::for_containerd("2.1.9+unknown"),
            Some(ConfigVersion::V3)
        );
    }
}
