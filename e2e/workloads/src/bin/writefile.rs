//! Writes the second argument into the file named by the first, then reads it back.
//! Exits 1 with the error on stderr when the write is refused (a read-only mount).
fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: writefile PATH TEXT");
    let text = args.next().unwrap_or_else(|| "written by wasmpod".into());
    if let Err(e) = std::fs::write(&path, &text) {
        eprintln!("cannot write {path}: {e}");
        std::process::exit(1);
    }
    let back = std::fs::read_to_string(&path).expect("read back");
    println!("wrote {} bytes to {path}: {back}", text.len());
}
