//! containerd configuration editing: pure functions on strings, parsed and edited with
//! `toml_edit` so everything we do not touch (comments, layout, order) stays as it was.

use std::path::Path;

use toml_edit::{value, DocumentMut, Item, Table};

use crate::{runtime_of, Error, Result, HANDLERS};

/// The containerd config versions wasmpod writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigVersion {
    /// `version = 2`: containerd 1.6 and 1.7, CRI plugin `io.containerd.grpc.v1.cri`.
    V2,
    /// `version = 3`: containerd 2.x, CRI runtime plugin `io.containerd.cri.v1.runtime`.
    V3,
    /// `version = 4`: what `containerd config default` writes from containerd 2.3. It moves
    /// the server settings (`[grpc]`, `[ttrpc]`, `[debug]`, `[metrics]`) into
    /// `io.containerd.server.v1.*` plugins; the CRI plugins are named as in version 3.
    V4,
}

/// The config versions wasmpod knows, for messages.
pub const KNOWN_VERSIONS: &str =
    "2 (containerd 1.6/1.7), 3 (containerd 2.x) and 4 (containerd 2.3 and later)";

impl ConfigVersion {
    pub fn number(self) -> i64 {
        match self {
            ConfigVersion::V2 => 2,
            ConfigVersion::V3 => 3,
            ConfigVersion::V4 => 4,
        }
    }

    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            2 => Some(ConfigVersion::V2),
            3 => Some(ConfigVersion::V3),
            4 => Some(ConfigVersion::V4),
            _ => None,
        }
    }

    /// The CRI plugin that holds `containerd.runtimes`.
    pub fn cri_plugin(self) -> &'static str {
        match self {
            ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
            ConfigVersion::V3 | ConfigVersion::V4 => "io.containerd.cri.v1.runtime",
        }
    }

    /// The version to write for containerd `runtime_version` (from CRI `Version`) when no
    /// file says: 3 for every 2.x, since containerd 2.3 still reads version 3.
    pub fn for_containerd(runtime_version: &str) -> Option<Self> {
        let v = runtime_version.trim_start_matches('v');
        match v.split('.').next()? {
            "1" => Some(ConfigVersion::V2),
            "2" => Some(ConfigVersion::V3),
            _ => None,
        }
    }
}

/// What to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Absolute host directory of the shims: each runtime's `runtime_path` is its binary there.
    pub bin_dir: String,
    /// `SystemdCgroup` for the runtimes' options; `None` leaves it out (containerd's default,
    /// cgroupfs), as for runc when its options do not say.
    pub systemd_cgroup: Option<bool>,
    /// Handlers to register (a subset of [`HANDLERS`]).
    pub handlers: Vec<String>,
}

/// The file's version, which `--config-version` (meant for a missing file) must not contradict.
pub fn agree(
    file: ConfigVersion,
    forced: Option<ConfigVersion>,
    path: &Path,
) -> Result<ConfigVersion> {
    match forced {
        Some(f) if f != file => Err(Error::Invalid(format!(
            "{} is config version {}, but --config-version says {} (nothing was changed)",
            path.display(),
            file.number(),
            f.number()
        ))),
        _ => Ok(file),
    }
}

/// Parses a containerd config (or a TOML template such as MicroK8s').
pub fn parse(text: &str, path: &Path) -> Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|e| Error::Toml {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

/// The config's `imports` (the files containerd merges into it), as written.
pub fn imports(doc: &DocumentMut) -> Vec<String> {
    doc.get("imports")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The config's `version`. A file without one is version 1, which wasmpod refuses.
pub fn version(doc: &DocumentMut, path: &Path) -> Result<ConfigVersion> {
    let unknown = |version: String| Error::UnknownVersion {
        path: path.to_path_buf(),
        version,
    };
    match doc.get("version") {
        None => Err(unknown("1 (no `version` key)".into())),
        Some(item) => match item.as_integer() {
            Some(n) => ConfigVersion::from_number(n).ok_or_else(|| unknown(n.to_string())),
            None => Err(unknown(item.to_string().trim().to_string())),
        },
    }
}

fn get_path<'a>(doc: &'a DocumentMut, keys: &[&str]) -> Option<&'a Item> {
    let mut item = doc.as_item();
    for k in keys {
        item = item.get(k)?;
    }
    Some(item)
}

fn runtimes_keys(version: ConfigVersion) -> [&'static str; 4] {
    ["plugins", version.cri_plugin(), "containerd", "runtimes"]
}

