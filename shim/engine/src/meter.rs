//! Per-guest accounting and limits, "cgroup-aligned": the guest's CPU time and linear memory
//! are measured here and held to the container's `linux.resources`, the way the kernel would
//! hold a process to its cgroup.
//!
//! - Memory: every memory and table grow is charged; a grow past the limit is denied, and a
//!   guest that then fails ends as if the OOM killer had struck (exit 137, an OOM event).
//!   Where the whole process is held to a limit of its own (the pod host lives in the pod's
//!   cgroup), a grow is also denied when the process would pass that limit: the kernel would
//!   otherwise take the memory back by killing the process, with every guest in it.
//! - CPU: the thread CPU time of every poll of the guest's future is charged. A CPU quota is a
//!   token bucket filled at `quota / period` cores; when the epoch callback finds it empty, the
//!   guest yields and sleeps until it is refilled, so over time it gets exactly its share.
//! - CPU shares: when more guests are runnable than the engine has threads, they share the
//!   threads in proportion to `cpu.shares`, as CFS shares a CPU between cgroups: each guest's
//!   CPU time is charged to a virtual clock at `1024 / shares`, and at an epoch tick a guest
//!   whose clock is ahead of a guest waiting for a thread steps aside until that one runs.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::identity::{AsIdentity, Identity};
use crate::ticker::Ticks;

/// Bytes kept out of a container's memory limit for what the host holds on the guest's
/// behalf (WASI state, I/O buffers): a sixteenth of the limit, at least 1 MiB, at most 8 MiB.
pub fn host_reserve(limit: u64) -> u64 {
    (limit / 16).clamp(1 << 20, 8 << 20)
}

/// Container limits as set in the OCI spec (or by an update). Absent means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory.limit` in bytes.
    pub memory: Option<u64>,
    /// `cpu.quota` and `cpu.period` in microseconds.
    pub cpu: Option<(u64, u64)>,
    /// `cpu.shares`: the guest's weight when guests compete for the engine's threads.
    pub cpu_shares: Option<u64>,
}

/// The weight of a guest without `cpu.shares`, as the kernel's default for a cgroup.
const DEFAULT_SHARES: u64 = 1024;
/// How far (in weighted CPU time) a guest may run ahead of a waiting one before it steps
/// aside: two epoch ticks, so guests of equal weight do not trade places at every tick.
const FAIR_SLACK_NS: u64 = 20_000_000;
/// How far behind a waiting guest's clock may be: one that slept for an hour gets a head start
/// of this much, not an hour of others stepping aside for it.
const FAIR_MAX_LAG_NS: u64 = 100_000_000;
/// The longest a guest steps aside at once; it then looks again.
const FAIR_WAIT: Duration = Duration::from_millis(10);

/// What one guest has used and may use. Shared between the running guest, the stats call and
/// updates.
#[derive(Debug, Default)]
pub struct Meter {
    /// Thread CPU time spent inside finished polls of the guest's tasks, in nanoseconds.
    cpu_ns: AtomicU64,
    /// The CPU quota's token bucket, shared by all the guest's tasks (an HTTP guest runs one
    /// per request).
    bucket: Mutex<Bucket>,
    /// Bytes of linear memory and table storage currently held.
    memory: AtomicU64,
    /// Guest memory cap in bytes (limit minus reserve); 0 means none.
    memory_cap: AtomicU64,
    cpu_quota_us: AtomicU64,
    cpu_period_us: AtomicU64,
    /// A grow was denied because of the memory limit.
    oom: AtomicBool,
    /// `cpu.shares` (0 until set: read as the default).
    shares: AtomicU64,
    /// CPU time charged at `1024 / shares`: who has had less than its share has the smaller.
    vruntime: AtomicU64,
    /// Runnable and waiting for a thread: set when the guest yields at an epoch tick (or is
    /// woken from stepping aside), cleared when it is polled again.
    waiting: AtomicBool,
    /// Stepping aside for a guest that had less than its share.
    stepping_aside: AtomicBool,
    /// The host wants the guest's future back (a kill): yield at the next tick.
    interrupted: AtomicBool,
    /// The limit of the process the guest runs in, shared with its other guests.
    process: OnceLock<Arc<ProcessMemory>>,
    /// The container's user, whose file access the guest has while it runs.
    identity: OnceLock<Identity>,
}

