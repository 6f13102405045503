//! Puts the pod's shim process into the pod's cgroup, so the limits the kubelet sets on the
//! pod are enforced by the kernel around the engine's own, and per-pod metrics count the
//! process that really runs the pod.
//!
//! The sandbox spec's `linux.cgroupsPath` names the cgroup. The cgroupfs form (a path, e.g.
//! `/kubepods/burstable/pod<uid>/<sandbox-id>`) is joined in every mounted hierarchy, v1 and
//! v2; directories the shim creates it removes again when the pod ends, after moving itself
//! back. The systemd form (`kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`) is turned
//! into the path systemd gives that unit (`/kubepods.slice/kubepods-burstable.slice/…/
//! cri-containerd-<id>.scope`) and joined the same way, without asking systemd for a transient
//! unit over D-Bus: the pod's slice is the kubelet's and already exists, and the scope is the
//! shim's alone.

use std::fs;
use std::path::{Path, PathBuf};

/// A cgroup the shim joined, and how to leave it.
#[derive(Debug)]
pub struct PodCgroup {
    /// (hierarchy mount point, cgroup the shim came from).
    origins: Vec<(PathBuf, String)>,
    /// Directories created by the shim, parents first.
    created: Vec<PathBuf>,
    /// The memory controller's hierarchy and the joined cgroup in it, when one is mounted.
    memory: Option<(PathBuf, PathBuf)>,
}

/// Why the pod's cgroup could not be joined.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Systemd(#[from] wasmpod_oci::cgroup::SystemdPathError),
    #[error("invalid cgroups path {0:?}")]
    Invalid(String),
    #[error("cannot create {}: {source}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot join {}: {source}", .path.display())]
    Join {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("{}: {source}", .path.display())]
    Proc {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Joins the cgroup named by `cgroups_path`, or returns why not.
pub fn join(cgroups_path: &str) -> Result<PodCgroup, CgroupError> {
    let path = if wasmpod_oci::cgroup::is_systemd_form(cgroups_path) {
        wasmpod_oci::cgroup::systemd_path(cgroups_path)?
    } else {
        cgroups_path.to_string()
    };
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == "..") {
        return Err(CgroupError::Invalid(cgroups_path.to_string()));
    }
    let own = own_cgroups()?;
    let mut joined = PodCgroup {
        origins: Vec::new(),
        created: Vec::new(),
        memory: None,
    };
    for (mount, key, origin) in hierarchies()?.into_iter().filter_map(|(mount, key)| {
        own.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, path)| (mount, key.clone(), path.clone()))
    }) {
        let target = mount.join(rel);
        let mut missing = Vec::new();
        let mut dir = target.as_path();
        while !dir.exists() && dir != mount {
            missing.push(dir.to_path_buf());
            dir = dir.parent().unwrap_or(&mount);
        }
        if let Err(source) = fs::create_dir_all(&target) {
            joined.leave();
            return Err(CgroupError::Create {
                path: target,
                source,
            });
        }
        joined.created.extend(missing.iter().rev().cloned());
        inherit_cpusets(&mount, &target);
        if let Err(source) = fs::write(target.join("cgroup.procs"), std::process::id().to_string())
        {
            joined.leave();
            return Err(CgroupError::Join {
                path: target,
                source,
            });
        }
        let is_memory = key.split(',').any(|c| c == "memory")
            || (key.is_empty() && target.join("memory.max").exists());
        if is_memory {
            joined.memory = Some((mount.clone(), target.clone()));
        }
        joined.origins.push((mount, origin));
    }
    if joined.origins.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    Ok(joined)
}

impl PodCgroup {
    /// The memory limits the kubelet set on the pod (and its parents) that this process is
    /// now held to, or None when none is set.
    pub fn memory_limits(&self) -> Option<MemoryLimits> {
        let (mount, target) = self.memory.as_ref()?;
        let v2 = target.join("memory.max").exists();
        let dirs: Vec<PathBuf> = target
            .ancestors()
            .take_while(|d| d.starts_with(mount))
            .filter(|d| read_limit(d, v2).is_some())
            .map(Path::to_path_buf)
            .collect();
        (!dirs.is_empty()).then_some(MemoryLimits { dirs, v2 })
    }

