//! The epoch ticker. Epoch interruption is how a running guest is made to account its CPU,
//! yield and stop, but it needs the engine's epoch advanced every tick. A thread that did so
//! unconditionally woke 100 times a second in every pod, guests idle or not: a thousand idle
//! pods saturated two cores. This one ticks only while some guest of the engine is executing
//! (inside a poll of its future, the only place Wasm runs), and parks otherwise.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

/// The engine's ticker thread; stopped and joined on drop.
pub struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What guests hold to wake the ticker while they run.
#[derive(Clone)]
pub struct Ticks(Arc<Shared>);

struct Shared {
    /// Polls of guest futures in progress.
    running: AtomicUsize,
    stop: AtomicBool,
    /// The ticker thread, once it runs (set by itself, so no wake can precede it).
    thread: OnceLock<Thread>,
    ticks: AtomicU64,
}

impl Ticker {
    pub fn start(engine: wasmtime::Engine, tick: Duration) -> std::io::Result<Ticker> {
        let shared = Arc::new(Shared {
            running: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
            ticks: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wasmpod-epoch".into())
            .spawn(move || {
                let _ = s.thread.set(std::thread::current());
                while !s.stop.load(Ordering::SeqCst) {
                    if s.running.load(Ordering::SeqCst) == 0 {
                        // A wake between the check and the park makes the park return at
                        // once (the thread's token), so none is lost.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    s.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        Ok(Ticker {
            shared,
            thread: Some(thread),
        })
    }

    pub fn ticks(&self) -> Ticks {
        Ticks(self.shared.clone())
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Ticks {
    /// The epoch advances until the returned guard is dropped.
    pub fn running(&self) -> Running<'_> {
        if self.0.running.fetch_add(1, Ordering::SeqCst) == 0 {
            if let Some(t) = self.0.thread.get() {
                t.unpark();
            }
        }
        Running(self)
    }

    /// Epoch ticks so far.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.ticks.load(Ordering::Relaxed)
    }
}

pub struct Running<'a>(&'a Ticks);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0 .0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(5);

    #[test]
    fn it_ticks_only_while_a_guest_runs() {
        let ticker = Ticker::start(wasmtime::Engine::default(), TICK).unwrap();
        let ticks = ticker.ticks();
        std::thread::sleep(TICK * 20);
        assert_eq!(ticks.count(), 0, "no guest ran: no tick");
        {
            let _running = ticks.running();
            std::thread::sleep(TICK * 20);
        }
        let after_running = ticks.count();
        assert!(after_running >= 2, "ticked while running: {after_running}");
        std::thread::sleep(TICK * 20);
        // At most the tick that was under way when the guest stopped.
        assert!(ticks.count() <= after_running + 1, "{}", ticks.count());
        drop(ticker);
    }
}