impl Meter {
    pub fn new(limits: Limits) -> Self {
        let m = Meter {
            bucket: Mutex::new(Bucket {
                last: Some(Instant::now()),
                tokens: 0.0,
            }),
            ..Default::default()
        };
        m.set_limits(limits);
        m
    }

    pub fn set_limits(&self, limits: Limits) {
        let cap = limits
            .memory
            .map(|l| l.saturating_sub(host_reserve(l)).max(1))
            .unwrap_or(0);
        self.memory_cap.store(cap, Ordering::Relaxed);
        let (quota, period) = limits.cpu.unwrap_or((0, 0));
        self.cpu_quota_us.store(quota, Ordering::Relaxed);
        self.cpu_period_us.store(period, Ordering::Relaxed);
        let shares = limits
            .cpu_shares
            .filter(|s| *s > 0)
            .unwrap_or(DEFAULT_SHARES);
        self.shares.store(shares, Ordering::Relaxed);
    }

    /// Holds the guest's grows to the process's own limit too (see [`ProcessMemory`]). Set
    /// once, before the guest runs.
    pub fn set_process_memory(&self, process: Arc<ProcessMemory>) {
        let _ = self.process.set(process);
    }

    /// Gives the guest the file access of `identity` on every poll (see [`Identity`]); root's
    /// is the shim's own and changes nothing. Fails if this thread cannot take it.
    pub fn set_identity(&self, identity: Identity) -> std::io::Result<()> {
        if identity.is_root() {
            return Ok(());
        }
        drop(AsIdentity::enter(&identity)?);
        let _ = self.identity.set(identity);
        Ok(())
    }

    /// Makes the guest yield to the executor at its next epoch tick, so whoever holds its
    /// future (a kill waiting to drop it) gets control within one tick.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Relaxed);
    }

    /// Whether [`Meter::interrupt`] was called (what a stop's tests check of it).
    #[cfg(test)]
    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// CPU time of the guest's finished polls (at most one epoch tick behind).
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(Ordering::Relaxed)
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
    }

    pub fn out_of_memory(&self) -> bool {
        self.oom.load(Ordering::Relaxed)
    }

    /// Cores the guest may use, when it has a CPU quota.
    fn cpu_rate(&self) -> Option<(f64, f64)> {
        let quota = self.cpu_quota_us.load(Ordering::Relaxed);
        let period = self.cpu_period_us.load(Ordering::Relaxed);
        (quota > 0 && period > 0).then(|| (quota as f64 / period as f64, quota as f64 * 1e3))
    }
}

#[derive(Debug, Default)]
struct Bucket {
    last: Option<Instant>,
    /// CPU nanoseconds the guest may still spend; negative is debt.
    tokens: f64,
}

thread_local! {
    /// Thread CPU clock when the poll running on this thread began (0: none).
    static POLL_START: Cell<u64> = const { Cell::new(0) };
}

/// The CPU time of one task of a guest (a command, or one HTTP request): what its epoch
/// callback charges.
#[derive(Debug, Default)]
pub struct TaskClock {
    /// CPU time of the task's finished polls.
    done: AtomicU64,
}

