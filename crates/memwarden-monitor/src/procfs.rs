//! Parsers for the `/proc` files the monitor reads.
//!
//! All sizes come back in bytes. Parsers take text so that fixtures can test them; the
//! readers around them treat a vanished process as `None`, never as an error or a zero.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Page size of this machine, in bytes.
#[allow(unsafe_code)]
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 only for unknown names.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Reads a whole `/proc` or cgroup file into `buf` with positional reads at offset 0, so an
/// open file can be read again and again without reopening it. These files are generated
/// whole on each read, so a read that does not fill the buffer has reached the end: the
/// usual case costs one system call. `buf` is kept at its grown size between calls and the
/// file's content is the returned slice.
pub fn pread_all<'a>(file: &File, buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
    let mut len = 0;
    loop {
        if buf.len() - len < 1024 {
            buf.resize((buf.len() * 2).max(4096), 0);
        }
        let spare = buf.len() - len;
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(n) => {
                len += n;
                if n < spare {
                    return Ok(&buf[..len]);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads a whole file into `buf` with one `open`, usually one `read`, and one `close`
/// (`std::fs::read` probes in small chunks: seven reads for a 1.4 KiB `status`);
/// `None` when it cannot be read (the process is gone).
pub fn read_file<'a>(path: &str, buf: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let file = File::open(path).ok()?;
    pread_all(&file, buf).ok()
}

/// Reads a small file to a string, `None` if it cannot be read (the process is gone).
pub fn read_text(path: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    Some(text)
}

/// `/proc/PID/statm`: resident and shared sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statm {
    /// Resident set size.
    pub resident_bytes: u64,
    /// Resident pages backed by files or shared memory.
    pub shared_bytes: u64,
}

/// Parses `statm` text (`size resident shared text lib data dt`, in pages).
pub fn parse_statm(text: &[u8], page_size: u64) -> Option<Statm> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    Some(Statm {
        resident_bytes: resident * page_size,
        shared_bytes: shared * page_size,
    })
}

/// The memory lines of `/proc/PID/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `Name`: the command name (changes on exec).
    pub name: String,
    /// `VmRSS`.
    pub rss_bytes: u64,
    /// `VmHWM`: the kernel's high-water mark of the resident set.
    pub hwm_bytes: u64,
    /// `RssAnon`.
    pub anon_bytes: u64,
    /// `RssFile`.
    pub file_bytes: u64,
    /// `RssShmem`.
    pub shmem_bytes: u64,
}

/// Parses `status`; `None` for a process without memory lines (a zombie or kernel thread).
pub fn parse_status(text: &str) -> Option<Status> {
    let mut status = Status::default();
    let mut seen_rss = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "Name" => {
                value.trim().clone_into(&mut status.name);
                continue;
            }
            "VmRSS" => {
                seen_rss = true;
                &mut status.rss_bytes
            }
            "VmHWM" => &mut status.hwm_bytes,
            "RssAnon" => &mut status.anon_bytes,
            "RssFile" => &mut status.file_bytes,
            "RssShmem" => &mut status.shmem_bytes,
            _ => continue,
        };
        *slot = parse_kb(value)?;
    }
    seen_rss.then_some(status)
}

/// `/proc/PID/smaps_rollup`: proportional and unique set sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmapsRollup {
    /// `Rss` at the time of the walk.
    pub rss_bytes: u64,
    /// `Pss`: private pages plus each shared page divided by its number of sharers.
    pub pss_bytes: u64,
    /// `Private_Clean + Private_Dirty + Private_Hugetlb`: pages no other process maps.
    pub uss_bytes: u64,
    /// `Swap`.
    pub swap_bytes: u64,
}

/// Parses `smaps_rollup`.
pub fn parse_smaps_rollup(text: &str) -> Option<SmapsRollup> {
    let mut rollup = SmapsRollup::default();
    let mut seen_pss = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "Rss" => rollup.rss_bytes = parse_kb(value)?,
            "Pss" => {
                seen_pss = true;
                rollup.pss_bytes = parse_kb(value)?;
            }
            "Private_Clean" | "Private_Dirty" | "Private_Hugetlb" => {
                rollup.uss_bytes += parse_kb(value)?;
            }
            "Swap" => rollup.swap_bytes = parse_kb(value)?,
            _ => {}
        }
    }
    seen_pss.then_some(rollup)
}

/// The fields of `/proc/PID/stat` the monitor needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Parent process id.
    pub ppid: i32,
    /// State letter (`R`, `S`, `Z`...).
    pub state: char,
    /// Start time, clock ticks after boot (field 22); two readings that differ mean the
    /// pid now belongs to another process. `None` in a line cut short.
    pub start_ticks: Option<u64>,
}

impl Stat {
    /// Whether the process still runs: not a zombie, not dead.
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `stat`. The command name may contain spaces and parentheses, so fields are counted
/// from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Field 22, the 20th after the command name: 18 more after state and ppid.
    let start_ticks = fields.nth(17).and_then(|f| f.parse().ok());
    Some(Stat {
        ppid,
        state,
        start_ticks,
    })
}