    /// Moves the shim back where it came from and removes what it created, so nothing of the
    /// pod stays behind.
    pub fn leave(&mut self) {
        let pid = std::process::id().to_string();
        for (mount, origin) in self.origins.drain(..) {
            let procs = mount
                .join(origin.trim_start_matches('/'))
                .join("cgroup.procs");
            if let Err(e) = fs::write(&procs, &pid) {
                tracing::warn!("cannot move back to {}: {e}", procs.display());
            }
        }
        for dir in self.created.drain(..).rev() {
            match fs::remove_dir(&dir) {
                // A parent another pod still uses stays, as the kubelet's own parents do.
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOTEMPTY)
                        || e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => tracing::warn!("cannot remove cgroup {}: {e}", dir.display()),
                Ok(()) => {}
            }
        }
    }
}

/// The memory cgroups with a limit from the pod's up to the hierarchy's root, read at every
/// guest memory grow: the kernel kills the whole shim when the pod's cgroup is full, so the
/// engine must refuse a guest the memory first (see `engine::ProcessMemory`).
#[derive(Debug)]
pub struct MemoryLimits {
    dirs: Vec<PathBuf>,
    v2: bool,
}

/// v1 reports "no limit" as the largest page-aligned value; anything this large is none.
const UNLIMITED: u64 = 1 << 62;

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_limit(dir: &Path, v2: bool) -> Option<u64> {
    let file = if v2 {
        "memory.max"
    } else {
        "memory.limit_in_bytes"
    };
    read_u64(&dir.join(file)).filter(|l| *l < UNLIMITED)
}