/// The default runtime's `SystemdCgroup` (runc's, unless `default_runtime_name` names another),
/// so wasmpod's runtimes follow the kubelet's cgroup driver as runc does.
pub fn systemd_cgroup(doc: &DocumentMut, version: ConfigVersion) -> Option<bool> {
    let [p, cri, c, _] = runtimes_keys(version);
    let default = get_path(doc, &[p, cri, c, "default_runtime_name"])
        .and_then(|i| i.as_str())
        .unwrap_or("runc")
        .to_string();
    get_path(
        doc,
        &[p, cri, c, "runtimes", &default, "options", "SystemdCgroup"],
    )
    .and_then(|i| i.as_bool())
}

/// A registered runtime, as found in a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRuntime {
    pub name: String,
    pub runtime_type: Option<String>,
    pub runtime_path: Option<String>,
    /// `options.BinaryName` (what k3s writes for the shims it detects).
    pub binary_name: Option<String>,
}

/// The runtimes of the CRI plugin.
pub fn runtimes(doc: &DocumentMut, version: ConfigVersion) -> Vec<FoundRuntime> {
    let Some(table) = get_path(doc, &runtimes_keys(version)).and_then(|i| i.as_table_like()) else {
        return Vec::new();
    };
    table
        .iter()
        .map(|(name, item)| {
            let s = |k: &str| item.get(k).and_then(|i| i.as_str()).map(str::to_string);
            FoundRuntime {
                name: name.to_string(),
                runtime_type: s("runtime_type"),
                runtime_path: s("runtime_path"),
                binary_name: item
                    .get("options")
                    .and_then(|o| o.get("BinaryName"))
                    .and_then(|i| i.as_str())
                    .map(str::to_string),
            }
        })
        .collect()
}

impl FoundRuntime {
    /// Whether this is wasmpod's runtime as `settings` writes it: wasmpod's `runtime_type` for
    /// the handler and its shim in wasmpod's bin dir as `runtime_path`. Other projects that
    /// register a `wasmtime` handler (KWasm, runwasi's snippets, k3s) use runwasi's
    /// `runtime_type` too, but name the shim by `options.BinaryName` or containerd's PATH.
    pub fn is_wasmpod(&self, settings: &RuntimeSettings) -> bool {
        let (runtime_type, path) = settings.runtime(&self.name);
        self.runtime_type.as_deref() == Some(runtime_type)
            && self.runtime_path.as_deref() == Some(path.as_str())
    }

    /// The shim binary containerd starts for this runtime: `runtime_path`, else the name
    /// containerd derives from the last two parts of `runtime_type`
    /// (`io.containerd.wasmtime.v2` → `containerd-shim-wasmtime-v2`) and looks up on its
    /// PATH. `options.BinaryName` plays no part: it is runc's option.
    pub fn shim_binary(&self) -> String {
        if let Some(p) = self.runtime_path.as_deref().filter(|p| !p.is_empty()) {
            return p.to_string();
        }
        let t = self.runtime_type.as_deref().unwrap_or_default();
        let mut parts = t.rsplit('.');
        match (parts.next(), parts.next()) {
            (Some(version), Some(name)) if !name.is_empty() => {
                format!("containerd-shim-{name}-{version} (from containerd's PATH)")
            }
            _ => format!("no shim (runtime_type {t:?} names none)"),
        }
    }

    /// What it runs, for messages: its type and binary.
    pub fn describe(&self) -> String {
        let binary = self
            .runtime_path
            .as_deref()
            .or(self.binary_name.as_deref())
            .map(|b| format!(", binary {b}"))
            .unwrap_or_default();
        format!(
            "runtime_type {}{binary}",
            self.runtime_type.as_deref().unwrap_or("(none)")
        )
    }
}

/// The TOML table of a handler's runtime, as a config names it.
pub fn runtime_table(version: ConfigVersion, handler: &str) -> String {
    format!(
        "plugins.\"{}\".containerd.runtimes.{handler}",
        version.cri_plugin()
    )
}

impl RuntimeSettings {
    /// The `runtime_type` and `runtime_path` written for `handler`.
    pub fn runtime(&self, handler: &str) -> (&'static str, String) {
        let (binary, runtime_type) = runtime_of(handler);
        let path = format!("{}/{binary}", self.bin_dir.trim_end_matches('/'));
        (runtime_type, path)
    }
}

