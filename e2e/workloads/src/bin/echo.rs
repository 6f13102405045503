//! Prints its arguments and the environment variables named `WASMPOD_*`, so tests can check
//! what the shim passed in.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("args: {}", args.join(" "));
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("WASMPOD_"))
        .collect();
    vars.sort();
    for (k, v) in vars {
        println!("env: {k}={v}");
    }
    if let Ok(cwd) = std::env::current_dir() {
        println!("cwd: {}", cwd.display());
    }
}
