//! The limits of the cgroup a process was placed in, read from cgroupfs (v1 and v2), and its
//! count of kernel OOM kills.
//!
//! Inside a container `/proc/self/cgroup` names the node's cgroup path while `/sys/fs/cgroup`
//! may show either the whole hierarchy or only the container's own cgroup (as youki mounts it
//! on v1 without a cgroup namespace), so each file is looked for under the named path first
//! and at the hierarchy's top second.

use std::path::{Path, PathBuf};

use wasmpod_engine::Limits;

/// v1 reports "no limit" as the largest page-aligned i64; anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

/// One line of `/proc/<pid>/cgroup`: the hierarchy's controllers ("" for v2) and the path.
fn memberships(proc_cgroup: &str) -> Vec<(String, String)> {
    proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Where `file` of the `controller` hierarchy is for a process with these memberships.
fn locate(
    root: &Path,
    memberships: &[(String, String)],
    controller: &str,
    file: &str,
) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    for (controllers, path) in memberships {
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == controller) {
            let dir = root.join(controllers);
            candidates.push(dir.join(rel).join(file));
            candidates.push(dir.join(file));
            let single = root.join(controller);
            candidates.push(single.join(rel).join(file));
            candidates.push(single.join(file));
        } else if controllers.is_empty() {
            candidates.push(root.join(rel).join(file));
            candidates.push(root.join(file));
            // Hybrid hosts mount the v2 hierarchy at unified/.
            candidates.push(root.join("unified").join(rel).join(file));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn read(path: Option<PathBuf>) -> Option<String> {
    std::fs::read_to_string(path?)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The memory and CPU limits of the cgroup described by `proc_cgroup`, under the cgroupfs
/// mounted at `root`, and the memory it has in use.
pub fn limits(proc_cgroup: &str, root: &Path) -> (Limits, Option<u64>) {
    let m = memberships(proc_cgroup);
    let v1_memory = read(locate(root, &m, "memory", "memory.limit_in_bytes"))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| *v < V1_UNLIMITED);
    let v2_memory = read(locate(root, &m, "", "memory.max")).and_then(|v| v.parse::<u64>().ok());
    let usage = read(locate(root, &m, "memory", "memory.usage_in_bytes"))
        .or_else(|| read(locate(root, &m, "", "memory.current")))
        .and_then(|v| v.parse::<u64>().ok());
    let v1_cpu = read(locate(root, &m, "cpu", "cpu.cfs_quota_us"))
        .and_then(|q| q.parse::<i64>().ok())
        .filter(|q| *q > 0)
        .and_then(|q| {
            let period = read(locate(root, &m, "cpu", "cpu.cfs_period_us"))?
                .parse()
                .ok()?;
            Some((q as u64, period))
        });
    let v2_cpu = read(locate(root, &m, "", "cpu.max")).and_then(|v| {
        let (quota, period) = v.split_once(' ')?;
        Some((quota.parse().ok()?, period.parse().ok()?))
    });
    let limits = Limits {
        memory: v1_memory.or(v2_memory),
        cpu: v1_cpu.or(v2_cpu),
        // Between containers the kernel weighs processes by their cgroups; within one process
        // there is only the one guest.
        cpu_shares: None,
    };
    (limits, usage)
}

/// The limits of this process's own cgroup.
pub fn own_limits() -> (Limits, Option<u64>) {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    limits(&proc_cgroup, Path::new("/sys/fs/cgroup"))
}

/// The file counting kernel OOM kills in the memory cgroup of `pid` (node view).
pub fn oom_events_file(pid: i32) -> Option<PathBuf> {
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let m = memberships(&proc_cgroup);
    let root = Path::new("/sys/fs/cgroup");
    locate(root, &m, "memory", "memory.oom_control")
        .or_else(|| locate(root, &m, "", "memory.events"))
}

/// The `oom_kill` count in a `memory.oom_control` (v1) or `memory.events` (v2) file.
pub fn oom_kills(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, file: &str, content: &str) {
        let p = root.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn v1_with_the_whole_hierarchy_mounted() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let pod = "kubepods/pod1/c1";
        put(
            r,
            &format!("memory/{pod}/memory.limit_in_bytes"),
            "67108864\n",
        );
        put(
            r,
            &format!("memory/{pod}/memory.usage_in_bytes"),
            "5000000\n",
        );
        put(r, &format!("cpu,cpuacct/{pod}/cpu.cfs_quota_us"), "20000\n");
        put(
            r,
            &format!("cpu,cpuacct/{pod}/cpu.cfs_period_us"),
            "100000\n",
        );
        // The hierarchy's top has no limit; the container's own cgroup wins.
        put(r, "memory/memory.limit_in_bytes", "9223372036854771712\n");
        let proc = format!("12:memory:/{pod}\n4:cpu,cpuacct:/{pod}\n0::/\n");
        let (l, usage) = limits(&proc, r);
        assert_eq!(l.memory, Some(64 << 20));
        assert_eq!(l.cpu, Some((20000, 100000)));
        assert_eq!(usage, Some(5000000));
    }

    #[test]
    fn v1_with_only_the_own_cgroup_mounted() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "memory/memory.limit_in_bytes", "9223372036854771712\n");
        put(r, "cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
        put(r, "cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        let (l, _) = limits("12:memory:/kubepods/x\n4:cpu,cpuacct:/kubepods/x\n", r);
        assert_eq!(l, Limits::default());
        put(r, "memory/memory.limit_in_bytes", "1048576\n");
        put(r, "cpu,cpuacct/cpu.cfs_quota_us", "50000\n");
        let (l, _) = limits("12:memory:/kubepods/x\n4:cpu,cpuacct:/kubepods/x\n", r);
        assert_eq!(l.memory, Some(1 << 20));
        assert_eq!(l.cpu, Some((50000, 100000)));
    }

    #[test]
    fn v2() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        put(r, "kubepods/c1/memory.max", "max\n");
        put(r, "kubepods/c1/cpu.max", "max 100000\n");
        let (l, _) = limits("0::/kubepods/c1\n", r);
        assert_eq!(l, Limits::default());
        put(r, "kubepods/c1/memory.max", "134217728\n");
        put(r, "kubepods/c1/cpu.max", "25000 100000\n");
        put(r, "kubepods/c1/memory.current", "1234\n");
        let (l, usage) = limits("0::/kubepods/c1\n", r);
        assert_eq!(l.memory, Some(128 << 20));
        assert_eq!(l.cpu, Some((25000, 100000)));
        assert_eq!(usage, Some(1234));
    }

    #[test]
    fn oom_kill_counts() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&f), 2);
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(oom_kills(&f), 1);
        assert_eq!(oom_kills(&t.path().join("missing")), 0);
    }
}
