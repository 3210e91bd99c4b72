//! The corpus of invalid configs: each file in `tests/invalid/` starts with
//! `# expect: <the first error exactly as osctl prints it>`.

use std::path::Path;

#[test]
fn every_invalid_config_fails_with_its_expected_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "corpus too small: {}", files.len());
    let bless = std::env::var_os("BERTH_BLESS").is_some();
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let expect = first
            .strip_prefix("# expect: ")
            .unwrap_or_else(|| panic!("{}: first line must be '# expect: ...'", f.display()));
        let name = f.file_name().unwrap().to_string_lossy();
        match berth_config::parse(&text) {
            Ok(_) => failures.push(format!("{name}: accepted, expected: {expect}")),
            Err(e) => {
                let got = e.first().unwrap();
                if bless {
                    println!("{name}\t{got}");
                }
                if got.to_string() != expect {
                    failures.push(format!("{name}:\n  expected: {expect}\n  got:      {got}"));
                }
                assert!(got.line.is_some(), "{name}: error without a line: {got}");
            }
        }
        // The same text must never panic the fuzz entry point either.
        berth_config::fuzz_parse(text.as_bytes());
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
