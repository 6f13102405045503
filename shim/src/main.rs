//! `containerd-shim-wasmtime-v1`: containerd's shim v2 binary for Wasm pods.

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<wasmpod_shim::podhost::PodShim>(
        wasmpod_shim::podhost::RUNTIME_TYPE,
        None,
    )
    .await;
}
