//! Burns CPU without ever calling the host, for the given seconds (default forever).
use std::time::{Duration, Instant};

fn main() {
    let limit = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .map(Duration::from_secs);
    println!("spinning");
    let start = Instant::now();
    let mut x: u64 = 1;
    loop {
        // Check the clock rarely so the loop stays a pure guest loop.
        for _ in 0..10_000_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            break;
        }
    }
    println!("done {}", x % 2);
}
