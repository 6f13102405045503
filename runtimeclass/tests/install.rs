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
use wasmpod_installer::verify::Verifier;
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
            verifier: None,
            take_over_handlers: false,
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
    // Only the unit that runs containerd is active, as on a real node.
    let rec = std::sync::Arc::new(Recorder::with_active(&[service]));
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
    for h in HANDLERS {
        let options = doc["plugins"][plugin]["containerd"]["runtimes"][h].get("options");
        let got = options
            .and_then(|o| o.get("SystemdCgroup"))
            .and_then(|v| v.as_bool());
        assert_eq!(got, systemd, "{h}: SystemdCgroup follows runc's\n{text}");
        // No SystemdCgroup: no options table at all, not an empty one (containerd would send
        // the shim an empty options body).
        if systemd.is_none() {
            assert!(options.is_none(), "{h}: an options table\n{text}");
        }
    }
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

/// containerd 2.3's `containerd config default` is version 4, with version 3's CRI plugins.
#[tokio::test]
async fn plain_v4_containerd_2_3_default() {
    let t = round_trip(
        "plain-v4",
        "/etc/containerd/config.toml",
        "containerd",
        None,
    )
    .await;
    assert!(t.contains("\nversion = 4\n"), "the file's version stays");
    assert_runtimes(&t, ConfigVersion::V4, Some(true));
    assert!(
        t.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]"),
        "{t}"
    );
    assert!(
        t.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.wasmtime]"),
        "{t}"
    );
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

