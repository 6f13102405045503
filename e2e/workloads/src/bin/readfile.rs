//! Prints the contents of the file named by the first argument.
fn main() {
    let path = std::env::args().nth(1).expect("usage: readfile PATH");
    match std::fs::read_to_string(&path) {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("cannot read {path}: {e}");
            std::process::exit(1);
        }
    }
}
