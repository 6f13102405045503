//! The installer against fixture host roots, one per distribution layout: install,
//! idempotency (a second install changes nothing and restarts nothing), byte-exact uninstall,
//! and the refusals (which must change nothing on disk). Each test works on a temp copy of a
//! fixture under `tests/fixtures/`, with a recording restarter instead of systemctl.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use wasmpod_installer::config::{self, ConfigVersion};
use wasmpod_installer::install::Installer;
use wasmpod_installer::restart::{Recorder, Restarter};
use wasmpod_installer::{Error, HANDLERS, ISOLATED_SHIM_BINARY, SHIM_BINARY};

struct Host {
    dir: tempfile::TempDir,
    shim: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

fn host(fixture: &str) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    copy_dir(&src, &dir.path().join("root"));
    let shim = dir.path().join("shim-build").join(SHIM_BINARY);
    std::fs::create_dir_all(shim.parent().unwrap()).unwrap();
    std::fs::write(&shim, b"\x7fELF fake shim v1").unwrap();
    std::fs::write(
        shim.with_file_name(ISOLATED_SHIM_BINARY),
        b"\x7fELF fake isolated shim v1",
    )
    .unwrap();
    Host { dir, shim }
}

impl Host {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn installer(&self, restarter: Box<dyn Restarter>) -> Installer {
        Installer {
            host_root: self.root(),
            bin_dir: "/opt/wasmpod/bin".into(),
            state_dir: "/var/lib/wasmpod".into(),
            shim_source: self.shim.clone(),
            isolated_shim_source: self.shim.with_file_name(ISOLATED_SHIM_BINARY),
            config_override: None,
            config_version: None,
            // nothing listens there: a test that needs containerd's answer fails loudly
            socket: Some(self.dir.path().join("no-containerd.sock")),
            handlers: HANDLERS.iter().map(|s| s.to_string()).collect(),
            restart: true,
            restarter,
        }
    }

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.root().join(p.trim_start_matches('/'))).unwrap()
    }

    /// Every file and symlink under the host root with its bytes (or link target).
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        fn walk(base: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
            for e in std::fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                let ft = e.file_type().unwrap();
                let rel = e.path().strip_prefix(base).unwrap().to_path_buf();
                if ft.is_symlink() {
                    let t = std::fs::read_link(e.path()).unwrap();
                    out.insert(rel, t.into_os_string().into_encoded_bytes());
                } else if ft.is_dir() {
                    walk(base, &e.path(), out);
                } else {
                    out.insert(rel, std::fs::read(e.path()).unwrap());
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root(), &self.root(), &mut out);
        out
    }
}

/// install, install again, uninstall: returns the installed config text.
async fn round_trip(
    fixture: &str,
    config: &str,
    service: &str,
    version: Option<ConfigVersion>,
) -> String {
    let h = host(fixture);
    let before = h.snapshot();
    let rec = std::sync::Arc::new(Recorder::default());
    struct Shared(std::sync::Arc<Recorder>);
    impl Restarter for Shared {
        fn restart(&self, unit: &str) -> wasmpod_installer::Result<()> {
            self.0.restart(unit)
        }
    }
    let mut inst = h.installer(Box::new(Shared(rec.clone())));
    inst.config_version = version;
    let r = inst.install().await.unwrap();
    assert!(r.config_changed && r.shim_changed, "{r:?}");
    assert_eq!(r.config, PathBuf::from(config));
    assert_eq!(
        rec.calls(),
        vec![service.to_string()],
        "restarted once, the right unit"
    );
    let installed = h.read(config);
    let link = h.root().join("opt/wasmpod/bin").join(SHIM_BINARY);
    assert_eq!(std::fs::read(&link).unwrap(), b"\x7fELF fake shim v1");
    let link = h.root().join("opt/wasmpod/bin").join(ISOLATED_SHIM_BINARY);
    assert_eq!(
        std::fs::read(&link).unwrap(),
        b"\x7fELF fake isolated shim v1"
    );
    let after_install = h.snapshot();

    // Idempotent: nothing changes, nothing restarts.
    let r2 = inst.install().await.unwrap();
    assert!(!r2.config_changed && !r2.shim_changed, "{r2:?}");
    assert_eq!(rec.calls().len(), 1, "no restart when nothing changed");
    assert_eq!(h.snapshot(), after_install, "second install changed files");

    // status knows it
    let st = inst.status().unwrap();
    assert_eq!(st["installed"], true);
    assert_eq!(st["config_as_installed"], true);

    // Uninstall restores every byte (and removes what install created).
    let u = inst.uninstall().await.unwrap().expect("installed");
    assert!(u.config_changed);
    assert_eq!(rec.calls(), vec![service.to_string(), service.to_string()]);
    assert_eq!(
        h.snapshot(),
        before,
        "uninstall must restore the host byte for byte"
    );
    assert!(
        inst.uninstall().await.unwrap().is_none(),
        "second uninstall is a no-op"
    );
    installed
}

