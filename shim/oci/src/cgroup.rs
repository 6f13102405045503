//! The spec's `linux.cgroupsPath` in systemd's form, `slice:prefix:name` (containerd passes it
//! so when the runtime has `SystemdCgroup = true`), as the directory systemd gives that unit.
//! Both hosts join or create that directory themselves instead of asking systemd over D-Bus:
//! the pod's slice is the kubelet's and already exists, and nodes without a system bus (kind's)
//! work the same.

/// A cgroups path that is not `slice:prefix:name`.
#[derive(Debug, thiserror::Error)]
#[error("systemd cgroups path {path:?}: {reason}")]
pub struct SystemdPathError {
    pub path: String,
    pub reason: String,
}

/// Whether `cgroups_path` is in systemd's form (cgroupfs paths have no `:`).
pub fn is_systemd_form(cgroups_path: &str) -> bool {
    cgroups_path.contains(':')
}

/// The cgroup directory systemd uses for `slice:prefix:name`: the slice expanded into its
/// parents (`a-b.slice` lives in `a.slice`), then the unit `prefix-name.scope`.
pub fn systemd_path(spec: &str) -> Result<String, SystemdPathError> {
    let err = |reason: String| SystemdPathError {
        path: spec.to_string(),
        reason,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(err("not slice:prefix:name".into()));
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let Some(stem) = slice.strip_suffix(".slice") else {
        return Err(err(format!("{slice:?} is not a slice name")));
    };
    let invalid =
        |s: &str| s.contains('/') || s.starts_with('-') || s.ends_with('-') || s.contains("--");
    if stem != "-" && invalid(stem) {
        return Err(err(format!("{slice:?} is not a valid slice name")));
    }
    if name.contains('/') || prefix.contains('/') || name == ".." {
        return Err(err(format!("{name:?} is not a unit name")));
    }
    let mut path = String::new();
    if stem != "-" {
        let mut acc = String::new();
        for word in stem.split('-') {
            if !acc.is_empty() {
                acc.push('-');
            }
            acc.push_str(word);
            path.push('/');
            path.push_str(&acc);
            path.push_str(".slice");
        }
    }
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    Ok(format!("{path}/{unit}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_paths_expand_like_systemd() {
        assert_eq!(
            systemd_path("kubepods-burstable-pod1234.slice:cri-containerd:abc").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abc.scope"
        );
        assert_eq!(
            systemd_path(":cri-containerd:abc").unwrap(),
            "/system.slice/cri-containerd-abc.scope"
        );
        assert_eq!(systemd_path("-.slice:p:n").unwrap(), "/p-n.scope");
        assert!(systemd_path("kubepods:cri:abc").is_err());
        assert!(systemd_path("a--b.slice:p:n").is_err());
        assert!(systemd_path("a:b").is_err());
        assert!(systemd_path("a.slice:p:../../x").is_err());
        assert!(is_systemd_form("a.slice:p:n") && !is_systemd_form("/kubepods/pod1/abc"));
    }
}
