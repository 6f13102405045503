//! A fixed amount of pure guest computation (the first argument, in millions of steps;
//! default 500), timed inside the guest: the bench compares it with and without CPU limits.
use std::time::Instant;

fn main() {
    let millions: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let start = Instant::now();
    let mut x: u64 = 1;
    for _ in 0..millions {
        for _ in 0..1_000_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
    }
    println!("work: {} ms ({})", start.elapsed().as_millis(), x % 2);
}
