//! Copies stdin to stdout, to check the container's stdin reaches the guest.
use std::io::{Read, Write};

fn main() {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .expect("read stdin");
    std::io::stdout().write_all(&input).expect("write stdout");
    println!("read {} bytes", input.len());
}
