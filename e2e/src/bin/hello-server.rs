//! The native baseline for the HTTP benchmark: a hyper HTTP/1.1 server answering every request
//! with one line, as the Wasm test handler does on `/`. `hello-server ADDR` (default
//! 0.0.0.0:8081).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "0.0.0.0:8081".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("hello-server: serving on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req| async {
                let mut resp = hyper::Response::new(Full::new(Bytes::from_static(
                    b"hello from a native hyper server\n",
                )));
                resp.headers_mut().insert(
                    "x-wasmpod",
                    hyper::header::HeaderValue::from_static("native"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
