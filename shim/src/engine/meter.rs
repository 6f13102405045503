//! Per-guest accounting and limits, "cgroup-aligned": the guest's CPU time and linear memory
//! are measured here and held to the container's `linux.resources`, the way the kernel would
//! hold a process to its cgroup.
//!
//! - Memory: every memory and table grow is charged; a grow past the limit is denied, and a
//!   guest that then fails ends as if the OOM killer had struck (exit 137, an OOM event).
//! - CPU: the thread CPU time of every poll of the guest's future is charged. A CPU quota is a
//!   token bucket filled at `quota / period` cores; when the epoch callback finds it empty, the
//!   guest yields and sleeps until it is refilled, so over time it gets exactly its share.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
}

/// What one guest has used and may use. Shared between the running guest, the stats call and
/// updates.
#[derive(Debug, Default)]
pub struct Meter {
    /// Thread CPU time spent inside finished polls of the guest, in nanoseconds.
    cpu_ns: AtomicU64,
    /// Thread CPU clock when the running poll began (0 when not polling).
    poll_start: AtomicU64,
    /// Bytes of linear memory and table storage currently held.
    memory: AtomicU64,
    /// Guest memory cap in bytes (limit minus reserve); 0 means none.
    memory_cap: AtomicU64,
    cpu_quota_us: AtomicU64,
    cpu_period_us: AtomicU64,
    /// A grow was denied because of the memory limit.
    oom: AtomicBool,
}

impl Meter {
    pub fn new(limits: Limits) -> Self {
        let m = Meter::default();
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
    }

    /// CPU time of the guest's finished polls (at most one epoch tick behind).
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(Ordering::Relaxed)
    }

    /// CPU time used so far including the running poll. Only valid on the thread polling the
    /// guest, i.e. from the epoch callback, because it reads that thread's CPU clock.
    fn cpu_ns_polling(&self) -> u64 {
        let start = self.poll_start.load(Ordering::Relaxed);
        let running = if start == 0 {
            0
        } else {
            thread_cpu_ns().saturating_sub(start)
        };
        self.cpu_ns() + running
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

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wraps a guest's future and charges the thread CPU time of every poll to its `Meter`. The
/// guest runs only inside polls (it yields at each epoch tick), so this is its CPU time.
pub struct Metered<F> {
    meter: Arc<Meter>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Metered<F> {
    pub fn new(meter: Arc<Meter>, inner: F) -> Self {
        Metered {
            meter,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let before = thread_cpu_ns().max(1);
        self.meter.poll_start.store(before, Ordering::Relaxed);
        let out = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(before);
        self.meter.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        self.meter.poll_start.store(0, Ordering::Relaxed);
        out
    }
}

/// The CPU quota's token bucket, consulted by the epoch callback at every tick.
pub struct Throttle {
    meter: Arc<Meter>,
    last: Instant,
    last_cpu: u64,
    /// CPU nanoseconds the guest may still spend; negative is debt.
    tokens: f64,
}

impl Throttle {
    pub fn new(meter: Arc<Meter>) -> Self {
        let last_cpu = meter.cpu_ns_polling();
        Throttle {
            meter,
            last: Instant::now(),
            last_cpu,
            tokens: 0.0,
        }
    }

    /// How long the guest must pause now to stay within its quota, if at all.
    pub fn pause(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let cpu = self.meter.cpu_ns_polling();
        let wall = now.duration_since(self.last).as_nanos() as f64;
        let used = cpu.saturating_sub(self.last_cpu) as f64;
        self.last = now;
        self.last_cpu = cpu;
        let Some((rate, burst)) = self.meter.cpu_rate() else {
            self.tokens = 0.0;
            return None;
        };
        // Unused time carries over up to one period's quota, like CFS's burst-free quota.
        self.tokens = (self.tokens + wall * rate).min(burst) - used;
        (self.tokens < 0.0).then(|| Duration::from_nanos((-self.tokens / rate) as u64))
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

    fn grow(&mut self, bytes: u64) -> bool {
        let cap = self.meter.memory_cap.load(Ordering::Relaxed);
        let total = self.meter.memory.load(Ordering::Relaxed);
        if cap != 0 && total.saturating_add(bytes) > cap {
            self.meter.oom.store(true, Ordering::Relaxed);
            return false;
        }
        self.meter.memory.fetch_add(bytes, Ordering::Relaxed);
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
            cpu: None,
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
            memory: None,
            cpu: Some((20_000, 100_000)),
        }));
        let mut t = Throttle::new(meter.clone());
        // 50 ms of CPU charged at once: 0.2 cores must wait about 250 ms to pay it back.
        meter.cpu_ns.fetch_add(50_000_000, Ordering::Relaxed);
        let pause = t.pause().expect("over quota");
        assert!(
            pause > Duration::from_millis(200) && pause < Duration::from_millis(260),
            "{pause:?}"
        );

        meter.set_limits(Limits::default());
        meter.cpu_ns.fetch_add(50_000_000, Ordering::Relaxed);
        assert_eq!(t.pause(), None, "no quota, no pause");
    }
}