/// The page cache the kernel reclaims before it kills: what the kubelet's "working set"
/// leaves out of usage too.
fn inactive_file(dir: &Path, v2: bool) -> u64 {
    let key = if v2 {
        "inactive_file"
    } else {
        "total_inactive_file"
    };
    fs::read_to_string(dir.join("memory.stat"))
        .ok()
        .and_then(|stat| {
            stat.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

impl wasmpod_engine::MemorySource for MemoryLimits {
    fn reading(&self, precise: bool) -> Option<(u64, u64)> {
        let usage_file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        self.dirs
            .iter()
            .filter_map(|dir| {
                let limit = read_limit(dir, self.v2)?;
                let mut usage = read_u64(&dir.join(usage_file))?;
                if precise {
                    usage = usage.saturating_sub(inactive_file(dir, self.v2));
                }
                Some((limit, usage))
            })
            .min_by_key(|(limit, usage)| limit.saturating_sub(*usage))
    }
}

/// A new v1 cpuset has no CPUs or memory nodes, and nothing can join it until it inherits
/// its parent's, as runc does it. Every directory from the hierarchy's root down to `target`
/// is seen to, parents first, not only those this shim created: a parent another pod's shim
/// created a moment ago may not have its CPUs yet (joining then fails with ENOSPC).
fn inherit_cpusets(mount: &Path, target: &Path) {
    let mut chain: Vec<&Path> = target
        .ancestors()
        .take_while(|d| *d != mount && d.starts_with(mount))
        .collect();
    chain.reverse();
    for dir in chain {
        inherit_cpuset(dir);
    }
}

fn inherit_cpuset(dir: &Path) {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        let empty = fs::read_to_string(&own).is_ok_and(|v| v.trim().is_empty());
        if let (true, Some(parent)) = (empty, dir.parent()) {
            if let Ok(v) = fs::read_to_string(parent.join(file)) {
                let _ = fs::write(&own, v.trim());
            }
        }
    }
}

/// The process's cgroups, as (hierarchy key, path): the key is the v1 controller list
/// (`cpu,cpuacct`, `name=systemd`) or empty for v2.
fn own_cgroups() -> Result<Vec<(String, String)>, CgroupError> {
    Ok(parse_proc_cgroup(&read_proc("/proc/self/cgroup")?))
}

fn parse_proc_cgroup(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Mounted cgroup hierarchies as (mount point, hierarchy key), from mountinfo.
fn hierarchies() -> Result<Vec<(PathBuf, String)>, CgroupError> {
    Ok(parse_mountinfo(&read_proc("/proc/self/mountinfo")?))
}

fn read_proc(path: &str) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Proc {
        path: path.into(),
        source,
    })
}

fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split(' ').nth(4).map(Path::new);
        let mut r = right.split(' ');
        let (fstype, _source, superopts) = (r.next(), r.next(), r.next().unwrap_or(""));
        let Some(mount) = mount else { continue };
        match fstype {
            Some("cgroup2") => out.push((mount.to_path_buf(), String::new())),
            Some("cgroup") => {
                // The hierarchy key in /proc/self/cgroup lists its controllers (or name=).
                let key: Vec<&str> = superopts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro")
                            && !o.starts_with("release_agent")
                            && *o != "clone_children"
                            && *o != "noprefix"
                            && *o != "xattr"
                    })
                    .collect();
                out.push((mount.to_path_buf(), key.join(",")));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hybrid_hierarchies() {
        let mountinfo = "\
30 24 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw shared:14 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw shared:15 - cgroup cgroup rw,memory
";
        assert_eq!(
            parse_mountinfo(mountinfo),
            vec![
                (PathBuf::from("/sys/fs/cgroup/unified"), String::new()),
                (
                    PathBuf::from("/sys/fs/cgroup/systemd"),
                    "name=systemd".to_string()
                ),
                (
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                    "cpu,cpuacct".to_string()
                ),
                (PathBuf::from("/sys/fs/cgroup/memory"), "memory".to_string()),
            ]
        );
        let own = parse_proc_cgroup("12:memory:/a/b\n4:cpu,cpuacct:/a\n1:name=systemd:/x\n0::/y\n");
        assert_eq!(own[0], ("memory".to_string(), "/a/b".to_string()));
        assert_eq!(own[3], (String::new(), "/y".to_string()));
    }

    #[test]
    fn cpusets_are_inherited_down_the_whole_path() {
        let t = tempfile::tempdir().unwrap();
        let mount = t.path();
        let put = |dir: &str, v: &str| {
            std::fs::create_dir_all(mount.join(dir)).unwrap();
            for f in ["cpuset.cpus", "cpuset.mems"] {
                std::fs::write(mount.join(dir).join(f), v).unwrap();
            }
        };
        put("", "0-1\n");
        // A parent another shim created, still empty, and this shim's own new cgroup.
        put("k8s.io", "");
        put("k8s.io/pod", "");
        inherit_cpusets(mount, &mount.join("k8s.io/pod"));
        for dir in ["k8s.io", "k8s.io/pod"] {
            let cpus = std::fs::read_to_string(mount.join(dir).join("cpuset.cpus")).unwrap();
            assert_eq!(cpus, "0-1", "{dir}");
        }
    }

    #[test]
    fn memory_limits_are_read_from_the_tightest_cgroup() {
        use wasmpod_engine::MemorySource;
        let t = tempfile::tempdir().unwrap();
        let mount = t.path();
        let put = |dir: &str, limit: &str, usage: u64, inactive: u64| {
            let d = mount.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("memory.limit_in_bytes"), limit).unwrap();
            std::fs::write(d.join("memory.usage_in_bytes"), usage.to_string()).unwrap();
            std::fs::write(
                d.join("memory.stat"),
                format!("cache 5\ntotal_inactive_file {inactive}\ntotal_rss 1\n"),
            )
            .unwrap();
        };
        put("", "9223372036854771712\n", 900 << 20, 0);
        put("kubepods", "2147483648\n", 800 << 20, 0);
        put("kubepods/pod1", "41943040\n", 30 << 20, 8 << 20);
        put(
            "kubepods/pod1/sandbox",
            "9223372036854771712\n",
            30 << 20,
            8 << 20,
        );
        let cgroup = PodCgroup {
            origins: Vec::new(),
            created: Vec::new(),
            memory: Some((mount.to_path_buf(), mount.join("kubepods/pod1/sandbox"))),
        };
        let limits = cgroup.memory_limits().expect("limits");
        assert_eq!(limits.dirs.len(), 2, "{limits:?}");
        assert_eq!(limits.reading(false), Some((40 << 20, 30 << 20)));
        assert_eq!(limits.reading(true), Some((40 << 20, 22 << 20)));
    }

    #[test]
    fn refuses_escaping_paths() {
        // Only refusals here: a valid path would really move the test process.
        assert!(join("/a/../../etc").is_err());
        assert!(join("").is_err());
        assert!(join("nota.slice-name:p:n").is_err());
    }
}