/// Whether every wanted handler is registered with our runtime type and shim path.
pub fn has_runtimes(doc: &DocumentMut, version: ConfigVersion, settings: &RuntimeSettings) -> bool {
    let found = runtimes(doc, version);
    settings.handlers.iter().all(|h| {
        let (runtime_type, path) = settings.runtime(h);
        found.iter().any(|r| {
            &r.name == h
                && r.runtime_type.as_deref() == Some(runtime_type)
                && r.runtime_path.as_deref() == Some(path.as_str())
        })
    })
}

/// Any runtime of ours (a handler name of ours with its runtime type) in the document.
pub fn has_any_wasmpod_runtime(doc: &DocumentMut, version: ConfigVersion) -> bool {
    runtimes(doc, version).iter().any(|r| {
        HANDLERS.contains(&r.name.as_str())
            && r.runtime_type.as_deref() == Some(runtime_of(&r.name).1)
    })
}

/// Walks to (creating as implicit tables) `keys` and returns the table there.
fn table_at<'a>(doc: &'a mut DocumentMut, keys: &[&str], path: &Path) -> Result<&'a mut Table> {
    let mut table = doc.as_table_mut();
    for k in keys {
        let item = table.entry(k).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item
            .as_table_mut()
            .ok_or_else(|| Error::UnsupportedTemplate {
                path: path.to_path_buf(),
                reason: format!(
                    "`{k}` is not a standard TOML table (an inline table or a value); \
                 wasmpod only edits configs whose plugin sections are [tables]"
                ),
            })?;
    }
    Ok(table)
}

/// `parent.key`, made an empty table where it is missing; `what` names it when it is there
/// but not a [table].
fn subtable<'a>(
    parent: &'a mut Table,
    key: &str,
    path: &Path,
    what: &str,
) -> Result<&'a mut Table> {
    parent
        .entry(key)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| Error::UnsupportedTemplate {
            path: path.to_path_buf(),
            reason: format!("{what} is not a [table]"),
        })
}

fn set_if_different(table: &mut Table, key: &str, v: toml_edit::Value) -> bool {
    let same = match (table.get(key).and_then(|i| i.as_value()), &v) {
        (Some(toml_edit::Value::String(a)), toml_edit::Value::String(b)) => a.value() == b.value(),
        (Some(toml_edit::Value::Boolean(a)), toml_edit::Value::Boolean(b)) => {
            a.value() == b.value()
        }
        (Some(toml_edit::Value::Array(a)), toml_edit::Value::Array(b)) => {
            let strings = |x: &toml_edit::Array| -> Vec<Option<String>> {
                x.iter().map(|v| v.as_str().map(str::to_string)).collect()
            };
            strings(a) == strings(b)
        }
        _ => false,
    };
    if !same {
        table.insert(key, value(v));
    }
    !same
}

/// The pod annotations containerd passes into the specs of wasmpod's containers.
pub const POD_ANNOTATIONS: &[&str] = &["wasmpod.dev/*"];

/// Adds (or corrects) wasmpod's runtimes in `doc`. Only the runtime tables are touched.
/// Returns whether anything changed.
pub fn add_runtimes(
    doc: &mut DocumentMut,
    version: ConfigVersion,
    settings: &RuntimeSettings,
    path: &Path,
) -> Result<bool> {
    let mut changed = false;
    let runtimes = table_at(doc, &runtimes_keys(version), path)?;
    for handler in &settings.handlers {
        let fresh = !runtimes.contains_key(handler);
        changed |= fresh;
        let rt = subtable(runtimes, handler, path, &format!("runtime `{handler}`"))?;
        if fresh {
            rt.decor_mut().set_prefix(format!(
                "\n# Added by wasmpod-installer: the `{handler}` runtime handler (RuntimeClass \
                 `{handler}`).\n"
            ));
        }
        let (runtime_type, runtime_path) = settings.runtime(handler);
        changed |= set_if_different(rt, "runtime_type", runtime_type.into());
        changed |= set_if_different(rt, "runtime_path", runtime_path.as_str().into());
        // The pod annotations the shims read (a pinned module's digest) reach a container's
        // spec only if containerd passes them through.
        let annotations: toml_edit::Array = POD_ANNOTATIONS.iter().copied().collect();
        changed |= set_if_different(rt, "pod_annotations", annotations.into());
        // containerd hands the options table to the shim, which takes its cgroup driver from
        // there. Without a SystemdCgroup to say (runc's options do not: MicroK8s, k0s, a
        // missing config) there is no table at all: an empty one makes containerd send an
        // empty options body, which a shim's config parsing may reject, and the shim's
        // default is runc's (cgroupfs). An empty table an older install wrote goes too.
        match settings.systemd_cgroup {
            Some(systemd) => {
                changed |= !rt.contains_key("options");
                let opts = subtable(rt, "options", path, &format!("`{handler}.options`"))?;
                changed |= set_if_different(opts, "SystemdCgroup", systemd.into());
            }
            None => {
                let empty = rt
                    .get("options")
                    .and_then(|o| o.as_table_like())
                    .is_some_and(|t| t.is_empty());
                if empty {
                    rt.remove("options");
                    changed = true;
                }
            }
        }
    }
    Ok(changed)
}

