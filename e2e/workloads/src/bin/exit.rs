//! Exits with the status given as the first argument (default 3).
fn main() {
    let code = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    println!("exiting with {code}");
    std::process::exit(code);
}
