//! OS version ordering.
//!
//! Versions are dotted (`0.1.0`, `2024.05.1`), optionally with a `-pre` suffix
//! (`0.2.0-rc.1`). Numeric parts compare as numbers, other parts as text, a missing part
//! counts as 0, and a pre-release sorts before its release (`0.2.0-rc.1 < 0.2.0`), as in
//! SemVer. `+build` metadata is ignored.

use std::cmp::Ordering;

fn parts(s: &str) -> Vec<&str> {
    s.split(['.', '-', '_']).filter(|p| !p.is_empty()).collect()
}

fn cmp_part(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        // A number sorts before text (SemVer's rule for pre-release identifiers).
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

fn cmp_list(a: &[&str], b: &[&str], missing_is_zero: bool) -> Ordering {
    for i in 0..a.len().max(b.len()) {
        let o = match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) => cmp_part(x, y),
            (Some(x), None) if missing_is_zero => cmp_part(x, "0"),
            (None, Some(y)) if missing_is_zero => cmp_part("0", y),
            (Some(_), None) => Ordering::Greater,
            (None, Some(_)) => Ordering::Less,
            (None, None) => Ordering::Equal,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

/// Compare two OS versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    let strip = |s: &str| -> (String, Option<String>) {
        let s = s.trim().trim_start_matches('v');
        let s = s.split('+').next().unwrap_or(s);
        match s.split_once('-') {
            Some((rel, pre)) => (rel.to_string(), Some(pre.to_string())),
            None => (s.to_string(), None),
        }
    };
    let (ra, pa) = strip(a);
    let (rb, pb) = strip(b);
    match cmp_list(&parts(&ra), &parts(&rb), true) {
        Ordering::Equal => {}
        o => return o,
    }
    match (pa, pb) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => cmp_list(&parts(&x), &parts(&y), false),
    }
}

/// True when `candidate` is strictly newer than `running`.
pub fn is_newer(candidate: &str, running: &str) -> bool {
    compare(candidate, running) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering() {
        assert!(is_newer("0.2.0", "0.1.0"));
        assert!(is_newer("0.10.0", "0.9.9"));
        assert!(is_newer("1.0", "0.99.99"));
        assert!(!is_newer("0.1.0", "0.1.0"));
        assert_eq!(compare("0.1", "0.1.0"), Ordering::Equal);
        assert!(is_newer("0.2.0", "0.2.0-rc.1"));
        assert!(is_newer("0.2.0-rc.2", "0.2.0-rc.1"));
        assert!(is_newer("0.2.0-rc.10", "0.2.0-rc.9"));
        assert!(is_newer("0.2.0-rc", "0.2.0-beta"));
        assert!(!is_newer("0.1.9", "0.2.0-rc.1"));
        assert_eq!(compare("v1.2.3+abc", "1.2.3"), Ordering::Equal);
        assert!(is_newer("2024.05.1", "2024.5.0"));
    }
}
