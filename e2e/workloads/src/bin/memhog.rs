//! Allocates and touches memory 1 MiB at a time, up to the given MiB (default: without end),
//! then sleeps. Under a memory limit it runs out and fails like a process the OOM killer ends.
fn main() {
    let max: Option<usize> = std::env::args().nth(1).and_then(|a| a.parse().ok());
    let mut held: Vec<Vec<u8>> = Vec::new();
    while max.is_none_or(|m| held.len() < m) {
        held.push(vec![1u8; 1 << 20]);
        if held.len().is_multiple_of(8) {
            println!("allocated {} MiB", held.len());
        }
    }
    println!("holding {} MiB", held.len());
    std::thread::sleep(std::time::Duration::from_secs(3600));
}
