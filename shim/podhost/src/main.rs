//! `containerd-shim-wasmtime-v1`: containerd's shim v2 binary for Wasm pods.

/// The build's id (`WASMPOD_BUILD_ID` at compile time), kept in the binary: two builds of the
/// same source with different ids are different binaries, which is how the cluster test gets
/// a "rebuilt" shim to upgrade to without a second full build.
#[used]
static BUILD_ID: &str = match option_env!("WASMPOD_BUILD_ID") {
    Some(id) => id,
    None => "dev",
};

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<wasmpod_shim::PodShim>(wasmpod_shim::RUNTIME_TYPE, None)
        .await;
}
