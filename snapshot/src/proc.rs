//! Readers of `/proc/PID/...` for the dumper: what ptrace cannot give
//! (mm fields, VmFlags, present pages, credentials, fd details, timers).
//! Each parser takes text so it can be tested on fixtures.
// Field names mirror the /proc files they come from; see proc(5).
#![allow(missing_docs)]

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// Failure reading or parsing a /proc file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
}

fn read(pid: i32, file: &str) -> Result<String, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/{file}"));
    fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

fn parse_err(pid: i32, file: &str, reason: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: PathBuf::from(format!("/proc/{pid}/{file}")),
        reason: reason.into(),
    }
}

/// The `mm` fields `/proc/PID/stat` exposes (fields 26-28, 45-51). The
/// current `brk` is not among them: it comes from an injected `brk(0)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

/// Parses `/proc/PID/stat` text into the mm fields and the thread count.
pub fn parse_stat_mm(text: &str) -> Option<(MmFields, u64)> {
    // Fields after the command name (which may contain spaces and ')').
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is f[N - 3].
    let get = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    let mm = MmFields {
        start_code: get(26)?,
        end_code: get(27)?,
        start_stack: get(28)?,
        start_data: get(45)?,
        end_data: get(46)?,
        start_brk: get(47)?,
        arg_start: get(48)?,
        arg_end: get(49)?,
        env_start: get(50)?,
        env_end: get(51)?,
    };
    Some((mm, get(20)?))
}

pub fn stat_mm(pid: i32) -> Result<(MmFields, u64), ProcError> {
    parse_stat_mm(&read(pid, "stat")?).ok_or_else(|| parse_err(pid, "stat", "too few fields"))
}

/// What `/proc/PID/status` says about credentials and signals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub umask: u32,
    /// real, effective, saved, filesystem
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// Process-wide pending signals (ShdPnd).
    pub shared_pending: u64,
    pub ignored: u64,
    pub caught: u64,
    pub threads: u32,
}

pub fn parse_status(text: &str) -> Result<Status, String> {
    let mut s = Status::default();
    let hex = |v: &str| u64::from_str_radix(v.trim(), 16).map_err(|e| e.to_string());
    let ids = |v: &str| -> Result<[u32; 4], String> {
        let n: Vec<u32> = v
            .split_whitespace()
            .map(|x| {
                x.parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        n.try_into().map_err(|_| "expected four ids".to_string())
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Umask" => s.umask = u32::from_str_radix(v, 8).map_err(|e| e.to_string())?,
            "Uid" => s.uids = ids(v)?,
            "Gid" => s.gids = ids(v)?,
            "Groups" => {
                s.groups = v
                    .split_whitespace()
                    .map(|g| {
                        g.parse()
                            .map_err(|e: std::num::ParseIntError| e.to_string())
                    })
                    .collect::<Result<_, _>>()?
            }
            "CapInh" => s.cap_inh = hex(v)?,
            "CapPrm" => s.cap_prm = hex(v)?,
            "CapEff" => s.cap_eff = hex(v)?,
            "CapBnd" => s.cap_bnd = hex(v)?,
            "CapAmb" => s.cap_amb = hex(v)?,
            "NoNewPrivs" => s.no_new_privs = v == "1",
            "Seccomp" => {
                s.seccomp = v
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?
            }
            "ShdPnd" => s.shared_pending = hex(v)?,
            "SigIgn" => s.ignored = hex(v)?,
            "SigCgt" => s.caught = hex(v)?,
            "Threads" => {
                s.threads = v
                    .parse()
                    .map_err(|e: std::num::ParseIntError| e.to_string())?
            }
            _ => {}
        }
    }
    Ok(s)
}

pub fn status(pid: i32) -> Result<Status, ProcError> {
    parse_status(&read(pid, "status")?).map_err(|r| parse_err(pid, "status", r))
}

/// What smaps says about one VMA beyond maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmapsVma {
    /// `VmFlags:`, two-letter names.
    pub vmflags: Vec<String>,
    /// `ProtectionKey:` (present only on CPUs with PKU; 0 otherwise).
    pub protection_key: u32,
}

