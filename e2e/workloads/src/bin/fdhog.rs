//! Opens its own module again and again, keeping every file open, without end: a guest that
//! leaks descriptors. It must meet the container's descriptor limit, not the shim's.
fn main() {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/fdhog.wasm") {
            Ok(f) => held.push(f),
            Err(e) => {
                println!("open failed after {} files: {e}", held.len());
                std::process::exit(3);
            }
        }
        if held.len().is_multiple_of(256) {
            println!("holding {} files", held.len());
        }
    }
}