fn assert_runtimes(text: &str, version: ConfigVersion, systemd: Option<bool>) {
    let doc = config::parse(text, Path::new("x")).unwrap();
    let rts = config::runtimes(&doc, version);
    for h in HANDLERS {
        let r = rts
            .iter()
            .find(|r| r.name == h)
            .unwrap_or_else(|| panic!("{h} in\n{text}"));
        let (binary, runtime_type) = wasmpod_installer::runtime_of(h);
        assert_eq!(r.runtime_type.as_deref(), Some(runtime_type));
        assert_eq!(
            r.runtime_path.as_deref(),
            Some(format!("/opt/wasmpod/bin/{binary}").as_str())
        );
    }
    let plugin = version.cri_plugin();
    let got = doc["plugins"][plugin]["containerd"]["runtimes"]["wasmtime"]["options"]
        .get("SystemdCgroup")
        .and_then(|v| v.as_bool());
    assert_eq!(got, systemd, "SystemdCgroup follows runc's\n{text}");
}

#[tokio::test]
async fn plain_v2() {
    let orig = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/plain-v2/etc/containerd/config.toml"),
    )
    .unwrap();
    let t = round_trip(
        "plain-v2",
        "/etc/containerd/config.toml",
        "containerd",
        None,
    )
    .await;
    // Every original line (comments, layout) is still there, in order; ours are added.
    let mut new_lines = t.lines();
    for l in orig.lines() {
        assert!(new_lines.any(|n| n == l), "original line {l:?} lost:\n{t}");
    }
    assert_runtimes(&t, ConfigVersion::V2, Some(true));
}

#[tokio::test]
async fn plain_v3() {
    let t = round_trip(
        "plain-v3",
        "/etc/containerd/config.toml",
        "containerd",
        None,
    )
    .await;
    assert!(t.contains("# containerd 2.1, trimmed"));
    assert_runtimes(&t, ConfigVersion::V3, Some(false));
}

#[tokio::test]
async fn missing_config_is_created_and_removed() {
    let t = round_trip(
        "missing",
        "/etc/containerd/config.toml",
        "containerd",
        Some(ConfigVersion::V3),
    )
    .await;
    assert!(t.contains("version = 3"));
    assert_runtimes(&t, ConfigVersion::V3, None);
}

#[tokio::test]
async fn missing_config_without_version_is_refused() {
    let h = host("missing");
    let before = h.snapshot();
    let e = h
        .installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::VersionUnknown { .. }), "{e}");
    assert!(e.to_string().contains("--config-version"));
    assert_eq!(h.snapshot(), before);
}

#[tokio::test]
async fn k3s_template_built_on_base() {
    let t = round_trip(
        "k3s",
        "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
        "k3s",
        None,
    )
    .await;
    assert!(t.starts_with("{{ template \"base\" . }}\n"), "{t}");
    // the block, appended to k3s's base config, gives a valid config with our runtimes
    let base = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/k3s/var/lib/rancher/k3s/agent/etc/containerd/config.toml"),
    )
    .unwrap();
    let rendered = t.replace("{{ template \"base\" . }}", &base);
    assert_runtimes(&rendered, ConfigVersion::V2, Some(true));
}

#[tokio::test]
async fn k3s_own_wasmtime_handler_is_not_collided_with() {
    let h = host("k3s-wasmtime");
    let before = h.snapshot();
    let e = h
        .installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::K3sHandlerConflict { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("/usr/local/bin/containerd-shim-wasmtime-v1"),
        "{e}"
    );
    assert_eq!(h.snapshot(), before, "refusal changed nothing");

    // With our shim where k3s found it, wasmpod adopts k3s's `wasmtime` and adds only the other.
    let mut inst = h.installer(Box::new(Recorder::default()));
    inst.bin_dir = "/usr/local/bin".into();
    let r = inst.install().await.unwrap();
    assert_eq!(r.handlers, vec!["wasmtime-isolated".to_string()]);
    let t = h.read("/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl");
    assert!(
        t.contains("runtimes.wasmtime-isolated]") && !t.contains("runtimes.wasmtime]"),
        "{t}"
    );
    assert!(!inst.install().await.unwrap().config_changed);
    inst.uninstall().await.unwrap();
    assert_eq!(h.snapshot(), before);
}

#[tokio::test]
async fn rke2_v3_user_template() {
    let t = round_trip(
        "rke2",
        "/var/lib/rancher/rke2/agent/etc/containerd/config-v3.toml.tmpl",
        "rke2-agent",
        None,
    )
    .await;
    assert!(
        t.contains("# Site addition: registry mirrors"),
        "user's template kept"
    );
    assert!(
        t.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.wasmtime]"),
        "{t}"
    );
}

