//! One HTTP connection's clock. A client gets `header_timeout` to send a request's head, from
//! its first byte (or from connecting, for the first request), and an idle keep-alive
//! connection is closed after `idle_timeout`; neither runs while a request is being served,
//! which the request timeout bounds. hyper has only a head timeout, which also runs while a
//! connection is idle, so idle connections would get the short bound or slow heads the long.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(super) struct Watch {
    state: Mutex<State>,
    changed: Notify,
    header_timeout: Duration,
    idle_timeout: Duration,
}

struct State {
    /// Requests of this connection being served (HTTP/1.1 serves one at a time; a pipelined
    /// next one may start before the last body is out).
    in_flight: usize,
    /// Since when the connection has had no request: connecting, or the last response's end.
    waiting_since: Instant,
    /// The first byte of the next request's head, once it came.
    first_byte: Option<Instant>,
    /// A request has been served: waiting now is keep-alive idling.
    served: bool,
}

impl Watch {
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Arc<Watch> {
        Arc::new(Watch {
            state: Mutex::new(State {
                in_flight: 0,
                waiting_since: Instant::now(),
                first_byte: None,
                served: false,
            }),
            changed: Notify::new(),
            header_timeout,
            idle_timeout,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request's head has been read; it is served until the guard is dropped (with the
    /// response body, once sent).
    pub fn serving(self: &Arc<Self>) -> Serving {
        let mut s = self.state();
        s.in_flight += 1;
        s.first_byte = None;
        Serving(self.clone())
    }

    /// No request is being served: closing loses nothing but a head not yet complete.
    pub fn idle(&self) -> bool {
        self.state().in_flight == 0
    }

    fn bytes_read(&self) {
        let mut s = self.state();
        // Bytes read during a request are its body (or a pipelined head, left to the idle
        // bound); only a head begun while waiting starts the head clock.
        if s.in_flight == 0 && s.first_byte.is_none() {
            s.first_byte = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    /// When the connection is to be closed if nothing changes; None while serving.
    fn deadline(&self) -> Option<Instant> {
        let s = self.state();
        if s.in_flight > 0 {
            None
        } else if let Some(first) = s.first_byte {
            Some(first + self.header_timeout)
        } else if s.served {
            Some(s.waiting_since + self.idle_timeout)
        } else {
            Some(s.waiting_since + self.header_timeout)
        }
    }

    /// Resolves once the connection has outstayed its bound.
    pub async fn expired(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the deadline is read, so no change slips between the two.
            changed.as_mut().enable();
            match self.deadline() {
                Some(d) if d <= Instant::now() => return,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(d) => {}
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A request being served; dropping it starts the connection's idle clock.
pub(super) struct Serving(Arc<Watch>);

impl Drop for Serving {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.waiting_since = Instant::now();
            s.served = true;
            s.first_byte = None;
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

/// The connection's socket, telling the watch when a client's bytes arrive.
pub(super) struct Watched<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, watch: Arc<Watch>) -> Self {
        Watched { inner, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.bytes_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time (tokio's paused clock would need a tokio feature that rebuilds every crate
    // on it for tests); only lower bounds are asserted, which no slow machine can break.
    const HEAD: Duration = Duration::from_millis(100);
    const IDLE: Duration = Duration::from_millis(400);

    #[tokio::test]
    async fn a_silent_new_connection_gets_the_head_bound() {
        let w = Watch::new(HEAD, IDLE);
        let t = Instant::now();
        w.expired().await;
        assert!(t.elapsed() >= HEAD);
    }

    #[tokio::test]
    async fn a_slow_head_is_bounded_from_its_first_byte() {
        // Keep-alive idling alone would keep it open for an hour.
        let w = Watch::new(HEAD, Duration::from_secs(3600));
        drop(w.serving());
        tokio::time::sleep(HEAD * 2).await;
        w.bytes_read();
        let t = Instant::now();
        // More bytes trickling in do not extend the bound.
        let trickle = async {
            loop {
                tokio::time::sleep(HEAD / 10).await;
                w.bytes_read();
            }
        };
        let expired = tokio::time::timeout(Duration::from_secs(60), w.expired());
        tokio::select! { r = expired => r.expect("closed by the head bound"), _ = trickle => {} }
        assert!(t.elapsed() >= HEAD);
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_gets_the_idle_bound_and_a_served_one_none() {
        let w = Watch::new(HEAD, IDLE);
        let serving = w.serving();
        // Body bytes while serving start no clock.
        w.bytes_read();
        let waited = tokio::time::timeout(IDLE * 2, w.expired()).await;
        assert!(waited.is_err(), "a connection being served never expires");
        drop(serving);
        assert!(w.idle());
        let t = Instant::now();
        w.expired().await;
        assert!(t.elapsed() >= IDLE);
    }
}
