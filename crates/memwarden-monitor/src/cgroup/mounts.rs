//! `/proc/self/mountinfo`: which mounts carry a cgroup hierarchy, and where.

use std::path::PathBuf;

use super::Version;

/// A mount line of `/proc/self/mountinfo` that carries a cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CgroupMount {
    pub(super) version: Version,
    /// The part of the hierarchy this mount shows (`/` unless bind-mounted from inside).
    pub(super) root: String,
    pub(super) mount_point: PathBuf,
}

pub(super) fn parse_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = before.split_ascii_whitespace().collect();
        let tail: Vec<&str> = after.split_ascii_whitespace().collect();
        if fields.len() < 5 || tail.is_empty() {
            continue;
        }
        let version = match tail[0] {
            "cgroup2" => Version::V2,
            "cgroup"
                if tail
                    .get(2)
                    .is_some_and(|opts| opts.split(',').any(|o| o == "memory")) =>
            {
                Version::V1
            }
            _ => continue,
        };
        mounts.push(CgroupMount {
            version,
            root: unescape_mount_field(fields[3]),
            mount_point: PathBuf::from(unescape_mount_field(fields[4])),
        });
    }
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as three-digit octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` relative to a mount that shows the hierarchy from `root` down, if it is inside.
pub(super) fn strip_mount_root<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}