/// Empties the runtime tables `names` (another project's, taken over with
/// `--take-over-handlers`) in place, keeping where they are and the comments above them, so
/// that [`add_runtimes`] writes wasmpod's runtime there and none of the old keys (such as an
/// `options.BinaryName` naming the other shim) stay behind.
fn take_over(doc: &mut DocumentMut, version: ConfigVersion, names: &[String]) {
    let Some(runtimes) = doc
        .as_table_mut()
        .get_mut("plugins")
        .and_then(|i| i.get_mut(version.cri_plugin()))
        .and_then(|i| i.get_mut("containerd"))
        .and_then(|i| i.get_mut("runtimes"))
        .and_then(|i| i.as_table_mut())
    else {
        return;
    };
    for name in names {
        if let Some(rt) = runtimes.get_mut(name).and_then(|i| i.as_table_mut()) {
            rt.clear();
            let before = rt
                .decor()
                .prefix()
                .and_then(|p| p.as_str())
                .unwrap_or("\n")
                .to_string();
            rt.decor_mut().set_prefix(format!(
                "{before}# Taken over by wasmpod-installer (--take-over-handlers): `wasmpod-installer \
                 uninstall` puts the previous `{name}` runtime back.\n"
            ));
        }
    }
}

/// The whole new text for an existing config (the same text when it already has everything).
/// `take_over` names runtimes of other projects to replace (see [`take_over`]).
pub fn patch_text(
    text: &str,
    path: &Path,
    forced: Option<ConfigVersion>,
    settings: &RuntimeSettings,
    take_over_runtimes: &[String],
) -> Result<(ConfigVersion, String)> {
    let mut doc = parse(text, path)?;
    let version = agree(version(&doc, path)?, forced, path)?;
    let mut settings = settings.clone();
    if settings.systemd_cgroup.is_none() {
        settings.systemd_cgroup = systemd_cgroup(&doc, version);
    }
    take_over(&mut doc, version, take_over_runtimes);
    if add_runtimes(&mut doc, version, &settings, path)? || !take_over_runtimes.is_empty() {
        Ok((version, doc.to_string()))
    } else {
        Ok((version, text.to_string()))
    }
}

/// A config with wasmpod's runtimes taken out again, for uninstalling from a config that
/// changed since install: everything else stays as it is now, other tools' later edits
/// included. `settings` names the handlers and bin dir wasmpod installed with; `original` is
/// the config from before install, if there was one. A runtime that is no longer wasmpod's
/// (someone replaced it) is left alone; one wasmpod took over from another project is put
/// back as the original had it; one that was already wasmpod's before install (written by
/// hand from `deploy/containerd/`) stays. Returns the new text and the handlers removed or
/// put back.
pub fn unpatch_text(
    text: &str,
    path: &Path,
    settings: &RuntimeSettings,
    original: Option<&str>,
) -> Result<(String, Vec<String>)> {
    let mut doc = parse(text, path)?;
    let version = version(&doc, path)?;
    let original = original.map(|o| parse(o, path)).transpose()?;
    let found = runtimes(&doc, version);
    let mut done = Vec::new();
    for handler in &settings.handlers {
        if !found
            .iter()
            .any(|r| &r.name == handler && r.is_wasmpod(settings))
        {
            continue;
        }
        let before = original.as_ref().and_then(|o| {
            let item = get_path(o, &runtimes_keys(version))?.get(handler)?;
            let was_ours = runtimes(o, version)
                .iter()
                .any(|r| &r.name == handler && r.is_wasmpod(settings));
            Some((item.clone(), was_ours))
        });
        let runtimes = table_at(&mut doc, &runtimes_keys(version), path)?;
        match before {
            Some((_, true)) => continue,
            Some((mut item, false)) => {
                // Where wasmpod's table is now, which is where the taken-over one was; its
                // subtables follow it (positions of the original's numbering mean nothing here).
                let here = runtimes
                    .get(handler)
                    .and_then(|i| i.as_table())
                    .and_then(|t| t.position());
                if let Some(t) = item.as_table_mut() {
                    for (_, sub) in t.iter_mut() {
                        forget_positions(sub);
                    }
                    t.set_position(here);
                }
                runtimes.insert(handler, item);
            }
            None => {
                runtimes.remove(handler);
            }
        }
        done.push(handler.clone());
    }
    Ok((doc.to_string(), done))
}