/// k3s registers `wasmtime` as runtime_type io.containerd.wasmtime.v2 with only
/// options.BinaryName: containerd then starts containerd-shim-wasmtime-v2, so that handler
/// never runs wasmpod's shim, wherever wasmpod puts it. wasmpod refuses (changing nothing)
/// and says what containerd would run; without its `wasmtime` handler it installs the other.
#[tokio::test]
async fn k3s_own_wasmtime_handler_is_not_collided_with_nor_adopted() {
    let h = host("k3s-wasmtime");
    let before = h.snapshot();
    for bin_dir in ["/opt/wasmpod/bin", "/usr/bin"] {
        let mut inst = h.installer(Box::new(Recorder::default()));
        inst.bin_dir = bin_dir.into();
        let e = inst.install().await.unwrap_err();
        assert!(matches!(e, Error::K3sHandlerConflict { .. }), "{e}");
        let msg = e.to_string();
        for want in [
            "/usr/bin/containerd-shim-wasmtime-v1",
            "io.containerd.wasmtime.v2",
            "containerd-shim-wasmtime-v2",
            "nothing was changed",
            "--handlers wasmtime-isolated",
        ] {
            assert!(msg.contains(want), "{want:?} in: {msg}");
        }
        assert_eq!(h.snapshot(), before, "refusal changed nothing");
    }

    let mut inst = h.installer(Box::new(Recorder::default()));
    inst.handlers = vec!["wasmtime-isolated".into()];
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

/// A k3s whose config imports config-v3.toml.d/*.toml gets a drop-in of wasmpod's there, and
/// its templates are left alone: containerd merges the drop-in's tables into k3s's config.
#[tokio::test]
async fn k3s_with_drop_in_imports_gets_a_drop_in_not_a_template() {
    let dropin = "/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.d/wasmpod.toml";
    let t = round_trip("k3s-v3-dropin", dropin, "k3s", None).await;
    assert!(t.starts_with("# Written by wasmpod-installer"), "{t}");
    assert!(t.contains("\nversion = 3\n"), "{t}");
    assert!(!t.contains("{{"), "a drop-in is TOML, not a template: {t}");
    assert_runtimes(&t, ConfigVersion::V3, Some(true));
    let h = host("k3s-v3-dropin");
    h.installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap();
    assert!(!h
        .root()
        .join("var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl")
        .exists());
}

/// An install made into the template before k3s rendered drop-in imports (a k3s upgrade)
/// stays in the template: nothing moves, nothing restarts.
#[tokio::test]
async fn a_k3s_template_install_stays_when_drop_in_imports_appear() {
    let h = host("k3s-v3-dropin");
    let config = h
        .root()
        .join("var/lib/rancher/k3s/agent/etc/containerd/config.toml");
    let with_imports = std::fs::read_to_string(&config).unwrap();
    let imports =
        "imports = [\"/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.d/*.toml\"]\n";
    std::fs::write(&config, with_imports.replace(imports, "")).unwrap();
    let rec = std::sync::Arc::new(Recorder::with_active(&["k3s"]));
    let inst = h.installer(Box::new(Shared(rec.clone())));
    let r = inst.install().await.unwrap();
    assert!(r.config.ends_with("config-v3.toml.tmpl"), "{r:?}");
    std::fs::write(&config, &with_imports).unwrap();
    let r = inst.install().await.unwrap();
    assert!(
        r.config.ends_with("config-v3.toml.tmpl") && !r.config_changed,
        "{r:?}"
    );
    assert_eq!(rec.calls(), ["k3s"]);
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

/// RKE2's tarball lays down rke2-server and rke2-agent on every node: only the active one may
/// be restarted (restarting rke2-server on an agent starts a server there).
#[tokio::test]
async fn rke2_restarts_only_the_active_unit() {
    for active in ["rke2-agent", "rke2-server"] {
        let h = host("rke2");
        let rec = std::sync::Arc::new(Recorder::with_active(&[active]));
        let inst = h.installer(Box::new(Shared(rec.clone())));
        let r = inst.install().await.unwrap();
        assert_eq!(r.restarted.as_deref(), Some(active));
        assert_eq!(rec.calls(), [active]);
        inst.uninstall().await.unwrap();
        assert_eq!(rec.calls(), [active, active]);
    }
}

#[tokio::test]
async fn rke2_refuses_when_it_cannot_tell_the_unit() {
    for (active, server_agent) in [(&[][..], false), (&["rke2-server", "rke2-agent"][..], true)] {
        let h = host("rke2");
        let before = h.snapshot();
        let rec = std::sync::Arc::new(Recorder::with_active(active));
        let e = h
            .installer(Box::new(Shared(rec.clone())))
            .install()
            .await
            .unwrap_err();
        assert_eq!(h.snapshot(), before, "a refusal must change nothing: {e}");
        assert!(rec.calls().is_empty(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("nothing was changed") && msg.contains("--no-restart"),
            "{msg}"
        );
        match server_agent {
            false => assert!(matches!(e, Error::NoActiveUnit { .. }), "{e}"),
            true => assert!(matches!(e, Error::SeveralActiveUnits { .. }), "{e}"),
        }
        // --no-restart installs without asking.
        let mut inst = h.installer(Box::new(Shared(rec.clone())));
        inst.restart = false;
        let r = inst.install().await.unwrap();
        assert!(r.config_changed && r.restarted.is_none(), "{r:?}");
    }
}

fn k0s_drop_in_text(h: &Host) -> String {
    h.read("/etc/k0s/containerd.d/wasmpod.toml")
}

/// The drop-in's version follows the containerd k0s runs, asked of the binary k0s staged
/// (version 2 with io.containerd.grpc.v1.cri for containerd 1.7, k0s up to 1.35), and is
/// rewritten when k0s's containerd changes. k0s reloads containerd when a drop-in changes, so
/// the installer restarts nothing (restarting k0scontroller takes the control plane down).
#[tokio::test]
async fn k0s_drop_in_follows_its_containerd_and_restarts_nothing() {
    let h = host("k0s");
    let mut before = h.snapshot();
    let rec = std::sync::Arc::new(Recorder::with_active(&["k0sworker", "k0scontroller"]));
    let inst = h.installer(Box::new(Shared(rec.clone())));
    let r = inst.install().await.unwrap();
    assert!(r.config_changed && r.restarted.is_none(), "{r:?}");
    assert_eq!(r.config_version, Some(ConfigVersion::V2));
    let t = k0s_drop_in_text(&h);
    assert!(t.starts_with("# Written by wasmpod-installer"), "{t}");
    assert!(t.contains("\nversion = 2\n"), "{t}");
    assert_runtimes(&t, ConfigVersion::V2, None);
    assert!(!inst.install().await.unwrap().config_changed);

    // k0s upgraded to 1.36: its containerd is 2.x, the main config still says version 2
    // until k0s rewrites it. The drop-in must become version 3 with the 2.x plugin names,
    // or k0s 1.36's preflight refuses it.
    let containerd2 = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/k0s-containerd2/var/lib/k0s/bin/containerd"),
    )
    .unwrap();
    std::fs::write(h.root().join("var/lib/k0s/bin/containerd"), &containerd2).unwrap();
    before.insert("var/lib/k0s/bin/containerd".into(), containerd2);
    let r = inst.install().await.unwrap();
    assert!(r.config_changed && r.restarted.is_none(), "{r:?}");
    assert_eq!(r.config_version, Some(ConfigVersion::V3));
    let t = k0s_drop_in_text(&h);
    assert!(t.contains("\nversion = 3\n"), "{t}");
    assert!(!t.contains("io.containerd.grpc.v1.cri"), "{t}");
    assert_runtimes(&t, ConfigVersion::V3, None);

    let u = inst.uninstall().await.unwrap().unwrap();
    assert!(u.config_changed && u.restarted.is_none(), "{u:?}");
    assert_eq!(
        h.snapshot(),
        before,
        "uninstall takes out the drop-in and the shims"
    );
    assert!(rec.calls().is_empty(), "never restarted: {:?}", rec.calls());
}

#[tokio::test]
async fn k0s_with_containerd_2_gets_a_version_3_drop_in() {
    let h = host("k0s-containerd2");
    let rec = std::sync::Arc::new(Recorder::with_active(&["k0scontroller"]));
    let inst = h.installer(Box::new(Shared(rec.clone())));
    let r = inst.install().await.unwrap();
    assert_eq!(r.config_version, Some(ConfigVersion::V3));
    let t = k0s_drop_in_text(&h);
    assert!(
        t.contains("\nversion = 3\n") && !t.contains("grpc.v1.cri"),
        "{t}"
    );
    assert_runtimes(&t, ConfigVersion::V3, None);
    assert!(rec.calls().is_empty());
    // Without the binary (a k0s that keeps it elsewhere) the main config's version decides.
    inst.uninstall().await.unwrap();
    std::fs::remove_file(h.root().join("var/lib/k0s/bin/containerd")).unwrap();
    assert_eq!(
        inst.install().await.unwrap().config_version,
        Some(ConfigVersion::V3)
    );
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
    let e = refused("plain-v4", |r| {
        let config = r.join("etc/containerd/config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(config, text.replace("\nversion = 4\n", "\nversion = 5\n")).unwrap()
    })
    .await;
    let msg = e.to_string();
    assert!(msg.contains("config version 5 is not supported"), "{msg}");
    assert!(
        msg.contains("versions 2 (containerd 1.6/1.7), 3 (containerd 2.x) and 4 (containerd 2.3"),
        "names the versions it knows: {msg}"
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

/// A recording restarter the test keeps a handle on.
struct Shared(std::sync::Arc<Recorder>);

impl Restarter for Shared {
    fn restart(&self, unit: &str) -> wasmpod_installer::Result<()> {
        self.0.restart(unit)
    }

    fn is_active(&self, unit: &str) -> wasmpod_installer::Result<Option<bool>> {
        self.0.is_active(unit)
    }
}

/// A handler check that answers as told, as containerd would after the restart.
struct Check(bool);

#[async_trait::async_trait]
impl Verifier for Check {
    async fn verify(&self, socket: &Path, handlers: &[String]) -> wasmpod_installer::Result<()> {
        match self.0 {
            true => Ok(()),
            false => Err(Error::HandlerMissing {
                address: socket.display().to_string(),
                missing: handlers.to_vec(),
                present: vec!["runc".into()],
            }),
        }
    }
}

#[tokio::test]
async fn a_failed_handler_check_puts_the_previous_config_back_and_restarts_again() {
    let h = host("plain-v3");
    let config = "etc/containerd/config.toml";
    let before = h.read(config);
    let rec = std::sync::Arc::new(Recorder::default());
    let mut inst = h.installer(Box::new(Shared(rec.clone())));
    inst.verifier = Some(Box::new(Check(false)));
    let e = inst.install().await.unwrap_err();
    assert!(matches!(e, Error::HandlerMissing { .. }), "{e}");
    // containerd was restarted on the new config, which it did not serve: it must be back on
    // the one it served before.
    assert_eq!(h.read(config), before);
    assert_eq!(
        rec.calls(),
        ["containerd", "containerd"],
        "restarted on the new config, then on the restored one"
    );
    // The next run tries again, and keeps a config whose handlers are served.
    inst.verifier = Some(Box::new(Check(true)));
    let r = inst.install().await.unwrap();
    assert!(r.config_changed && r.restarted.is_some(), "{r:?}");
    assert!(h.read(config).contains("runtimes.wasmtime"));
    assert_eq!(rec.calls().len(), 3);
    // ... and uninstall still restores the original byte for byte.
    inst.uninstall().await.unwrap();
    assert_eq!(h.read(config), before);
}

/// On k0s nothing is restarted; a drop-in whose handlers k0s's reload did not bring up is
/// taken back (k0s reloads again on that).
#[tokio::test]
async fn a_failed_handler_check_on_k0s_takes_the_drop_in_back_without_restarting() {
    let h = host("k0s-containerd2");
    let before = h.snapshot();
    let rec = std::sync::Arc::new(Recorder::default());
    let mut inst = h.installer(Box::new(Shared(rec.clone())));
    inst.verifier = Some(Box::new(Check(false)));
    let e = inst.install().await.unwrap_err();
    assert!(matches!(e, Error::HandlerMissing { .. }), "{e}");
    assert!(!h.root().join("etc/k0s/containerd.d/wasmpod.toml").exists());
    assert!(rec.calls().is_empty(), "{:?}", rec.calls());
    inst.verifier = Some(Box::new(Check(true)));
    assert!(inst.install().await.unwrap().config_changed);
    inst.uninstall().await.unwrap();
    assert_eq!(h.snapshot(), before);
    assert!(rec.calls().is_empty(), "{:?}", rec.calls());
}

#[tokio::test]
async fn a_failed_handler_check_removes_a_config_it_created() {
    let h = host("missing");
    let before = h.snapshot();
    let rec = std::sync::Arc::new(Recorder::default());
    let mut inst = h.installer(Box::new(Shared(rec.clone())));
    inst.config_version = Some(ConfigVersion::V2);
    inst.verifier = Some(Box::new(Check(false)));
    inst.install().await.unwrap_err();
    assert!(!h.root().join("etc/containerd/config.toml").exists());
    assert_eq!(rec.calls().len(), 2);
    inst.uninstall().await.unwrap();
    assert_eq!(h.snapshot(), before);
}

/// The binary's log says what happened, with the real CRI check (nothing serves the socket)
/// and a restart command that counts.
#[test]
fn cli_a_failed_handler_check_restores_the_config_and_says_so() {
    let h = host("plain-v2");
    let before = h.read("etc/containerd/config.toml");
    let count = h.dir.path().join("restarts");
    let out = Command::new(env!("CARGO_BIN_EXE_wasmpod-installer"))
        .args([
            "install",
            "--skip-label",
            "--verify",
            "--verify-timeout",
            "0",
        ])
        .arg("--host-root")
        .arg(h.root())
        .arg("--shim")
        .arg(&h.shim)
        .arg("--isolated-shim")
        .arg(h.shim.with_file_name(ISOLATED_SHIM_BINARY))
        .arg("--containerd-address")
        .arg(h.dir.path().join("nothing.sock"))
        .arg("--restart-command")
        .arg(format!("echo \"$UNIT\" >> {}", count.display()))
        .arg("--host-pid")
        .arg(std::process::id().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the runtime handlers were not verified after the restart: the previous config is restored"),
        "{err}"
    );
    assert!(
        err.contains("containerd restarted on the restored config"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&count).unwrap(),
        "containerd\ncontainerd\n"
    );
    assert_eq!(h.read("etc/containerd/config.toml"), before);
}

/// What another tool does to the config after wasmpod's install: a value changed, a runtime
/// of its own added.
fn edit_like_another_tool(text: &str) -> String {
    let edited = text.replace(
        "sandbox_image = \"registry.k8s.io/pause:3.8\"",
        "sandbox_image = \"registry.k8s.io/pause:3.10\"",
    );
    assert_ne!(edited, text);
    edited
        + "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gvisor]\n  runtime_type = \"io.containerd.runsc.v1\"\n"
}

#[tokio::test]
async fn uninstall_keeps_what_other_tools_changed_after_install() {
    let h = host("plain-v2");
    let config = "etc/containerd/config.toml";
    let original = h.read(config);
    let inst = h.installer(Box::new(Recorder::default()));
    inst.install().await.unwrap();
    std::fs::write(
        h.root().join(config),
        edit_like_another_tool(&h.read(config)),
    )
    .unwrap();
    // The installer pod starts again (an upgrade, a node reboot): nothing to change.
    let r = inst.install().await.unwrap();
    assert!(!r.config_changed, "{r:?}");
    let u = inst.uninstall().await.unwrap().unwrap();
    assert!(u.config_changed && u.restarted.is_some(), "{u:?}");
    // The other tool's edits survive; only wasmpod's runtimes went, every byte else as before.
    assert_eq!(h.read(config), edit_like_another_tool(&original));
}

#[tokio::test]
async fn uninstall_of_a_created_config_keeps_another_tools_additions() {
    let h = host("missing");
    let config = "etc/containerd/config.toml";
    let mut inst = h.installer(Box::new(Recorder::default()));
    inst.config_version = Some(ConfigVersion::V2);
    inst.install().await.unwrap();
    let theirs = "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n";
    std::fs::write(h.root().join(config), h.read(config) + theirs).unwrap();
    inst.uninstall().await.unwrap();
    let left = h.read(config);
    assert!(
        left.contains("config_path = \"/etc/containerd/certs.d\""),
        "{left}"
    );
    assert!(!left.contains("wasmtime"), "{left}");
    assert!(
        !left.contains("wasmpod-installer"),
        "no header claiming uninstall removes it:\n{left}"
    );
    assert!(left.starts_with("version = 2\n"), "{left}");
}

#[tokio::test]
async fn uninstall_of_a_k3s_template_keeps_the_users_later_lines() {
    let h = host("k3s");
    let tmpl = "var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl";
    let inst = h.installer(Box::new(Recorder::default()));
    inst.install().await.unwrap();
    let theirs = "\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/var/lib/rancher/k3s/agent/etc/containerd/certs.d\"\n";
    std::fs::write(h.root().join(tmpl), h.read(tmpl) + theirs).unwrap();
    inst.uninstall().await.unwrap();
    let left = h.read(tmpl);
    assert_eq!(left, format!("{}\n{theirs}", config::BASE_TEMPLATE));
}

/// A config in which another project (KWasm, runwasi's docs) registered `name`.
fn with_foreign_runtime(h: &Host, name: &str) -> String {
    let config = "etc/containerd/config.toml";
    let text = h.read(config)
        + &format!(
            "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}.options]\n    BinaryName = \"/opt/kwasm/bin/containerd-shim-wasmtime-v1\"\n"
        );
    std::fs::write(h.root().join(config), &text).unwrap();
    text
}

#[tokio::test]
async fn another_projects_handler_is_never_overwritten_silently() {
    for name in ["wasmtime", "wasmtime-isolated"] {
        let e = refused("plain-v2", |r| {
            let config = r.join("etc/containerd/config.toml");
            let text = std::fs::read_to_string(&config).unwrap()
                + &format!(
                    "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n"
                );
            std::fs::write(config, text).unwrap();
        })
        .await;
        assert!(matches!(e, Error::HandlerTaken { .. }), "{e}");
        let msg = e.to_string();
        for want in [
            "/etc/containerd/config.toml",
            &format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{name}]"),
            "runtime_type io.containerd.wasmtime.v1",
            "--take-over-handlers",
            "nothing was changed",
        ] {
            assert!(msg.contains(want), "{want:?} in: {msg}");
        }
    }
}

#[tokio::test]
async fn take_over_handlers_replaces_the_runtime_and_uninstall_puts_it_back() {
    let h = host("plain-v2");
    let config = "etc/containerd/config.toml";
    let theirs = with_foreign_runtime(&h, "wasmtime");
    let before = h.snapshot();
    let mut inst = h.installer(Box::new(Recorder::default()));
    inst.take_over_handlers = true;
    inst.install().await.unwrap();
    let installed = h.read(config);
    assert_runtimes(&installed, ConfigVersion::V2, Some(true));
    assert!(
        !installed.contains("/opt/kwasm"),
        "none of the old runtime's keys stay:\n{installed}"
    );
    assert!(
        installed.contains("Taken over by wasmpod-installer"),
        "{installed}"
    );
    // Nobody changed it since: the original, byte for byte.
    inst.uninstall().await.unwrap();
    assert_eq!(h.snapshot(), before);

    // Changed since by someone else: their change stays, and so does the runtime taken over.
    inst.install().await.unwrap();
    std::fs::write(
        h.root().join(config),
        edit_like_another_tool(&h.read(config)),
    )
    .unwrap();
    inst.uninstall().await.unwrap();
    let left = h.read(config);
    let doc = config::parse(&left, Path::new("x")).unwrap();
    let rts = config::runtimes(&doc, ConfigVersion::V2);
    let w = rts.iter().find(|r| r.name == "wasmtime").unwrap();
    assert_eq!(w.runtime_type.as_deref(), Some("io.containerd.wasmtime.v1"));
    assert_eq!(w.runtime_path, None);
    assert_eq!(
        w.binary_name.as_deref(),
        Some("/opt/kwasm/bin/containerd-shim-wasmtime-v1")
    );
    assert!(rts.iter().all(|r| r.name != "wasmtime-isolated"), "{left}");
    assert!(
        left.contains("gvisor") && left.contains("pause:3.10"),
        "{left}"
    );
    assert_eq!(
        edit_like_another_tool(&theirs),
        left,
        "the other tool's edits and the taken-over runtime, as they were"
    );
}

#[tokio::test]
async fn a_foreign_handler_in_k0s_config_is_refused() {
    let e = refused("k0s", |r| {
        let main = r.join("etc/k0s/containerd.toml");
        let text = std::fs::read_to_string(&main).unwrap()
            + "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-isolated]\n  runtime_type = \"io.containerd.wasmtime.v1\"\n";
        std::fs::write(main, text).unwrap();
    })
    .await;
    assert!(matches!(e, Error::HandlerTaken { .. }), "{e}");
    assert!(e.to_string().contains("/etc/k0s/containerd.toml"), "{e}");
}

/// k0s applies its drop-ins only while containerd.toml is k0s's (its `# k0s_managed=true`
/// line); a config the user took over gets a clear refusal unless it imports the drop-ins.
#[tokio::test]
async fn a_k0s_config_the_user_manages_is_refused_unless_it_imports_the_drop_ins() {
    let users = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
    let e = refused("k0s", |r| {
        std::fs::write(r.join("etc/k0s/containerd.toml"), users).unwrap()
    })
    .await;
    assert!(matches!(e, Error::UnsupportedTemplate { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("# k0s_managed=true") && msg.contains("/etc/k0s/containerd.d/*.toml"),
        "{msg}"
    );
    let h = host("k0s");
    std::fs::write(
        h.root().join("etc/k0s/containerd.toml"),
        format!("imports = [\"/etc/k0s/containerd.d/*.toml\"]\n{users}"),
    )
    .unwrap();
    h.installer(Box::new(Recorder::default()))
        .install()
        .await
        .unwrap();
}

/// Holds the installer's lock the way another installer run would (flock on the lock file).
fn hold_lock(inst: &Installer) -> nix::fcntl::Flock<std::fs::File> {
    let path = inst.lock_file();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap()
}

#[tokio::test]
async fn two_installer_runs_on_one_node_take_turns() {
    let h = host("plain-v2");
    let config = "etc/containerd/config.toml";
    let before = h.read(config);
    let inst = h.installer(Box::new(Recorder::default()));
    assert_eq!(inst.lock_file(), h.root().join("var/lib/wasmpod.lock"));
    let other = hold_lock(&inst);
    let install = inst.install();
    tokio::pin!(install);
    tokio::select! {
        r = &mut install => panic!("install ran while another run held the lock: {r:?}"),
        _ = tokio::time::sleep(std::time::Duration::from_millis(700)) => {}
    }
    assert_eq!(h.read(config), before, "nothing written while waiting");
    drop(other);
    install.await.unwrap();
    assert!(h.read(config).contains("runtimes.wasmtime"));
    // uninstall waits too, and leaves no lock file behind
    let other = hold_lock(&inst);
    let uninstall = inst.uninstall();
    tokio::pin!(uninstall);
    tokio::select! {
        r = &mut uninstall => panic!("uninstall ran while another run held the lock: {r:?}"),
        _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
    }
    drop(other);
    uninstall.await.unwrap();
    assert_eq!(h.read(config), before);
    assert!(!inst.lock_file().exists());
}

#[test]
fn cli_waits_for_the_lock_and_says_so() {
    let h = host("plain-v2");
    let inst = h.installer(Box::new(Recorder::default()));
    let other = hold_lock(&inst);
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmpod-installer"))
        .args(["install", "--no-restart", "--skip-label", "--host-root"])
        .arg(h.root())
        .arg("--shim")
        .arg(&h.shim)
        .arg("--isolated-shim")
        .arg(h.shim.with_file_name(ISOLATED_SHIM_BINARY))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it must wait for the lock"
    );
    drop(other);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("another wasmpod-installer is installing or uninstalling on this node: waiting for it to finish"),
        "{err}"
    );
    assert!(h
        .read("etc/containerd/config.toml")
        .contains("runtimes.wasmtime"));
}

#[test]
fn cli_take_over_handlers_flag() {
    let h = host("plain-v2");
    with_foreign_runtime(&h, "wasmtime-isolated");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wasmpod-installer"))
            .args(["install", "--no-restart", "--skip-label", "--host-root"])
            .arg(h.root())
            .arg("--shim")
            .arg(&h.shim)
            .arg("--isolated-shim")
            .arg(h.shim.with_file_name(ISOLATED_SHIM_BINARY))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is another project's") && err.contains("--take-over-handlers"),
        "{err}"
    );
    let out = run(&["--take-over-handlers"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