impl TaskClock {
    /// CPU time so far including the running poll. Only meaningful on the thread polling the
    /// task (the epoch callback runs there).
    fn now(&self) -> u64 {
        let start = POLL_START.with(Cell::get);
        let running = if start == 0 {
            0
        } else {
            thread_cpu_ns().saturating_sub(start)
        };
        self.done.load(Ordering::Relaxed) + running
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wraps a guest task's future and charges the thread CPU time of every poll to its `Meter`
/// and `TaskClock`. The guest runs only inside polls, so this is its CPU time.
pub struct Metered<F> {
    meter: Arc<Meter>,
    clock: Arc<TaskClock>,
    group: Arc<CpuGroup>,
    ticks: Ticks,
    inner: Pin<Box<F>>,
}

/// The engine's parts a guest's future runs with.
pub struct Group {
    pub cpu: Arc<CpuGroup>,
    pub ticks: Ticks,
}

impl<F: Future> Metered<F> {
    pub fn new(meter: Arc<Meter>, clock: Arc<TaskClock>, group: Group, inner: F) -> Self {
        group.cpu.join(&meter);
        Metered {
            meter,
            clock,
            group: group.cpu,
            ticks: group.ticks,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let before = thread_cpu_ns().max(1);
        // Polls nest when a guest task drives another future that is metered too; the outer
        // poll's start is restored afterwards.
        let outer = POLL_START.with(|p| p.replace(before));
        if self.meter.waiting.swap(false, Ordering::Relaxed) {
            self.group.picked_up();
        }
        // `set_identity` proved this works; a thread that then cannot must not run the
        // guest with root's access.
        let identity = self.meter.identity.get().map(|id| {
            AsIdentity::enter(id).unwrap_or_else(|e| {
                tracing::error!("a guest thread cannot take the container's identity: {e}");
                std::process::abort()
            })
        });
        // The epoch advances while the guest may be executing, and only then.
        let ticks = self.ticks.clone();
        let running = ticks.running();
        let out = self.inner.as_mut().poll(cx);
        drop(running);
        drop(identity);
        let spent = thread_cpu_ns().saturating_sub(before);
        self.meter.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        self.clock.done.fetch_add(spent, Ordering::Relaxed);
        POLL_START.with(|p| p.set(outer));
        out
    }
}

/// The guests of one engine, competing for its threads.
#[derive(Default)]
pub struct CpuGroup {
    members: Mutex<Vec<Weak<Meter>>>,
    /// Guests stepping aside right now, woken whenever a waiting guest gets a thread.
    stepping_aside: AtomicUsize,
    picked: tokio::sync::Notify,
}

impl CpuGroup {
    /// Adds a guest's meter (once: an HTTP guest's requests all share their container's).
    fn join(&self, meter: &Arc<Meter>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|m| m.strong_count() > 0);
        if members
            .iter()
            .any(|m| std::ptr::eq(m.as_ptr(), Arc::as_ptr(meter)))
        {
            return;
        }
        // A newcomer starts level with the least-served guest, not at zero, or it would hold
        // a thread until it had caught up with guests that ran for hours.
        let floor = members
            .iter()
            .filter_map(Weak::upgrade)
            .map(|m| m.vruntime.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        meter.vruntime.fetch_max(floor, Ordering::Relaxed);
        members.push(Arc::downgrade(meter));
    }

    /// Whether a guest waits for a thread that `meter` should give up: one whose virtual clock
    /// is behind by more than the slack.
    fn should_step_aside(&self, meter: &Meter) -> bool {
        let mine = meter.vruntime.load(Ordering::Relaxed);
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let mut behind = false;
        for m in members.iter().filter_map(Weak::upgrade) {
            if std::ptr::eq(m.as_ref(), meter) || !m.waiting.load(Ordering::Relaxed) {
                continue;
            }
            let theirs = m
                .vruntime
                .fetch_max(mine.saturating_sub(FAIR_MAX_LAG_NS), Ordering::Relaxed)
                .max(mine.saturating_sub(FAIR_MAX_LAG_NS));
            behind |= theirs + FAIR_SLACK_NS < mine;
        }
        behind
    }

    /// A guest got a thread: those stepping aside for it look again, and count as waiting
    /// until they are polled (those that must step aside further stop waiting right away).
    fn picked_up(&self) {
        if self.stepping_aside.load(Ordering::Relaxed) == 0 {
            return;
        }
        {
            let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            for m in members.iter().filter_map(Weak::upgrade) {
                if m.stepping_aside.load(Ordering::Relaxed) {
                    m.waiting.store(true, Ordering::Relaxed);
                }
            }
        }
        self.picked.notify_waiters();
    }

    /// Steps aside (leaving the thread to the waiting guests) until no waiting guest is
    /// behind this one any more, or for at most `FAIR_WAIT`. The guest does not count as
    /// waiting meanwhile, so no one steps aside for it and a thread is never left idle.
    pub async fn step_aside(self: Arc<Self>, meter: Arc<Meter>) {
        self.stepping_aside.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + FAIR_WAIT;
        loop {
            let picked = self.picked.notified();
            meter.waiting.store(false, Ordering::Relaxed);
            if !self.should_step_aside(&meter) || meter.interrupted.load(Ordering::Relaxed) {
                break;
            }
            meter.stepping_aside.store(true, Ordering::Relaxed);
            let woken = tokio::time::timeout_at(deadline, picked).await;
            meter.stepping_aside.store(false, Ordering::Relaxed);
            if woken.is_err() {
                break;
            }
        }
        self.stepping_aside.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a guest does at an epoch tick.
#[derive(Debug, PartialEq)]
pub enum Turn {
    /// Keep the thread: no waiting guest is owed it.
    Run,
    /// Yield to the executor and carry on.
    Continue,
    /// Sleep this long: the CPU quota is spent.
    Pause(Duration),
    /// Let a guest that had less than its share run first (`CpuGroup::step_aside`).
    StepAside,
}

/// The CPU quota's token bucket and the guest's fair share, consulted by the epoch callback
/// at every tick.
pub struct Throttle {
    meter: Arc<Meter>,
    clock: Arc<TaskClock>,
    group: Arc<CpuGroup>,
    last_cpu: u64,
    /// Ticks since the guest last gave its thread back to the executor.
    kept: u32,
}

/// A guest keeping its thread still yields to the executor this often (in ticks), so other
/// work queued on that thread runs.
const MAX_KEPT_TICKS: u32 = 10;

impl Throttle {
    pub fn new(meter: Arc<Meter>, clock: Arc<TaskClock>, group: Arc<CpuGroup>) -> Self {
        let last_cpu = clock.now();
        Throttle {
            meter,
            clock,
            group,
            last_cpu,
            kept: 0,
        }
    }

    /// The guest's turn at this tick: the quota comes first, then the fair share.
    pub fn turn(&mut self) -> Turn {
        let cpu = self.clock.now();
        let used = cpu.saturating_sub(self.last_cpu);
        self.last_cpu = cpu;
        let shares = self.meter.shares.load(Ordering::Relaxed).max(1);
        self.meter.vruntime.fetch_add(
            used.saturating_mul(DEFAULT_SHARES) / shares,
            Ordering::Relaxed,
        );
        let interrupted = self.meter.interrupted.load(Ordering::Relaxed);
        if let Some(pause) = self.meter.charge(used as f64).filter(|_| !interrupted) {
            self.kept = 0;
            return Turn::Pause(pause);
        }
        if !interrupted && self.group.should_step_aside(&self.meter) {
            self.kept = 0;
            return Turn::StepAside;
        }
        // Yielding at every tick would send the guest owed the most to the back of the queue,
        // behind guests owed less; it keeps its thread until someone is owed more.
        self.kept += 1;
        if !interrupted && self.kept < MAX_KEPT_TICKS {
            return Turn::Run;
        }
        self.kept = 0;
        self.meter.waiting.store(true, Ordering::Relaxed);
        Turn::Continue
    }
}

impl Meter {
    /// Charges CPU time to the quota's bucket; how long the guest must pause now to stay
    /// within its quota, if at all.
    fn charge(&self, used: f64) -> Option<Duration> {
        let now = Instant::now();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let wall = b
            .last
            .map_or(0.0, |l| now.duration_since(l).as_nanos() as f64);
        b.last = Some(now);
        let Some((rate, burst)) = self.cpu_rate() else {
            b.tokens = 0.0;
            return None;
        };
        // Unused time carries over up to one period's quota, like CFS's burst-free quota.
        b.tokens = (b.tokens + wall * rate).min(burst) - used;
        (b.tokens < 0.0).then(|| Duration::from_nanos((-b.tokens / rate) as u64))
    }
}

/// Charges memory and table growth to the `Meter` and denies what exceeds the limit.
pub struct Limiter {
    meter: Arc<Meter>,
    held: u64,
}

/// Table elements are charged at the size of a function reference.
const TABLE_ELEMENT_BYTES: u64 = 8;

impl Limiter {
    pub fn new(meter: Arc<Meter>) -> Self {
        Limiter { meter, held: 0 }
    }

    /// Charges what the host allocates on the guest's behalf (a connection's buffers): held
    /// to the same limits as the guest's own memory, but a denial is no out-of-memory of the
    /// guest's.
    pub fn reserve(&mut self, bytes: u64) -> bool {
        self.charge(bytes)
    }

    /// Charges what the host allocates because the guest asked for it (wasi:http fields, an
    /// outgoing body's buffer): like the guest's own memory, a denial is its out-of-memory.
    pub fn grow_host(&mut self, bytes: u64) -> bool {
        self.grow(bytes)
    }

    /// Gives back bytes charged by [`Limiter::reserve`] or [`Limiter::grow_host`] once the
    /// host has freed what they paid for.
    pub fn release(&mut self, bytes: u64) {
        let bytes = bytes.min(self.held);
        self.held -= bytes;
        self.meter.memory.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes this limiter holds of the container's limit.
    pub fn held(&self) -> u64 {
        self.held
    }

    fn grow(&mut self, bytes: u64) -> bool {
        let allowed = self.charge(bytes);
        if !allowed {
            self.meter.oom.store(true, Ordering::Relaxed);
        }
        allowed
    }

    fn charge(&mut self, bytes: u64) -> bool {
        let cap = self.meter.memory_cap.load(Ordering::Relaxed);
        // One atomic step, so that concurrent grows (an HTTP guest's instances) cannot
        // together pass the cap.
        let charged = self
            .meter
            .memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                let after = total.saturating_add(bytes);
                (cap == 0 || after <= cap).then_some(after)
            })
            .is_ok();
        let allowed = charged
            && self
                .meter
                .process
                .get()
                .is_none_or(|process| process.grant(bytes));
        if !allowed {
            if charged {
                self.meter.memory.fetch_sub(bytes, Ordering::Relaxed);
            }
            return false;
        }
        self.held += bytes;
        true
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.meter.memory.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current) as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(desired.saturating_sub(current) as u64 * TABLE_ELEMENT_BYTES))
    }
}

/// What the kernel says of the memory limits the whole process is held to.
pub trait MemorySource: Send + Sync {
    /// The tightest of the process's limits as (limit, usage) in bytes, or None when the
    /// process has none. `precise` asks for usage without the page cache the kernel would
    /// reclaim before it kills anyone (dearer to read; asked only when memory looks short).
    fn reading(&self, precise: bool) -> Option<(u64, u64)>;
}

/// Bytes kept free below the process's limit for what the host allocates between two grows
/// (buffers, requests, logs).
pub const PROCESS_MARGIN: u64 = 1 << 20;

/// The process's own memory limit, shared by all its guests: a grow is granted only while the
/// kernel's usage, plus what was granted but may not yet be touched, plus the grow, stays
/// [`PROCESS_MARGIN`] below the limit. Grants are made one at a time, so two guests cannot
/// both take the last free bytes.
pub struct ProcessMemory {
    source: Box<dyn MemorySource>,
    ledger: Mutex<Ledger>,
}

#[derive(Default)]
struct Ledger {
    /// Bytes granted that the kernel's usage may not show yet: a grow only reserves pages,
    /// and they are charged when the guest first touches them.
    untouched: u64,
    /// The usage at the previous grant: its rise since is taken as granted pages touched.
    usage: u64,
}

impl std::fmt::Debug for ProcessMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessMemory").finish_non_exhaustive()
    }
}

