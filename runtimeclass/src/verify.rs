//! Asks containerd, through its CRI (what the kubelet uses), whether the runtime handlers are
//! really there: `Status` lists them in `runtime_handlers` (containerd 2.x), or in the verbose
//! info's `config.containerd.runtimes` (containerd 1.7).

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{StatusRequest, StatusResponse, VersionRequest};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, info};

use crate::{Error, Result};

fn cri_err(address: &Path, message: impl ToString) -> Error {
    Error::Cri {
        address: address.display().to_string(),
        message: message.to_string(),
    }
}

/// Connects to containerd's CRI over its Unix socket.
pub async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>> {
    let path: PathBuf = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .map_err(|e| cri_err(socket, e))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| cri_err(socket, format!("cannot connect: {e}")))?;
    Ok(RuntimeServiceClient::new(channel))
}

/// containerd's version (`runtime_version`, e.g. `1.7.24` or `v2.1.9`).
#[tracing::instrument]
pub async fn containerd_version(socket: &Path) -> Result<String> {
    let mut c = connect(socket).await?;
    let v = c
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .map_err(|e| cri_err(socket, e.message()))?
        .into_inner();
    Ok(v.runtime_version)
}

/// The handler names a `Status` response shows.
pub fn handlers_in(status: &StatusResponse) -> Vec<String> {
    let mut names: Vec<String> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        if let Some(cfg) = status
            .info
            .get("config")
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        {
            if let Some(rts) = cfg
                .pointer("/containerd/runtimes")
                .and_then(|r| r.as_object())
            {
                names = rts.keys().cloned().collect();
            }
        }
    }
    names.sort();
    names
}

/// Checks once that every handler in `wanted` is registered.
#[tracing::instrument]
pub async fn check_handlers(socket: &Path, wanted: &[String]) -> Result<Vec<String>> {
    let mut c = connect(socket).await?;
    let status = c
        .status(StatusRequest { verbose: true })
        .await
        .map_err(|e| cri_err(socket, e.message()))?
        .into_inner();
    let present = handlers_in(&status);
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| !present.contains(w))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(Error::HandlerMissing {
            address: socket.display().to_string(),
            missing,
            present,
        });
    }
    let ready = status
        .status
        .map(|s| {
            s.conditions
                .iter()
                .any(|c| c.r#type == "RuntimeReady" && c.status)
        })
        .unwrap_or(false);
    if !ready {
        return Err(cri_err(socket, "containerd reports RuntimeReady=false"));
    }
    info!(handlers = ?wanted, "runtime handlers verified through the CRI");
    Ok(present)
}

/// Checks that containerd serves the handlers: the installer's check after a restart, a
/// trait so the installer's tests use doubles.
#[async_trait::async_trait]
pub trait Verifier: Send + Sync {
    async fn verify(&self, socket: &Path, handlers: &[String]) -> Result<()>;
}

/// The real check: [`wait_for_handlers`] through containerd's CRI, for up to `timeout`.
pub struct CriVerifier {
    pub timeout: Duration,
}

#[async_trait::async_trait]
impl Verifier for CriVerifier {
    async fn verify(&self, socket: &Path, handlers: &[String]) -> Result<()> {
        wait_for_handlers(socket, handlers, self.timeout)
            .await
            .map(|_| ())
    }
}

/// [`check_handlers`] retried until `timeout` (containerd may still be restarting).
pub async fn wait_for_handlers(
    socket: &Path,
    wanted: &[String],
    timeout: Duration,
) -> Result<Vec<String>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check_handlers(socket, wanted).await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() < deadline => {
                debug!(error = %e, "not verified yet, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::RuntimeHandler;

    #[test]
    fn handlers_from_v2_list_or_v1_7_config() {
        let s = StatusResponse {
            runtime_handlers: vec![
                RuntimeHandler {
                    name: "wasmtime".into(),
                    features: None,
                },
                RuntimeHandler {
                    name: "".into(),
                    features: None,
                },
            ],
            ..Default::default()
        };
        assert_eq!(handlers_in(&s), vec!["wasmtime"]);
        let mut s = StatusResponse::default();
        s.info.insert(
            "config".into(),
            r#"{"containerd":{"runtimes":{"runc":{},"wasmtime":{}}}}"#.into(),
        );
        assert_eq!(handlers_in(&s), vec!["runc", "wasmtime"]);
    }
}