/// Clears the document positions of every table in `item`, so they print after their parent.
fn forget_positions(item: &mut Item) {
    if let Some(t) = item.as_table_mut() {
        t.set_position(None);
        for (_, sub) in t.iter_mut() {
            forget_positions(sub);
        }
    }
}

/// Whether a config holds nothing but its `version` (and empty tables): a file wasmpod
/// created and nobody else added to.
pub fn holds_only_version(text: &str, path: &Path) -> Result<bool> {
    fn empty(item: &Item) -> bool {
        match item {
            Item::None => true,
            Item::Table(t) => t.iter().all(|(_, i)| empty(i)),
            _ => false,
        }
    }
    let doc = parse(text, path)?;
    let only = doc.iter().all(|(k, i)| k == "version" || empty(i));
    Ok(only)
}

/// A complete, minimal config holding only wasmpod's runtimes (a new `config.toml`, a k0s
/// drop-in, the snippets in `deploy/containerd/`).
pub fn fresh(version: ConfigVersion, settings: &RuntimeSettings, header: &str) -> Result<String> {
    let mut doc = DocumentMut::new();
    doc.insert("version", value(version.number()));
    if !header.is_empty() {
        doc.decor_mut().set_prefix(header);
    }
    add_runtimes(&mut doc, version, settings, Path::new("(new)"))?;
    Ok(doc.to_string())
}

/// The runtime tables alone, without `version` (for k3s/RKE2 templates).
pub fn tables_only(version: ConfigVersion, settings: &RuntimeSettings) -> Result<String> {
    let text = fresh(version, settings, "")?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with("version ="))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
        + "\n")
}

/// Begin/end markers of the block wasmpod manages in a k3s/RKE2 Go template.
pub const BLOCK_BEGIN: &str =
    "# BEGIN wasmpod-installer (managed block: edited by install, removed by uninstall)";
pub const BLOCK_END: &str = "# END wasmpod-installer";
/// What a k3s/RKE2 template must build on, so it never freezes a stale copy of the base config.
pub const BASE_TEMPLATE: &str = "{{ template \"base\" . }}";

/// The new text of a k3s/RKE2 `config*.toml.tmpl`. The template is Go text, not TOML, so
/// wasmpod owns one marked block of TOML tables after `{{ template "base" . }}`; the block's
/// tables are generated with `toml_edit`.
pub fn patch_template(
    current: Option<&str>,
    path: &Path,
    version: ConfigVersion,
    settings: &RuntimeSettings,
) -> Result<String> {
    let block = format!(
        "{BLOCK_BEGIN}\n{}{BLOCK_END}\n",
        tables_only(version, settings)?
    );
    let Some(text) = current else {
        return Ok(format!("{BASE_TEMPLATE}\n\n{block}"));
    };
    let has_base = text.lines().any(|l| {
        let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
        l.starts_with("{{template\"base\".}}") || l.starts_with("{{-template\"base\".")
    });
    if !has_base {
        return Err(Error::UnsupportedTemplate {
            path: path.to_path_buf(),
            reason: format!(
                "this template does not build on `{BASE_TEMPLATE}`: it is a frozen copy of the \
                 generated config that goes stale on upgrades (k3s-io/k3s#7992). Rewrite it as \
                 `{BASE_TEMPLATE}` followed by your additions, then run the installer again"
            ),
        });
    }
    match (text.find(BLOCK_BEGIN), text.find(BLOCK_END)) {
        (Some(b), Some(e)) if e > b => {
            let end = text[e..]
                .find('\n')
                .map(|n| e + n + 1)
                .unwrap_or(text.len());
            Ok(format!("{}{}{}", &text[..b], block, &text[end..]))
        }
        (None, None) => {
            let sep = if text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{text}{sep}{block}"))
        }
        _ => Err(Error::UnsupportedTemplate {
            path: path.to_path_buf(),
            reason: "the wasmpod block markers are damaged (one of BEGIN/END is missing)".into(),
        }),
    }
}

