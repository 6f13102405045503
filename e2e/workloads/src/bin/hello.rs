//! Prints one greeting line and exits 0: the smallest useful workload.
fn main() {
    println!("hello from wasmpod");
}