/// smaps `VmFlags` and protection key of each VMA, keyed by its start
/// address.
pub fn parse_smaps(text: &str) -> HashMap<u64, SmapsVma> {
    let mut out: HashMap<u64, SmapsVma> = HashMap::new();
    let mut current: Option<u64> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(start) = current {
                out.entry(start).or_default().vmflags =
                    rest.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("ProtectionKey:") {
            if let Some(start) = current {
                // An unparsable key is treated as non-zero: refused, not
                // silently dropped.
                out.entry(start).or_default().protection_key =
                    rest.trim().parse().unwrap_or(u32::MAX);
            }
            continue;
        }
        // A VMA header: "start-end perms offset dev inode [path]".
        if let Some((range, _)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && !start.is_empty()
            && start.bytes().all(|b| b.is_ascii_hexdigit())
            && end.bytes().all(|b| b.is_ascii_hexdigit())
        {
            current = u64::from_str_radix(start, 16).ok();
            if let Some(start) = current {
                out.entry(start).or_default();
            }
        }
    }
    out
}

pub fn smaps(pid: i32) -> Result<HashMap<u64, SmapsVma>, ProcError> {
    Ok(parse_smaps(&read(pid, "smaps")?))
}

/// One pagemap entry (see Documentation/admin-guide/mm/pagemap.rst).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntry(pub u64);

impl PageEntry {
    pub fn present(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    pub fn swapped(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// File-backed page or shared anonymous page; for a private file
    /// mapping a set bit means the page was never written (not COW'd).
    pub fn file_or_shared(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// The page is mapped exclusively by this process.
    pub fn exclusive(self) -> bool {
        self.0 & (1 << 56) != 0
    }
    /// The page frame number (0 unless the reader has CAP_SYS_ADMIN).
    pub fn pfn(self) -> u64 {
        self.0 & ((1 << 55) - 1)
    }
    /// A guard region installed with MADV_GUARD_INSTALL (pagemap bit 58).
    pub fn guard(self) -> bool {
        self.0 & (1 << 58) != 0
    }
}

/// `/proc/PID/pagemap`, read in ranges.
pub struct Pagemap {
    file: fs::File,
    pid: i32,
}

impl Pagemap {
    pub fn open(pid: i32) -> Result<Self, ProcError> {
        let path = PathBuf::from(format!("/proc/{pid}/pagemap"));
        let file = fs::File::open(&path).map_err(|source| ProcError::Read { path, source })?;
        Ok(Self { file, pid })
    }

    /// Entries for the pages of `[start, end)` (page aligned).
    pub fn range(&self, start: u64, end: u64) -> Result<Vec<PageEntry>, ProcError> {
        let mut out = Vec::new();
        self.for_each(start, end, |_, e| out.push(e))?;
        Ok(out)
    }

    /// Calls `f(page index from start, entry)` for each page of
    /// `[start, end)`, reading the entries a window at a time: a VMA may
    /// span terabytes of address space (a reservation costs its process
    /// nothing), whose entries must never be held at once.
    pub fn for_each(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, PageEntry),
    ) -> Result<(), ProcError> {
        const WINDOW_PAGES: u64 = 64 * 1024;
        let pages = (end - start) / 4096;
        let mut buf = vec![0u8; (WINDOW_PAGES.min(pages) * 8) as usize];
        let mut index = 0;
        while index < pages {
            let n_pages = WINDOW_PAGES.min(pages - index);
            let window = &mut buf[..(n_pages * 8) as usize];
            let mut done = 0;
            while done < window.len() {
                let n = self
                    .file
                    .read_at(
                        &mut window[done..],
                        (start / 4096 + index) * 8 + done as u64,
                    )
                    .map_err(|source| ProcError::Read {
                        path: PathBuf::from(format!("/proc/{}/pagemap", self.pid)),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            for (i, c) in window[..done - done % 8].chunks_exact(8).enumerate() {
                f(
                    index + i as u64,
                    PageEntry(u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                );
            }
            if done < window.len() {
                break;
            }
            index += n_pages;
        }
        Ok(())
    }
}

/// The fields of `/proc/PID/fdinfo/FD` a restore needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdInfo {
    pub pos: u64,
    /// Octal `flags:` (includes O_CLOEXEC as 02000000).
    pub flags: u32,
    pub mnt_id: u64,
    pub ino: u64,
    pub eventfd_count: Option<u64>,
    pub eventfd_semaphore: Option<bool>,
    pub epoll: Vec<EpollEntry>,
    pub timerfd: Option<TimerFdInfo>,
    pub signalfd_mask: Option<u64>,
    /// inotify/fanotify/io_uring show their own keys: present means refuse.
    pub unsupported_kind: Option<&'static str>,
}

/// One epoll registration (`tfd: events: data:` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollEntry {
    pub tfd: i32,
    pub events: u32,
    pub data: u64,
    /// Inode of the registered file, to check `tfd` still names it.
    pub ino: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerFdInfo {
    pub clockid: i32,
    pub ticks: u64,
    pub settime_flags: u32,
    pub value: (i64, i64),
    pub interval: (i64, i64),
}

fn parse_pair(v: &str) -> Option<(i64, i64)> {
    // "(1, 500000000)"
    let v = v.trim().trim_start_matches('(').trim_end_matches(')');
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

pub fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let mut fi = FdInfo::default();
    let mut tfd = TimerFdInfo::default();
    let mut is_timerfd = false;
    for line in text.lines() {
        if line.starts_with("tfd:") {
            // "tfd:        4 events:       19 data:                4  pos:0 ino:46fde sdev:f"
            let mut e = EpollEntry {
                tfd: 0,
                events: 0,
                data: 0,
                ino: 0,
            };
            // Values are padded after their "key:"; join them to "key:value".
            let norm = line
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .replace(": ", ":");
            for tok in norm.split(' ') {
                let Some((key, val)) = tok.split_once(':') else {
                    continue;
                };
                let bad = || format!("bad {key} in {line:?}");
                match key {
                    "tfd" => e.tfd = val.parse().map_err(|_| bad())?,
                    "events" => e.events = u32::from_str_radix(val, 16).map_err(|_| bad())?,
                    "data" => e.data = u64::from_str_radix(val, 16).map_err(|_| bad())?,
                    "ino" => e.ino = u64::from_str_radix(val, 16).map_err(|_| bad())?,
                    _ => {}
                }
            }
            fi.epoll.push(e);
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k}: {e}"));
        match k {
            "pos" => fi.pos = num(v)?,
            "flags" => fi.flags = u32::from_str_radix(v, 8).map_err(|e| format!("flags: {e}"))?,
            "mnt_id" => fi.mnt_id = num(v)?,
            "ino" => fi.ino = num(v)?,
            "eventfd-count" => {
                fi.eventfd_count =
                    Some(u64::from_str_radix(v, 16).map_err(|e| format!("eventfd-count: {e}"))?)
            }
            "eventfd-semaphore" => fi.eventfd_semaphore = Some(v == "1"),
            "clockid" => {
                is_timerfd = true;
                tfd.clockid = v.parse().map_err(|e| format!("clockid: {e}"))?
            }
            "ticks" => tfd.ticks = num(v)?,
            "settime flags" => {
                tfd.settime_flags =
                    u32::from_str_radix(v, 8).map_err(|e| format!("settime flags: {e}"))?
            }
            "it_value" => tfd.value = parse_pair(v).ok_or("bad it_value")?,
            "it_interval" => tfd.interval = parse_pair(v).ok_or("bad it_interval")?,
            "sigmask" => {
                fi.signalfd_mask =
                    Some(u64::from_str_radix(v, 16).map_err(|e| format!("sigmask: {e}"))?)
            }
            "inotify wd" => fi.unsupported_kind = Some("inotify"),
            "fanotify flags" => fi.unsupported_kind = Some("fanotify"),
            "SqMask" | "SqHead" => fi.unsupported_kind = Some("io_uring"),
            _ => {}
        }
    }
    if is_timerfd {
        fi.timerfd = Some(tfd);
    }
    Ok(fi)
}

pub fn fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let file = format!("fdinfo/{fd}");
    parse_fdinfo(&read(pid, &file)?).map_err(|r| parse_err(pid, &file, r))
}

/// A POSIX timer from `/proc/PID/timers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub signal: i32,
    /// `signal`, `thread`, `none`; with the target tid for `thread`.
    pub notify: String,
    pub notify_tid: i32,
    pub clock: i32,
}

pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, String> {
    let mut out = Vec::new();
    let mut cur: Option<PosixTimer> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "ID" => {
                if let Some(t) = cur.take() {
                    out.push(t);
                }
                cur = Some(PosixTimer {
                    id: v.parse().map_err(|e| format!("ID: {e}"))?,
                    signal: 0,
                    notify: String::new(),
                    notify_tid: 0,
                    clock: 0,
                });
            }
            "signal" => {
                if let Some(t) = cur.as_mut() {
                    t.signal = v
                        .split('/')
                        .next()
                        .unwrap_or("0")
                        .parse()
                        .map_err(|e| format!("signal: {e}"))?;
                }
            }
            "notify" => {
                if let Some(t) = cur.as_mut() {
                    // "signal/pid.1", "signal/tid.123", "none/pid.1": the
                    // kernel prints sigev_notify without SIGEV_THREAD_ID,
                    // then "tid" for a thread-directed timer (glibc's
                    // SIGEV_THREAD is SIGEV_SIGNAL | SIGEV_THREAD_ID) and
                    // "pid" for a process-wide one (a raw SIGEV_THREAD
                    // included, which the kernel treats as SIGEV_SIGNAL).
                    let (kind, target) = v.split_once('/').unwrap_or((v, ""));
                    let (who, id) = target.split_once('.').unwrap_or(("", "0"));
                    t.notify = match (kind, who) {
                        ("none", _) => "none",
                        (_, "tid") => "thread",
                        _ => "signal",
                    }
                    .to_string();
                    t.notify_tid = id.parse().unwrap_or(0);
                }
            }
            "ClockID" => {
                if let Some(t) = cur.as_mut() {
                    t.clock = v.parse().map_err(|e| format!("ClockID: {e}"))?;
                }
            }
            _ => {}
        }
    }
    if let Some(t) = cur {
        out.push(t);
    }
    Ok(out)
}

pub fn timers(pid: i32) -> Result<Vec<PosixTimer>, ProcError> {
    parse_timers(&read(pid, "timers")?).map_err(|r| parse_err(pid, "timers", r))
}

/// The saved auxiliary vector, as (type, value) words.
pub fn auxv(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    let path = PathBuf::from(format!("/proc/{pid}/auxv"));
    let bytes = fs::read(&path).map_err(|source| ProcError::Read { path, source })?;
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .take_while(|(t, _)| *t != 0)
        .collect())
}

/// Children of a process (to refuse process trees).
pub fn children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    let tids = crate::ptrace::procfs::list_tasks(pid)
        .map_err(|e| parse_err(pid, "task", e.to_string()))?;
    for tid in tids {
        // A thread may exit between the listing and the read.
        let text = match read(pid, &format!("task/{tid}/children")) {
            Ok(t) => t,
            Err(ProcError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                continue;
            }
            Err(e) => return Err(e),
        };
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_mm_fields() {
        // A real line from a python3 process (fields 1..52).
        let text = "4242 (python3) S 1 4242 4242 0 -1 4194560 2981 0 0 0 3 1 0 0 20 0 1 0 1234 30760960 6969 18446744073709551615 94352016576512 94352019493005 140733582812432 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 94352020419280 94352020885432 94352044625920 140733582819193 140733582819233 140733582819233 140733582823406 0";
        let (mm, threads) = parse_stat_mm(text).unwrap();
        assert_eq!(threads, 1);
        assert_eq!(mm.start_code, 94352016576512);
        assert_eq!(mm.end_code, 94352019493005);
        assert_eq!(mm.start_stack, 140733582812432);
        assert_eq!(mm.start_data, 94352020419280);
        assert_eq!(mm.end_data, 94352020885432);
        assert_eq!(mm.start_brk, 94352044625920);
        assert_eq!(mm.arg_start, 140733582819193);
        assert_eq!(mm.env_end, 140733582823406);
        let me = stat_mm(std::process::id() as i32).unwrap();
        assert!(me.0.start_code > 0 && me.0.arg_start < me.0.arg_end);
    }

    #[test]
    fn status_fields() {
        let text = "Name:\tx\nUmask:\t0027\nUid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 \nShdPnd:\t0000000000000200\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180000000\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000020\nNoNewPrivs:\t1\nSeccomp:\t2\nThreads:\t4\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.umask, 0o027);
        assert_eq!(s.uids, [1, 2, 3, 4]);
        assert_eq!(s.groups, vec![10, 20]);
        assert_eq!(s.shared_pending, 1 << 9);
        assert_eq!(s.cap_amb, 1 << 5);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
        assert_eq!(s.threads, 4);
        assert!(status(std::process::id() as i32).unwrap().threads >= 1);
    }

    #[test]
    fn vmflags_and_protection_keys_per_vma() {
        let text = "55aa000-55ab000 r--p 00000000 fe:00 247282   /usr/bin/head\nSize: 4 kB\nProtectionKey:         0\nVmFlags: rd mr mw me \n7ffd000-7ffe000 rw-p 00000000 00:00 0    [stack]\nProtectionKey:         3\nVmFlags: rd wr mr mw me gd ac \n";
        let m = parse_smaps(text);
        assert_eq!(m[&0x55aa000].vmflags, vec!["rd", "mr", "mw", "me"]);
        assert_eq!(m[&0x55aa000].protection_key, 0);
        assert!(m[&0x7ffd000].vmflags.contains(&"gd".to_string()));
        assert_eq!(m[&0x7ffd000].protection_key, 3);
        let me = smaps(std::process::id() as i32).unwrap();
        assert!(!me.is_empty());
        assert!(me.values().all(|v| !v.vmflags.is_empty()));
    }

    #[test]
    fn fdinfo_kinds() {
        let ep = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\ntfd:        4 events:       19 data:                4  pos:0 ino:46fde sdev:f\ntfd:       10 events: 80000001 data: ffffffffffffffff  pos:0 ino:1234 sdev:8\n";
        let fi = parse_fdinfo(ep).unwrap();
        assert_eq!(fi.flags, 0o2000002);
        assert_eq!(fi.epoll.len(), 2);
        assert_eq!(
            fi.epoll[0],
            EpollEntry {
                tfd: 4,
                events: 0x19,
                data: 4,
                ino: 0x46fde
            }
        );
        assert_eq!(fi.epoll[1].events, 0x8000_0001);
        assert_eq!(fi.epoll[1].data, u64::MAX);
        let ev = "pos:\t0\nflags:\t02004002\nmnt_id:\t17\nino:\t1038\neventfd-count:                a\neventfd-id: 1\neventfd-semaphore: 1\n";
        let fi = parse_fdinfo(ev).unwrap();
        assert_eq!(fi.eventfd_count, Some(10));
        assert_eq!(fi.eventfd_semaphore, Some(true));
        let tf = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\nclockid: 1\nticks: 3\nsettime flags: 01\nit_value: (0, 499868421)\nit_interval: (1, 0)\n";
        let t = parse_fdinfo(tf).unwrap().timerfd.unwrap();
        assert_eq!(t.clockid, 1);
        assert_eq!(t.ticks, 3);
        assert_eq!(t.value, (0, 499868421));
        assert_eq!(t.interval, (1, 0));
        let ino = "pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1038\ninotify wd:1 ino:2 sdev:3 mask:fff ignored_mask:0\n";
        assert_eq!(parse_fdinfo(ino).unwrap().unsupported_kind, Some("inotify"));
    }

    #[test]
    fn timers_file() {
        let text = "ID: 0\nsignal: 34/0000000000000000\nnotify: signal/pid.12\nClockID: 1\nID: 3\nsignal: 14/00007f0000000000\nnotify: signal/tid.15\nClockID: 0\nID: 4\nsignal: 10/0000000000000000\nnotify: thread/pid.12\nClockID: 1\nID: 5\nsignal: 0/0000000000000000\nnotify: none/pid.12\nClockID: 1\n";
        let t = parse_timers(text).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!((t[0].id, t[0].signal, t[0].clock), (0, 34, 1));
        assert_eq!(t[0].notify, "signal");
        assert_eq!((t[1].notify.as_str(), t[1].notify_tid), ("thread", 15));
        assert_eq!(t[2].notify, "signal", "a raw SIGEV_THREAD is process-wide");
        assert_eq!(t[3].notify, "none");
    }

    /// What this kernel prints for a thread-directed timer of our own.
    #[test]
    fn timers_file_of_a_thread_directed_timer() {
        // SAFETY: plain syscall; returns the calling thread's id.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        // SAFETY: an all-zero sigevent is valid; fields set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGURG;
        sev.sigev_notify_thread_id = tid;
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid sigevent and out pointer; the timer is never armed
        // and is deleted below.
        let created = unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) };
        assert_eq!(created, 0);
        let text = std::fs::read_to_string("/proc/self/timers").unwrap();
        // SAFETY: the timer created above.
        unsafe { libc::timer_delete(timer) };
        let t = parse_timers(&text).unwrap();
        assert!(
            t.iter()
                .any(|t| t.notify == "thread" && t.notify_tid == tid && t.signal == libc::SIGURG),
            "{text}"
        );
    }

    #[test]
    fn pagemap_of_own_stack() {
        let me = std::process::id() as i32;
        let local = 0u64;
        let addr = &local as *const u64 as u64 & !4095;
        let pm = Pagemap::open(me).unwrap();
        let e = pm.range(addr, addr + 4096).unwrap();
        assert!(e[0].present());
        assert!(!auxv(me).unwrap().is_empty());
        assert!(children(me).is_ok());
    }
}
