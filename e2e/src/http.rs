//! A small HTTP/1.1 client for the HTTP tests: one connection, several requests on it
//! (keep-alive), replies read whole.

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One client connection.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(addr: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    pub async fn send(&mut self, method: &str, path: &str, body: &str) -> Result<Reply> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::from(body.to_string())))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("body of {method} {path}"))?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// GET on a fresh connection.
pub async fn get(addr: &str, path: &str) -> Result<Reply> {
    Conn::open(addr).await?.send("GET", path, "").await
}

/// Lets this process hold `n` more sockets than the usual soft limit of 1024 descriptors.
pub fn raise_open_files(n: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        lim.rlim_cur = lim.rlim_max.min(lim.rlim_cur.max(n + 1024));
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    anyhow::ensure!(
        lim.rlim_cur >= n + 256,
        "only {} descriptors allowed",
        lim.rlim_cur
    );
    Ok(())
}

/// A raw connection that has sent `bytes` and nothing more (a slow client, or a hostile one).
pub async fn send_raw(addr: &str, bytes: &[u8]) -> Result<TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(bytes).await.context("sending")?;
    Ok(s)
}

/// What the server sends on a raw connection until it closes it or `timeout` passes; None
/// when it was still open then.
pub async fn read_until_closed(s: &mut TcpStream, timeout: std::time::Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok()?;
    Some(got)
}
