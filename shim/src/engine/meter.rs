//! Per-guest accounting: CPU time spent polling the guest and linear memory it holds. These
//! feed the task's stats, and are where limits will hook in.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// What one guest has used so far. Shared between the running guest and the stats call.
#[derive(Debug, Default)]
pub struct Usage {
    /// Thread CPU time spent inside the guest's polls, in nanoseconds.
    pub cpu_ns: AtomicU64,
    /// Bytes of linear memory and table storage currently held.
    pub memory: AtomicU64,
}

impl Usage {
    pub fn cpu_ns(&self) -> u64 {
        self.cpu_ns.load(Ordering::Relaxed)
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.load(Ordering::Relaxed)
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

/// Wraps a guest's future and charges the thread CPU time of every poll to its `Usage`. The
/// guest runs only inside polls (it yields at each epoch tick), so this is its CPU time.
pub struct Metered<F> {
    usage: Arc<Usage>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Metered<F> {
    pub fn new(usage: Arc<Usage>, inner: F) -> Self {
        Metered {
            usage,
            inner: Box::pin(inner),
        }
    }
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let before = thread_cpu_ns();
        let out = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(before);
        self.usage.cpu_ns.fetch_add(spent, Ordering::Relaxed);
        out
    }
}

/// Keeps `Usage::memory` up to date as the guest grows its memories and tables.
pub struct Limiter {
    usage: Arc<Usage>,
}

impl Limiter {
    pub fn new(usage: Arc<Usage>) -> Self {
        Limiter { usage }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.usage.memory.store(0, Ordering::Relaxed);
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = desired.saturating_sub(current) as u64;
        self.usage.memory.fetch_add(grown, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}
