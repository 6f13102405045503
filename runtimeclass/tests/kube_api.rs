//! The installer's Kubernetes API calls against a mock API: there is no Kubernetes API server
//! on these machines (nor a container engine to run one), so `tower-test` stands in for it and
//! each test checks the exact HTTP requests the installer sends and answers them as the API
//! server would.

use std::path::Path;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock;

use wasmpod_installer::install::{reconcile_label, verify_and_label};
use wasmpod_installer::node::{KubeNodes, Nodes};

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn mock_nodes() -> (KubeNodes, Handle) {
    let (svc, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (KubeNodes::new(Client::new(svc, "default")), handle)
}

fn node_json(labels: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": "node-a", "labels": labels },
    }))
    .unwrap()
}

async fn body_json(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn labels_only_its_own_node_with_a_merge_patch() {
    let (nodes, mut handle) = mock_nodes();
    let server = tokio::spawn(async move {
        for (want_value, reply_labels) in [
            (json!("ready"), json!({"wasmpod.dev/wasmtime": "ready"})),
            (Value::Null, json!({})),
        ] {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), http::Method::PATCH);
            assert_eq!(req.uri().path(), "/api/v1/nodes/node-a");
            assert_eq!(
                req.headers()["content-type"],
                "application/merge-patch+json"
            );
            let body = body_json(req).await;
            assert_eq!(
                body,
                json!({"metadata": {"labels": {"wasmpod.dev/wasmtime": want_value}}})
            );
            send.send_response(
                Response::builder()
                    .status(StatusCode::OK)
                    .body(Body::from(node_json(reply_labels)))
                    .unwrap(),
            );
        }
    });
    nodes.set_ready("node-a", true).await.unwrap();
    nodes.set_ready("node-a", false).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn reads_the_label_and_reports_api_errors() {
    let (nodes, mut handle) = mock_nodes();
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri().path(), "/api/v1/nodes/node-a");
        send.send_response(
            Response::builder()
                .body(Body::from(node_json(
                    json!({"wasmpod.dev/wasmtime": "ready"}),
                )))
                .unwrap(),
        );
        // RBAC that forgot patch: the API server's 403 Status
        let (_req, send) = handle.next_request().await.unwrap();
        let status = json!({
            "apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": "nodes \"node-a\" is forbidden: User \"system:serviceaccount:wasmpod:wasmpod-installer\" cannot patch resource \"nodes\"",
            "reason": "Forbidden", "code": 403
        });
        send.send_response(
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(Body::from(serde_json::to_vec(&status).unwrap()))
                .unwrap(),
        );
    });
    assert!(nodes.is_ready("node-a").await.unwrap());
    let e = nodes.set_ready("node-a", true).await.unwrap_err();
    assert!(e.to_string().contains("forbidden"), "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn never_labels_a_node_whose_handlers_are_not_verified() {
    let (nodes, mut handle) = mock_nodes();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock"); // nothing listens: containerd is down
    let e = verify_and_label(
        Path::new(&socket),
        &["wasmtime".to_string()],
        &nodes,
        "node-a",
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("containerd's CRI"), "{e}");
    drop(nodes);
    let req = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(
        matches!(req, Ok(None) | Err(_)),
        "the API must not be called"
    );
}

#[tokio::test]
async fn the_running_installer_drops_the_label_when_containerd_loses_the_handler() {
    let (nodes, mut handle) = mock_nodes();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock"); // containerd gone
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        send.send_response(
            Response::builder()
                .body(Body::from(node_json(
                    json!({"wasmpod.dev/wasmtime": "ready"}),
                )))
                .unwrap(),
        );
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::PATCH);
        assert_eq!(
            body_json(req).await,
            json!({"metadata": {"labels": {"wasmpod.dev/wasmtime": null}}})
        );
        send.send_response(
            Response::builder()
                .body(Body::from(node_json(json!({}))))
                .unwrap(),
        );
        // next round: still unverified, already unlabeled: a GET and no PATCH
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        send.send_response(
            Response::builder()
                .body(Body::from(node_json(json!({}))))
                .unwrap(),
        );
        handle
    });
    let handlers = ["wasmtime".to_string()];
    assert!(!reconcile_label(&socket, &handlers, &nodes, "node-a")
        .await
        .unwrap());
    assert!(!reconcile_label(&socket, &handlers, &nodes, "node-a")
        .await
        .unwrap());
    let mut handle = server.await.unwrap();
    drop(nodes);
    assert!(
        handle.next_request().await.is_none(),
        "no further API calls"
    );
}