/// Whether a template carries wasmpod's block.
pub fn template_has_block(text: &str) -> bool {
    text.contains(BLOCK_BEGIN)
}

/// A k3s/RKE2 template with wasmpod's block taken out (and the blank line [`patch_template`]
/// put before it); everything else stays as it is now. `None` when it has no block.
pub fn remove_template_block(text: &str, path: &Path) -> Result<Option<String>> {
    match (text.find(BLOCK_BEGIN), text.find(BLOCK_END)) {
        (None, None) => Ok(None),
        (Some(b), Some(e)) if e > b => {
            let end = text[e..]
                .find('\n')
                .map(|n| e + n + 1)
                .unwrap_or(text.len());
            let before = &text[..b];
            let before = match before.strip_suffix("\n\n") {
                Some(rest) => &before[..rest.len() + 1],
                None => before,
            };
            Ok(Some(format!("{before}{}", &text[end..])))
        }
        _ => Err(Error::UnsupportedTemplate {
            path: path.to_path_buf(),
            reason: "the wasmpod block markers are damaged (one of BEGIN/END is missing)".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RuntimeSettings {
        RuntimeSettings {
            bin_dir: "/opt/wasmpod/bin".into(),
            systemd_cgroup: None,
            handlers: HANDLERS.iter().map(|s| s.to_string()).collect(),
        }
    }

    const V2: &str = r#"# my comment
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"   # keep me

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = true
"#;

    #[test]
    fn v2_patch_keeps_everything_and_follows_runc() {
        let (v, out) = patch_text(V2, Path::new("c.toml"), None, &settings(), &[]).unwrap();
        assert_eq!(v, ConfigVersion::V2);
        assert!(out.starts_with(V2), "original text kept as is:\n{out}");
        let doc = parse(&out, Path::new("x")).unwrap();
        assert!(has_runtimes(&doc, v, &settings()));
        let rts = runtimes(&doc, v);
        assert_eq!(rts.len(), 3);
        assert!(
            out.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]")
        );
        assert!(out.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime-isolated.options]\nSystemdCgroup = true"), "{out}");
        // Each handler runs its own shim.
        assert!(out.contains(
            "runtime_type = \"io.containerd.wasmtime-isolated.v1\"\nruntime_path = \"/opt/wasmpod/bin/containerd-shim-wasmtime-isolated-v1\""
        ), "{out}");
        assert!(out.contains(
            "runtime_type = \"io.containerd.wasmtime.v1\"\nruntime_path = \"/opt/wasmpod/bin/containerd-shim-wasmtime-v1\""
        ), "{out}");
        // Pinned modules' annotations reach the containers' specs.
        assert_eq!(
            out.matches("pod_annotations = [\"wasmpod.dev/*\"]").count(),
            HANDLERS.len(),
            "{out}"
        );
        // idempotent
        let (_, again) = patch_text(&out, Path::new("c.toml"), None, &settings(), &[]).unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn v3_uses_the_runtime_plugin() {
        let text = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\nSystemdCgroup = false\n";
        let (v, out) = patch_text(text, Path::new("c"), None, &settings(), &[]).unwrap();
        assert_eq!(v, ConfigVersion::V3);
        let doc = parse(&out, Path::new("x")).unwrap();
        assert_eq!(systemd_cgroup(&doc, v), Some(false));
        assert!(has_runtimes(&doc, v, &settings()));
        assert!(out.starts_with(text));
    }

    #[test]
    fn refuses_unknown_versions_and_bad_toml() {
        for (text, want) in [
            ("version = 5\n", "version 5"),
            ("[plugins]\n", "version 1 (no `version` key)"),
            ("version = \"2\"\n", "version \"2\""),
        ] {
            let e = patch_text(text, Path::new("c"), None, &settings(), &[]).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let e = patch_text(
            "version = 2\n[plugins\n",
            Path::new("c"),
            None,
            &settings(),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, Error::Toml { .. }), "{e}");
    }

    #[test]
    fn no_empty_options_table_without_systemd_cgroup() {
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\nruntime_type = \"io.containerd.runc.v2\"\n";
        let (_, out) = patch_text(text, Path::new("c"), None, &settings(), &[]).unwrap();
        assert!(!out.contains(".options]"), "{out}");
        // one an older install wrote is taken out
        let ours = "runtime_path = \"/opt/wasmpod/bin/containerd-shim-wasmtime-v1\"\npod_annotations = [\"wasmpod.dev/*\"]\n";
        let old = out.replace(
            ours,
            &format!("{ours}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime.options]\n"),
        );
        assert_ne!(old, out);
        let (_, fixed) = patch_text(&old, Path::new("c"), None, &settings(), &[]).unwrap();
        assert!(!fixed.contains(".options]"), "{fixed}");
        // with runc's SystemdCgroup both get it
        let (_, v2) = patch_text(V2, Path::new("c"), None, &settings(), &[]).unwrap();
        assert_eq!(v2.matches("SystemdCgroup = true").count(), 3, "{v2}");
    }

    #[test]
    fn corrects_a_stale_runtime_path() {
        let (_, out) = patch_text(V2, Path::new("c"), None, &settings(), &[]).unwrap();
        let mut s = settings();
        s.bin_dir = "/usr/local/bin".into();
        let (_, moved) = patch_text(&out, Path::new("c"), None, &s, &[]).unwrap();
        assert!(moved.contains("runtime_path = \"/usr/local/bin/containerd-shim-wasmtime-v1\""));
        assert!(moved
            .contains("runtime_path = \"/usr/local/bin/containerd-shim-wasmtime-isolated-v1\""));
        assert!(!moved.contains("/opt/wasmpod"));
    }

    #[test]
    fn containerd_versions_map_to_config_versions() {
        assert_eq!(
            ConfigVersion::for_containerd("1.7.24"),
            Some(ConfigVersion::V2)
        );
        assert_eq!(
            ConfigVersion::for_containerd("v2.1.9"),
            Some(ConfigVersion::V3)
        );
        assert_eq!(ConfigVersion::for_containerd("3.0"), None);
    }

    #[test]
    fn templates_build_on_base_and_keep_one_block() {
        let p = Path::new("t");
        let new = patch_template(None, p, ConfigVersion::V2, &settings()).unwrap();
        assert!(new.starts_with(BASE_TEMPLATE));
        assert_eq!(
            patch_template(Some(&new), p, ConfigVersion::V2, &settings()).unwrap(),
            new
        );
        let user = "{{ template \"base\" . }}\n\n[plugins.\"x\"]\n  a = 1\n";
        let patched = patch_template(Some(user), p, ConfigVersion::V3, &settings()).unwrap();
        assert!(patched.starts_with(user));
        assert!(patched.contains("io.containerd.cri.v1.runtime"));
        assert_eq!(patched.matches(BLOCK_BEGIN).count(), 1);
        let e =
            patch_template(Some("version = 2\n"), p, ConfigVersion::V2, &settings()).unwrap_err();
        assert!(e.to_string().contains("frozen copy"), "{e}");
    }

    #[test]
    fn unpatch_takes_out_only_what_wasmpod_added() {
        let (v, out) = patch_text(V2, Path::new("c"), None, &settings(), &[]).unwrap();
        let (back, done) = unpatch_text(&out, Path::new("c"), &settings(), Some(V2)).unwrap();
        assert_eq!(back, V2, "an unchanged install comes out as the original");
        assert_eq!(done, HANDLERS);
        // Someone replaced `wasmtime` with their own since: it is theirs now and stays.
        let theirs = out.replace(
            "runtime_path = \"/opt/wasmpod/bin/containerd-shim-wasmtime-v1\"",
            "runtime_path = \"/usr/local/bin/their-shim\"",
        );
        let (back, done) = unpatch_text(&theirs, Path::new("c"), &settings(), Some(V2)).unwrap();
        assert_eq!(done, ["wasmtime-isolated"]);
        let doc = parse(&back, Path::new("c")).unwrap();
        assert_eq!(runtimes(&doc, v).len(), 2, "{back}");
        // Runtimes that were wasmpod's before install (written by hand) stay too.
        let (again, done) = unpatch_text(&out, Path::new("c"), &settings(), Some(&out)).unwrap();
        assert_eq!((again.as_str(), done.len()), (out.as_str(), 0));
    }

    #[test]
    fn a_runtime_taken_over_is_replaced_whole_and_put_back() {
        let theirs = format!(
            "{V2}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.wasmtime]\n  # KWasm's\n  runtime_type = \"io.containerd.wasmtime.v1\"\n  pod_annotations = [\"x\"]\n"
        );
        let (v, out) = patch_text(
            &theirs,
            Path::new("c"),
            None,
            &settings(),
            &["wasmtime".into()],
        )
        .unwrap();
        let doc = parse(&out, Path::new("c")).unwrap();
        assert!(has_runtimes(&doc, v, &settings()), "{out}");
        assert!(!out.contains("pod_annotations = [\"x\"]"), "{out}");
        assert!(out.contains("Taken over by wasmpod-installer"), "{out}");
        let (back, done) = unpatch_text(&out, Path::new("c"), &settings(), Some(&theirs)).unwrap();
        assert_eq!(done, HANDLERS);
        let doc = parse(&back, Path::new("c")).unwrap();
        let w = runtimes(&doc, v)
            .into_iter()
            .find(|r| r.name == "wasmtime")
            .unwrap();
        assert_eq!(w.runtime_type.as_deref(), Some("io.containerd.wasmtime.v1"));
        assert!(
            back.contains("pod_annotations = [\"x\"]") && back.contains("# KWasm's"),
            "{back}"
        );
        assert!(!back.contains("wasmtime-isolated"), "{back}");
    }

    #[test]
    fn foreign_runtimes_are_told_apart_from_wasmpods() {
        let s = settings();
        let found = |runtime_type: &str, runtime_path: Option<&str>| FoundRuntime {
            name: "wasmtime".into(),
            runtime_type: Some(runtime_type.into()),
            runtime_path: runtime_path.map(str::to_string),
            binary_name: None,
        };
        assert!(found(
            crate::RUNTIME_TYPE,
            Some("/opt/wasmpod/bin/containerd-shim-wasmtime-v1")
        )
        .is_wasmpod(&s));
        // runwasi's type with the shim on containerd's PATH, or somewhere else: not ours
        assert!(!found(crate::RUNTIME_TYPE, None).is_wasmpod(&s));
        assert!(!found(
            crate::RUNTIME_TYPE,
            Some("/usr/local/bin/containerd-shim-wasmtime-v1")
        )
        .is_wasmpod(&s));
        assert!(!found(
            "io.containerd.wasmtime.v2",
            Some("/opt/wasmpod/bin/containerd-shim-wasmtime-v1")
        )
        .is_wasmpod(&s));
    }

    #[test]
    fn the_shim_containerd_starts_comes_from_runtime_type_or_path() {
        let r = |t: &str, p: Option<&str>, b: Option<&str>| FoundRuntime {
            name: "wasmtime".into(),
            runtime_type: Some(t.into()),
            runtime_path: p.map(str::to_string),
            binary_name: b.map(str::to_string),
        };
        // what k3s registers: BinaryName does not name the shim
        assert_eq!(
            r(
                "io.containerd.wasmtime.v2",
                None,
                Some("/usr/bin/containerd-shim-wasmtime-v1")
            )
            .shim_binary(),
            "containerd-shim-wasmtime-v2 (from containerd's PATH)"
        );
        assert_eq!(
            r(
                crate::RUNTIME_TYPE,
                Some("/opt/wasmpod/bin/containerd-shim-wasmtime-v1"),
                None
            )
            .shim_binary(),
            "/opt/wasmpod/bin/containerd-shim-wasmtime-v1"
        );
        assert!(r("runc", None, None).shim_binary().starts_with("no shim"));
    }

    #[test]
    fn template_blocks_come_out_and_the_rest_stays() {
        let p = Path::new("t");
        let user = "{{ template \"base\" . }}\n\n[plugins.\"x\"]\n  a = 1\n";
        let patched = patch_template(Some(user), p, ConfigVersion::V2, &settings()).unwrap();
        assert_eq!(
            remove_template_block(&patched, p).unwrap().as_deref(),
            Some(user)
        );
        let later = format!("{patched}# added later\n");
        assert_eq!(
            remove_template_block(&later, p).unwrap().unwrap(),
            format!("{user}# added later\n")
        );
        assert_eq!(remove_template_block(user, p).unwrap(), None);
        let damaged = patched.replace(BLOCK_END, "");
        assert!(remove_template_block(&damaged, p).is_err());
    }

    #[test]
    fn only_version_left() {
        let p = Path::new("c");
        assert!(holds_only_version("version = 2\n[plugins.\"a\".b]\n", p).unwrap());
        assert!(!holds_only_version("version = 2\n[plugins.\"a\"]\nb = 1\n", p).unwrap());
        let created = fresh(ConfigVersion::V3, &settings(), "# h\n").unwrap();
        let (rest, _) = unpatch_text(&created, p, &settings(), None).unwrap();
        assert!(holds_only_version(&rest, p).unwrap(), "{rest}");
    }
}
