//! A module of several MB (regex, JSON and TOML parsers, built without optimization): what a
//! real service's module costs to compile, for the compile-cache benchmark. Prints one line
//! that uses all three so none is optimized away.
fn main() {
    let text = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mail alice@example.com and bob@example.com".into());
    let re = regex::Regex::new(r"(?i)\b(\w+)@(\w+)\.com\b").expect("regex");
    let names: Vec<String> = re.captures_iter(&text).map(|c| c[1].to_string()).collect();
    let doc: toml_edit::DocumentMut = "users = 2".parse().expect("toml");
    let json = serde_json::json!({ "names": names, "toml": doc.to_string().trim() });
    println!("hello from a big module: {json}");
}
