//! Writes one line to stdout and one to stderr, to check both streams reach the log.
fn main() {
    println!("this goes to stdout");
    eprintln!("this goes to stderr");
}