impl ProcessMemory {
    pub fn new(source: Box<dyn MemorySource>) -> Self {
        ProcessMemory {
            source,
            ledger: Mutex::default(),
        }
    }

    fn grant(&self, bytes: u64) -> bool {
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let Some((limit, usage)) = self.source.reading(false) else {
            return true;
        };
        ledger.untouched = ledger
            .untouched
            .saturating_sub(usage.saturating_sub(ledger.usage));
        ledger.usage = usage;
        let needed = ledger
            .untouched
            .saturating_add(bytes)
            .saturating_add(PROCESS_MARGIN);
        let fits = |(limit, usage): (u64, u64)| usage.saturating_add(needed) <= limit;
        let granted = fits((limit, usage)) || self.source.reading(true).is_none_or(fits);
        if granted {
            ledger.untouched = ledger.untouched.saturating_add(bytes);
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn reserve_is_a_sixteenth_within_bounds() {
        assert_eq!(host_reserve(4 << 20), 1 << 20);
        assert_eq!(host_reserve(64 << 20), 4 << 20);
        assert_eq!(host_reserve(1 << 30), 8 << 20);
    }

    #[test]
    fn grows_past_the_cap_are_denied_and_flagged() {
        let meter = Arc::new(Meter::new(Limits {
            memory: Some(32 << 20),
            ..Default::default()
        }));
        let mut l = Limiter::new(meter.clone());
        assert!(l.memory_growing(0, 16 << 20, None).unwrap());
        assert!(!meter.out_of_memory());
        assert!(!l.memory_growing(16 << 20, 32 << 20, None).unwrap());
        assert!(meter.out_of_memory());
        assert_eq!(meter.memory_bytes(), 16 << 20);
        drop(l);
        assert_eq!(meter.memory_bytes(), 0);
    }

    /// A process limit whose readings the test sets: (limit, usage, usage without cache).
    #[derive(Default)]
    struct FakeCgroup(Mutex<(u64, u64, u64)>);

    impl MemorySource for Arc<FakeCgroup> {
        fn reading(&self, precise: bool) -> Option<(u64, u64)> {
            let (limit, usage, working) = *self.0.lock().unwrap();
            Some((limit, if precise { working } else { usage }))
        }
    }

    fn in_process(cgroup: &Arc<FakeCgroup>) -> Arc<Meter> {
        let meter = Arc::new(Meter::new(Limits::default()));
        meter.set_process_memory(Arc::new(ProcessMemory::new(Box::new(cgroup.clone()))));
        meter
    }

    #[test]
    fn the_process_limit_denies_what_the_kernel_would_kill_for() {
        const MIB: u64 = 1 << 20;
        let cgroup = Arc::new(FakeCgroup::default());
        *cgroup.0.lock().unwrap() = (40 * MIB, 10 * MIB, 10 * MIB);
        let meter = in_process(&cgroup);
        let mut l = Limiter::new(meter.clone());
        // 10 MiB used, 40 MiB limit, 1 MiB margin: 29 MiB fit, 30 do not.
        assert!(!l.memory_growing(0, 30 << 20, None).unwrap());
        assert!(meter.out_of_memory());
        assert_eq!(meter.memory_bytes(), 0, "a denied grow is not charged");
        assert!(l.memory_growing(0, 20 << 20, None).unwrap());
        // Granted but untouched: the kernel shows no more, yet 20 MiB are spoken for.
        assert!(!l.memory_growing(20 << 20, 30 << 20, None).unwrap());
        // Once the guest has touched them, only the usage counts.
        *cgroup.0.lock().unwrap() = (40 * MIB, 30 * MIB, 30 * MIB);
        assert!(l.memory_growing(20 << 20, 29 << 20, None).unwrap());
        assert!(!l.memory_growing(29 << 20, 30 << 20, None).unwrap());
    }

    #[test]
    fn guests_of_one_process_share_its_limit() {
        const MIB: u64 = 1 << 20;
        let cgroup = Arc::new(FakeCgroup::default());
        *cgroup.0.lock().unwrap() = (40 * MIB, 10 * MIB, 10 * MIB);
        let process = Arc::new(ProcessMemory::new(Box::new(cgroup.clone())));
        let (a, b) = (
            Arc::new(Meter::new(Limits::default())),
            Arc::new(Meter::new(Limits::default())),
        );
        a.set_process_memory(process.clone());
        b.set_process_memory(process);
        let (mut la, mut lb) = (Limiter::new(a), Limiter::new(b.clone()));
        assert!(la.memory_growing(0, 16 << 20, None).unwrap());
        assert!(
            !lb.memory_growing(0, 16 << 20, None).unwrap(),
            "29 MiB free, 32 asked"
        );
        assert!(b.out_of_memory());
        assert!(lb.memory_growing(0, 12 << 20, None).unwrap());
    }

    #[test]
    fn reclaimable_cache_does_not_deny() {
        const MIB: u64 = 1 << 20;
        let cgroup = Arc::new(FakeCgroup::default());
        *cgroup.0.lock().unwrap() = (40 * MIB, 38 * MIB, 8 * MIB);
        let mut l = Limiter::new(in_process(&cgroup));
        assert!(l.memory_growing(0, 16 << 20, None).unwrap());
    }

    #[test]
    fn concurrent_grows_cannot_pass_the_cap_together() {
        let meter = Arc::new(Meter::new(Limits {
            memory: Some(64 << 20),
            ..Default::default()
        }));
        let cap = meter.memory_cap.load(Ordering::Relaxed);
        let granted: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let meter = meter.clone();
                    s.spawn(move || {
                        let mut l = Limiter::new(meter);
                        let mut mine = 0;
                        for _ in 0..10_000 {
                            if l.grow(4096) {
                                mine += 4096;
                            }
                        }
                        std::mem::forget(l);
                        mine
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert!(granted <= cap, "{granted} granted over a cap of {cap}");
        assert_eq!(meter.memory_bytes(), granted);
    }

    #[test]
    fn no_limit_allows_everything() {
        let meter = Arc::new(Meter::new(Limits::default()));
        let mut l = Limiter::new(meter.clone());
        assert!(l.memory_growing(0, 1 << 40, None).unwrap());
        assert!(!meter.out_of_memory());
    }

    #[test]
    fn throttle_pauses_once_the_quota_is_spent() {
        let meter = Arc::new(Meter::new(Limits {
            cpu: Some((20_000, 100_000)),
            ..Default::default()
        }));
        let clock = Arc::new(TaskClock::default());
        let mut t = Throttle::new(meter.clone(), clock.clone(), Arc::default());
        // 50 ms of CPU charged at once: 0.2 cores must wait about 250 ms to pay it back.
        clock.done.fetch_add(50_000_000, Ordering::Relaxed);
        let Turn::Pause(pause) = t.turn() else {
            panic!("over quota")
        };
        assert!(
            pause > Duration::from_millis(200) && pause < Duration::from_millis(260),
            "{pause:?}"
        );

        meter.set_limits(Limits::default());
        clock.done.fetch_add(50_000_000, Ordering::Relaxed);
        assert_eq!(t.turn(), Turn::Run, "no quota, no pause");
    }

    /// A guest's meter, its tick decisions, and a handle to charge it CPU time.
    fn guest(group: &Arc<CpuGroup>, shares: u64) -> (Arc<Meter>, Throttle, Arc<TaskClock>) {
        let meter = Arc::new(Meter::new(Limits {
            cpu_shares: Some(shares),
            ..Default::default()
        }));
        group.join(&meter);
        let clock = Arc::new(TaskClock::default());
        let t = Throttle::new(meter.clone(), clock.clone(), group.clone());
        (meter, t, clock)
    }

    fn spend(clock: &TaskClock, ns: u64) {
        clock.done.fetch_add(ns, Ordering::Relaxed);
    }

    #[test]
    fn cpu_is_charged_to_the_virtual_clock_by_weight() {
        let group = Arc::new(CpuGroup::default());
        let (heavy, mut h, hc) = guest(&group, 2048);
        let (light, mut l, lc) = guest(&group, 512);
        spend(&hc, 40_000_000);
        spend(&lc, 40_000_000);
        assert_eq!(h.turn(), Turn::Run);
        // The same CPU time weighs four times more for the light guest: its clock is now ahead
        // of the heavy one's (waiting for a thread), so it steps aside.
        heavy.waiting.store(true, Ordering::Relaxed);
        assert_eq!(l.turn(), Turn::StepAside);
        assert_eq!(heavy.vruntime.load(Ordering::Relaxed), 20_000_000);
        assert_eq!(light.vruntime.load(Ordering::Relaxed), 80_000_000);
    }

    #[test]
    fn a_guest_ahead_steps_aside_only_for_a_waiting_guest() {
        let group = Arc::new(CpuGroup::default());
        let (_a, mut ta, ac) = guest(&group, 1024);
        let (b, _tb, _) = guest(&group, 1024);
        spend(&ac, 50_000_000);
        // b is behind but not waiting (blocked in a host call, say): a carries on.
        assert_eq!(ta.turn(), Turn::Run);
        b.waiting.store(true, Ordering::Relaxed);
        spend(&ac, 1_000_000);
        assert_eq!(ta.turn(), Turn::StepAside);
        // Within the slack, equals do not trade places.
        b.vruntime.store(40_000_000, Ordering::Relaxed);
        spend(&ac, 1_000_000);
        assert_eq!(ta.turn(), Turn::Run);
    }

    #[test]
    fn a_guest_keeping_its_thread_still_yields_now_and_then_and_when_interrupted() {
        let group = Arc::new(CpuGroup::default());
        let (meter, mut t, _) = guest(&group, 1024);
        let turns: Vec<Turn> = (0..MAX_KEPT_TICKS).map(|_| t.turn()).collect();
        assert_eq!(turns.iter().filter(|t| **t == Turn::Continue).count(), 1);
        assert_eq!(t.turn(), Turn::Run);
        meter.interrupt();
        assert_eq!(t.turn(), Turn::Continue);
    }

    #[test]
    fn newcomers_start_level_with_the_least_served() {
        let group = Arc::new(CpuGroup::default());
        let (old, _, _) = guest(&group, 1024);
        old.vruntime.store(5_000_000_000, Ordering::Relaxed);
        let (new, _, _) = guest(&group, 1024);
        assert_eq!(new.vruntime.load(Ordering::Relaxed), 5_000_000_000);
    }

    #[test]
    fn a_meter_joins_once_however_many_tasks_it_has() {
        let group = Arc::new(CpuGroup::default());
        let (meter, _, _) = guest(&group, 1024);
        for _ in 0..100 {
            group.join(&meter);
        }
        assert_eq!(group.members.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_long_sleeper_gets_a_bounded_head_start() {
        let group = Arc::new(CpuGroup::default());
        let (_busy, mut t, clock) = guest(&group, 1024);
        let (sleeper, _, _) = guest(&group, 1024);
        sleeper.waiting.store(true, Ordering::Relaxed);
        spend(&clock, 10_000_000_000);
        assert_eq!(t.turn(), Turn::StepAside);
        assert_eq!(
            sleeper.vruntime.load(Ordering::Relaxed),
            10_000_000_000 - FAIR_MAX_LAG_NS
        );
    }
}