#[tokio::test]
async fn k0s_drop_in() {
    let t = round_trip(
        "k0s",
        "/etc/k0s/containerd.d/wasmpod.toml",
        "k0sworker",
        None,
    )
    .await;
    assert!(t.starts_with("# Written by wasmpod-installer"));
    assert_runtimes(&t, ConfigVersion::V2, None);
}

#[tokio::test]
async fn microk8s_template() {
    let t = round_trip(
        "microk8s",
        "/var/snap/microk8s/current/args/containerd-template.toml",
        "snap.microk8s.daemon-containerd",
        None,
    )
    .await;
    assert!(
        t.contains("snapshotter = \"${SNAPSHOTTER}\""),
        "placeholders kept"
    );
    assert_runtimes(&t, ConfigVersion::V2, None);
}

async fn refused(fixture: &str, prepare: impl FnOnce(&Path)) -> Error {
    let h = host(fixture);
    prepare(&h.root());
    let before = h.snapshot();
    let e = h
        .installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap_err();
    assert_eq!(h.snapshot(), before, "a refusal must change nothing: {e}");
    e
}

#[tokio::test]
async fn refuses_unparsable_toml() {
    let e = refused("plain-v2", |r| {
        std::fs::write(
            r.join("etc/containerd/config.toml"),
            "version = 2\n[plugins\n",
        )
        .unwrap()
    })
    .await;
    assert!(matches!(e, Error::Toml { .. }), "{e}");
}

#[tokio::test]
async fn refuses_unknown_versions() {
    let e = refused("plain-v2", |r| {
        std::fs::write(r.join("etc/containerd/config.toml"), "version = 4\n").unwrap()
    })
    .await;
    assert!(
        e.to_string().contains("config version 4 is not supported"),
        "{e}"
    );
    let e = refused("plain-v2", |r| {
        std::fs::write(r.join("etc/containerd/config.toml"), "[plugins.cri]\n").unwrap()
    })
    .await;
    assert!(matches!(e, Error::UnknownVersion { .. }), "{e}");
}

#[tokio::test]
async fn refuses_immutable_hosts() {
    for (id, word) in [
        ("talos", "Talos"),
        ("bottlerocket", "Bottlerocket"),
        ("cos", "Container-Optimized OS"),
    ] {
        let e = refused("plain-v2", |r| {
            std::fs::write(
                r.join("etc/os-release"),
                format!("ID={id}\nPRETTY_NAME=\"{id} x\"\n"),
            )
            .unwrap()
        })
        .await;
        assert!(matches!(e, Error::ImmutableHost { .. }), "{e}");
        assert!(e.to_string().contains(word), "guidance for {id}: {e}");
    }
}

#[tokio::test]
async fn refuses_a_bin_dir_it_cannot_write() {
    let h = host("plain-v2");
    // /opt is a file: nothing can be created below it (as a read-only /opt would refuse)
    std::fs::write(h.root().join("opt"), b"").unwrap();
    let before = h.snapshot();
    let e = h
        .installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly { .. }), "{e}");
    assert!(e.to_string().contains("--bin-dir"), "{e}");
    assert_eq!(h.snapshot(), before);
}

#[tokio::test]
async fn refuses_to_overwrite_a_backup_that_differs() {
    let h = host("plain-v2");
    let inst = h.installer(Box::new(Recorder::default()));
    inst.install().await.unwrap();
    // containerd's config is replaced under us (a package upgrade), without our runtimes
    std::fs::write(
        h.root().join("etc/containerd/config.toml"),
        "version = 2\n# new\n",
    )
    .unwrap();
    let before = h.snapshot();
    let e = inst.install().await.unwrap_err();
    assert!(matches!(e, Error::BackupDiffers { .. }), "{e}");
    assert_eq!(h.snapshot(), before);
}

#[tokio::test]
async fn upgrade_swaps_the_shim_without_touching_the_config() {
    let h = host("plain-v3");
    let rec = Box::new(Recorder::default());
    let inst = h.installer(rec);
    inst.install().await.unwrap();
    std::fs::write(&h.shim, b"\x7fELF fake shim v2").unwrap();
    let r = inst.install().await.unwrap();
    assert!(
        r.shim_changed && !r.config_changed && r.restarted.is_none(),
        "{r:?}"
    );
    assert_eq!(
        std::fs::read(h.root().join("opt/wasmpod/bin").join(SHIM_BINARY)).unwrap(),
        b"\x7fELF fake shim v2"
    );
}