/// Splits `cmdline` (NUL-separated) into arguments, as text in the `memwarden-escape`
/// scheme ([`memwarden_format::names`]): an argument that is not UTF-8 stays itself.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| memwarden_format::names::escape_bytes(arg).into_owned())
        .collect()
}

/// The system-wide figures of `/proc/meminfo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    /// `MemTotal`.
    pub total_bytes: u64,
    /// `MemAvailable`: what can be allocated without swapping.
    pub available_bytes: u64,
}

/// Parses `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let mut info = MemInfo::default();
    let (mut total, mut available) = (false, false);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "MemTotal" => {
                info.total_bytes = parse_kb(value)?;
                total = true;
            }
            "MemAvailable" => {
                info.available_bytes = parse_kb(value)?;
                available = true;
            }
            _ => {}
        }
    }
    (total && available).then_some(info)
}

/// Reads `/proc/meminfo`.
pub fn read_meminfo() -> Option<MemInfo> {
    parse_meminfo(&read_text(Path::new("/proc/meminfo"))?)
}

fn parse_kb(value: &str) -> Option<u64> {
    let value = value.trim();
    let number = value.strip_suffix("kB").unwrap_or(value).trim();
    number.parse::<u64>().ok().map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\nPPid:\t17\n\
        VmPeak:\t  900000 kB\nVmHWM:\t  640000 kB\nVmRSS:\t  620000 kB\nRssAnon:\t  600000 kB\n\
        RssFile:\t   19000 kB\nRssShmem:\t    1000 kB\nThreads:\t1\n";

    #[test]
    fn status_memory_lines() {
        let status = parse_status(STATUS).expect("parses");
        assert_eq!(status.hwm_bytes, 640_000 * 1024);
        assert_eq!(status.rss_bytes, 620_000 * 1024);
        assert_eq!(
            status.anon_bytes + status.file_bytes + status.shmem_bytes,
            status.rss_bytes
        );
    }

    #[test]
    fn zombie_status_has_no_memory() {
        assert_eq!(
            parse_status("Name:\tdefunct\nState:\tZ (zombie)\nPPid:\t1\n"),
            None
        );
    }

    #[test]
    fn smaps_rollup_pss_and_uss() {
        let text = "564ea7c3f000-7fff0ccbd000 ---p 00000000 00:00 0  [rollup]\nRss:  1584 kB\n\
            Pss:  752 kB\nPss_Anon:  112 kB\nShared_Clean:  1324 kB\nPrivate_Clean:  148 kB\n\
            Private_Dirty:  112 kB\nSwap:  0 kB\nPrivate_Hugetlb:  0 kB\n";
        let rollup = parse_smaps_rollup(text).expect("parses");
        assert_eq!(rollup.pss_bytes, 752 * 1024);
        assert_eq!(rollup.uss_bytes, 260 * 1024);
        assert_eq!(rollup.rss_bytes, 1584 * 1024);
    }

    #[test]
    fn stat_with_hostile_command_name() {
        let stat = parse_stat("42 (evil) S 7 (x) R 1 2 3");
        assert_eq!(
            stat,
            Some(Stat {
                ppid: 1,
                state: 'R',
                start_ticks: None
            })
        );
        assert_eq!(
            parse_stat("17 (python3) S 1 17 17 0"),
            Some(Stat {
                ppid: 1,
                state: 'S',
                start_ticks: None
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let full = "9 (a) b) S 1 9 9 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 10000 200";
        assert_eq!(
            parse_stat(full).map(|s| (s.ppid, s.start_ticks)),
            Some((1, Some(4242)))
        );
    }

    #[test]
    fn statm_in_pages() {
        assert_eq!(
            parse_statm(b"1000 300 100 1 0 250 0\n", 4096),
            Some(Statm {
                resident_bytes: 300 * 4096,
                shared_bytes: 100 * 4096
            })
        );
        assert_eq!(parse_statm(b"", 4096), None);
    }

    #[test]
    fn cmdline_and_meminfo() {
        assert_eq!(
            parse_cmdline(b"python\0-c\0print(1)\0"),
            ["python", "-c", "print(1)"]
        );
        let info =
            parse_meminfo("MemTotal: 24684092 kB\nMemFree: 1 kB\nMemAvailable: 24398024 kB\n");
        assert_eq!(
            info,
            Some(MemInfo {
                total_bytes: 24_684_092 * 1024,
                available_bytes: 24_398_024 * 1024
            })
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn positional_reads_reread_the_same_file() {
        let file = File::open("/proc/self/statm").expect("open");
        let mut buf = Vec::new();
        for _ in 0..3 {
            let text = pread_all(&file, &mut buf).expect("read");
            assert!(
                parse_statm(text, page_size())
                    .expect("parses")
                    .resident_bytes
                    > 0
            );
        }
    }
}
