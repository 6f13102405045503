//! The node's readiness label, through the Kubernetes API. The installer only ever touches
//! its own node (the chart passes it through the downward API as NODE_NAME), and the chart's
//! ClusterRole allows only get and patch on nodes.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use tracing::info;

use crate::{Result, READY_LABEL_KEY, READY_LABEL_VALUE};

#[async_trait::async_trait]
pub trait Nodes: Send + Sync {
    /// Sets (`true`) or removes (`false`) `wasmpod.dev/wasmtime=ready`.
    async fn set_ready(&self, node: &str, ready: bool) -> Result<()>;
    /// Whether the node carries the label.
    async fn is_ready(&self, node: &str) -> Result<bool>;
}

/// The real API.
pub struct KubeNodes {
    api: Api<Node>,
}

impl KubeNodes {
    pub fn new(client: Client) -> Self {
        KubeNodes {
            api: Api::all(client),
        }
    }

    /// In-cluster config (the DaemonSet's service account) or the local kubeconfig.
    pub async fn from_env() -> Result<Self> {
        Ok(Self::new(Client::try_default().await?))
    }
}

/// The JSON merge patch that sets or removes the label (null removes a key).
pub fn label_patch(ready: bool) -> serde_json::Value {
    let v = if ready {
        json!(READY_LABEL_VALUE)
    } else {
        serde_json::Value::Null
    };
    json!({ "metadata": { "labels": { READY_LABEL_KEY: v } } })
}

#[async_trait::async_trait]
impl Nodes for KubeNodes {
    #[tracing::instrument(skip(self))]
    async fn set_ready(&self, node: &str, ready: bool) -> Result<()> {
        self.api
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(label_patch(ready)),
            )
            .await?;
        info!(node, label = %format!("{READY_LABEL_KEY}={READY_LABEL_VALUE}"), ready, "node label updated");
        Ok(())
    }

    #[tracing::instrument(skip(self))]
    async fn is_ready(&self, node: &str) -> Result<bool> {
        let n = self.api.get(node).await?;
        Ok(n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(READY_LABEL_KEY))
            .map(|v| v == READY_LABEL_VALUE)
            .unwrap_or(false))
    }
}
