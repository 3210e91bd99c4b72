//! `/proc/self/mountinfo` parsing, used by PID 1 (shutdown) and sysd (status).

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub target: String,
    pub fstype: String,
    pub source: String,
    pub read_only: bool,
}

/// Parse `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            Some(MountInfo {
                target: unescape(pre.get(4)?),
                read_only: pre.get(5)?.split(',').any(|o| o == "ro"),
                fstype: post.first()?.to_string(),
                source: unescape(post.get(1)?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount on `target` (the last one wins when mounts are stacked).
pub fn find<'a>(mounts: &'a [MountInfo], target: &str) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.target == target)
}

/// Read and parse `/proc/self/mountinfo`.
pub fn read() -> Vec<MountInfo> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo() {
        let t = "22 1 254:0 / / ro,relatime shared:1 - erofs /dev/dm-0 ro,user_xattr\n\
                 30 22 254:4 / /var rw,noatime shared:9 - ext4 /dev/vda4 rw\n\
                 31 22 0:5 / /a\\040b rw - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert_eq!(
            m[0],
            MountInfo {
                target: "/".into(),
                fstype: "erofs".into(),
                source: "/dev/dm-0".into(),
                read_only: true
            }
        );
        assert!(!m[1].read_only);
        assert_eq!(m[2].target, "/a b");
        assert_eq!(find(&m, "/var").map(|m| m.fstype.as_str()), Some("ext4"));
    }
}