#[tokio::test]
async fn a_missing_isolated_shim_changes_nothing() {
    let h = host("plain-v2");
    let before = h.snapshot();
    let mut inst = h.installer(Box::new(Recorder::default()));
    inst.isolated_shim_source = h.shim.with_file_name("not-there");
    let e = inst.install().await.unwrap_err();
    assert!(matches!(e, Error::ShimMissing { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("pass --isolated-shim (nothing was changed)"),
        "{e}"
    );
    assert_eq!(h.snapshot(), before, "nothing written");
    // Without the isolated handler the isolated shim is not needed.
    inst.handlers = vec!["wasmtime".into()];
    inst.install().await.unwrap();
    assert!(!h
        .root()
        .join("opt/wasmpod/bin")
        .join(ISOLATED_SHIM_BINARY)
        .exists());
}

/// The binary itself, as the chart and the e2e suite run it.
#[test]
fn cli_install_status_uninstall() {
    let h = host("plain-v2");
    let before = h.snapshot();
    let bin = env!("CARGO_BIN_EXE_wasmpod-installer");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .arg("--host-root")
            .arg(h.root())
            .arg("--shim")
            .arg(&h.shim)
            .arg("--isolated-shim")
            .arg(h.shim.with_file_name(ISOLATED_SHIM_BINARY))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run(&["install", "--no-restart", "--skip-label"]);
    assert!(out.contains("\"config_changed\": true"), "{out}");
    let out = run(&["install", "--no-restart", "--skip-label"]);
    assert!(out.contains("\"config_changed\": false"), "{out}");
    let out = run(&["status"]);
    assert!(out.contains("\"installed\": true"), "{out}");
    run(&["uninstall", "--no-restart", "--skip-label"]);
    assert_eq!(h.snapshot(), before);
}

#[test]
fn cli_refusal_exits_nonzero_with_guidance() {
    let h = host("plain-v2");
    std::fs::write(h.root().join("etc/os-release"), "ID=talos\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmpod-installer"))
        .args(["install", "--no-restart", "--skip-label", "--host-root"])
        .arg(h.root())
        .arg("--shim")
        .arg(&h.shim)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("immutable host") && err.contains("Talos"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_to_move_an_install_it_would_lose_track_of() {
    let h = host("plain-v2");
    let inst = h.installer(Box::new(Recorder::default()));
    inst.install().await.unwrap();
    let before = h.snapshot();
    let mut moved = h.installer(Box::new(Recorder::default()));
    moved.bin_dir = "/usr/local/bin".into();
    let e = moved.install().await.unwrap_err();
    assert!(
        e.to_string().contains("uninstall` with the old settings"),
        "{e}"
    );
    assert_eq!(h.snapshot(), before);
}

#[tokio::test]
async fn config_version_flag_must_agree_with_the_file() {
    let h = host("plain-v2");
    let before = h.snapshot();
    let mut inst = h.installer(Box::new(Recorder::default()));
    inst.config_version = Some(ConfigVersion::V3);
    let e = inst.install().await.unwrap_err();
    assert!(e.to_string().contains("--config-version says 3"), "{e}");
    assert_eq!(h.snapshot(), before);
}

#[tokio::test]
async fn a_config_that_already_has_the_runtimes_is_left_and_restored_as_is() {
    let h = host("plain-v3");
    let snippet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/containerd/config-v3.toml"),
    )
    .unwrap();
    std::fs::write(h.root().join("etc/containerd/config.toml"), &snippet).unwrap();
    let before = h.snapshot();
    let rec = Box::new(Recorder::default());
    let inst = h.installer(rec);
    let r = inst.install().await.unwrap();
    assert!(!r.config_changed && r.restarted.is_none(), "{r:?}");
    let u = inst.uninstall().await.unwrap().unwrap();
    assert!(!u.config_changed && u.restarted.is_none(), "{u:?}");
    assert_eq!(h.snapshot(), before);
}

/// A restarter whose restart fails, as a missing systemd unit or a broken command does.
struct FailingRestart;

impl Restarter for FailingRestart {
    fn restart(&self, unit: &str) -> wasmpod_installer::Result<()> {
        Err(wasmpod_installer::Error::Restart {
            command: format!("systemctl restart {unit}"),
            message: "exit status: 1".into(),
        })
    }
}

#[tokio::test]
async fn a_failed_restart_puts_the_previous_config_back_and_the_next_run_retries() {
    let h = host("plain-v3");
    let config = "etc/containerd/config.toml";
    let before = h.read(config);
    let e = h
        .installer(Box::new(FailingRestart))
        .install()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exit status: 1"), "{e}");
    // containerd never loaded the new config, so the file must not claim it did.
    assert_eq!(h.read(config), before);
    let r = h
        .installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap();
    assert!(r.config_changed && r.restarted.is_some(), "{r:?}");
    assert!(h.read(config).contains("runtimes.wasmtime"));
}
