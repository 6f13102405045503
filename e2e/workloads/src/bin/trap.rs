//! Prints a line, then executes `unreachable`: the guest traps.
fn main() {
    println!("about to trap");
    std::process::abort();
}
