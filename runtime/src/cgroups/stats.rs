//! Resource usage statistics, shaped like the data of runc's
//! `events --stats` JSON.
//!
//! v1 values are read through cgroups-rs's controllers (their parsers for
//! memory.stat, cpuacct, pids, hugetlb); blkio (cgroups-rs does not read
//! BFQ's files) and every v2 value are read directly.

use std::collections::BTreeMap;
use std::path::Path;

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::cpuacct::CpuAcctController;
use cgroups_rs::fs::hugetlb::HugeTlbController;
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::pid::PidController;
use serde::{Deserialize, Serialize};

use super::error::Result;
use super::fsio::{self, RealFs, parse_flat_keyed, parse_u64_or_max};
use super::{Cgroup, Layout};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
    pub blkio: BlkioStats,
    /// Keyed by page size ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, HugetlbStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuUsage {
    pub total: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    /// Nanoseconds.
    pub throttled_time: u64,
}

/// Bytes; an unlimited limit is `u64::MAX`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    pub cache: u64,
    pub usage: MemoryEntry,
    /// memory+swap, as v1's memsw (on v2: memory + swap).
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat.
    pub raw: BTreeMap<String, u64>,
    /// Processes killed by the OOM killer in this cgroup.
    pub oom_kill: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    pub current: u64,
    /// 0 when unlimited (as runc reports it).
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlkioStats {
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    pub io_serviced_recursive: Vec<BlkioEntry>,
    pub io_queue_recursive: Vec<BlkioEntry>,
    pub io_service_time_recursive: Vec<BlkioEntry>,
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    pub io_merged_recursive: Vec<BlkioEntry>,
    pub io_time_recursive: Vec<BlkioEntry>,
    pub sectors_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HugetlbStats {
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

impl Cgroup {
    /// Current statistics. Controllers that are not available leave their
    /// part at defaults.
    pub fn stats(&self) -> Result<Stats> {
        let mut st = Stats::default();
        match self.s.layout {
            Layout::V2 => {
                if let Some(dir) = self.s.unified.as_deref() {
                    v2_cpu(dir, &mut st.cpu)?;
                    v2_memory(dir, &mut st.memory)?;
                    pids(dir, true, &mut st.pids);
                    st.blkio = v2_io(dir)?;
                    st.hugetlb = unified_hugetlb(dir)?;
                }
            }
            _ => {
                if let Some(dir) = self.v1_dir("cpuacct") {
                    v1_cpuacct(dir, &mut st.cpu.usage);
                }
                if let Some(dir) = self.v1_dir("cpu") {
                    let stat = CpuController::new(dir.to_path_buf(), dir.to_path_buf(), false)
                        .cpu()
                        .stat;
                    for (k, v) in parse_flat_keyed(&stat) {
                        match k {
                            "nr_periods" => st.cpu.throttling.periods = v,
                            "nr_throttled" => st.cpu.throttling.throttled_periods = v,
                            "throttled_time" => st.cpu.throttling.throttled_time = v,
                            _ => {}
                        }
                    }
                }
                if let Some(dir) = self.v1_dir("memory") {
                    v1_memory(dir, &mut st.memory)?;
                }
                if let Some(dir) = self.v1_dir("pids") {
                    pids(dir, false, &mut st.pids);
                }
                if let Some(dir) = self.v1_dir("blkio") {
                    st.blkio = v1_blkio(dir)?;
                }
                if let Some(dir) = self.v1_dir("hugetlb") {
                    let h = HugeTlbController::new(dir.to_path_buf(), dir.to_path_buf(), false);
                    for size in h.get_sizes() {
                        st.hugetlb.insert(
                            size.clone(),
                            HugetlbStats {
                                usage: h.usage_in_bytes(&size).unwrap_or(0),
                                max: h.max_usage_in_bytes(&size).unwrap_or(0),
                                failcnt: h.failcnt(&size).unwrap_or(0),
                            },
                        );
                    }
                } else if let Some(dir) = self.s.unified.as_deref() {
                    st.hugetlb = unified_hugetlb(dir)?;
                }
            }
        }
        Ok(st)
    }
}

fn nums(s: &str) -> Vec<u64> {
    s.split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

fn v1_cpuacct(dir: &Path, u: &mut CpuUsage) {
    let acct = CpuAcctController::new(dir.to_path_buf(), dir.to_path_buf()).cpuacct();
    u.total = acct.usage;
    u.percpu = nums(&acct.usage_percpu);
    // cpuacct.usage_all: "cpu user system" then one line per cpu.
    for line in acct.usage_all.lines().skip(1) {
        if let [_, user, sys] = nums(line)[..] {
            u.percpu_user.push(user);
            u.percpu_kernel.push(sys);
        }
    }
    if u.percpu_user.is_empty() {
        u.percpu_user = nums(&acct.usage_percpu_user);
        u.percpu_kernel = nums(&acct.usage_percpu_sys);
    }
    if acct.usage_user != 0 || acct.usage_sys != 0 {
        u.user = acct.usage_user;
        u.kernel = acct.usage_sys;
    } else {
        // cpuacct.stat is in clock ticks.
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        for (k, v) in parse_flat_keyed(&acct.stat) {
            match k {
                "user" => u.user = v * (1_000_000_000 / hz),
                "system" => u.kernel = v * (1_000_000_000 / hz),
                _ => {}
            }
        }
    }
}

fn v1_memory(dir: &Path, m: &mut MemoryStats) -> Result<()> {
    let c = MemController::new(dir.to_path_buf(), dir.to_path_buf(), false);
    let mem = c.memory_stat();
    m.usage = MemoryEntry {
        limit: mem.limit_in_bytes.max(0) as u64,
        usage: mem.usage_in_bytes,
        max: mem.max_usage_in_bytes,
        failcnt: mem.fail_cnt,
    };
    m.oom_kill = mem.oom_control.oom_kill;
    m.raw = mem.stat.raw.into_iter().collect();
    m.cache = m.raw.get("cache").copied().unwrap_or(0);
    let sw = c.memswap();
    m.swap = MemoryEntry {
        limit: sw.limit_in_bytes.max(0) as u64,
        usage: sw.usage_in_bytes,
        max: sw.max_usage_in_bytes,
        failcnt: sw.fail_cnt,
    };
    let tcp = c.kmem_tcp_stat();
    m.kernel_tcp = MemoryEntry {
        limit: tcp.limit_in_bytes.max(0) as u64,
        usage: tcp.usage_in_bytes,
        max: tcp.max_usage_in_bytes,
        failcnt: tcp.fail_cnt,
    };
    // kmem without cgroups-rs's kmem_stat, which also reads slabinfo.
    let read = |f: &str| -> Result<u64> {
        Ok(fsio::read_opt(&RealFs, dir, f)?
            .and_then(|s| fsio::parse_i64_as_u64(&s))
            .unwrap_or(0))
    };
    m.kernel = MemoryEntry {
        limit: read("memory.kmem.limit_in_bytes")?,
        usage: read("memory.kmem.usage_in_bytes")?,
        max: read("memory.kmem.max_usage_in_bytes")?,
        failcnt: read("memory.kmem.failcnt")?,
    };
    Ok(())
}

fn pids(dir: &Path, v2: bool, p: &mut PidsStats) {
    let c = PidController::new(dir.to_path_buf(), dir.to_path_buf(), v2);
    p.current = c.get_pid_current().unwrap_or(0);
    p.limit = match c.get_pid_max() {
        Ok(cgroups_rs::fs::MaxValue::Value(v)) if v > 0 => v as u64,
        _ => 0,
    };
}

/// "maj:min Op value" lines (v1 blkio recursive files).
fn parse_blkio(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f[..] {
                [dev, op, value] => (dev, op.to_string(), value),
                [dev, value] => (dev, String::new(), value),
                _ => return None, // "Total N"
            };
            let (maj, min) = dev.split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

fn v1_blkio(dir: &Path) -> Result<BlkioStats> {
    let read = |f: &str| -> Result<Vec<BlkioEntry>> {
        Ok(fsio::read_opt(&RealFs, dir, f)?
            .map(|t| parse_blkio(&t))
            .unwrap_or_default())
    };
    let mut b = BlkioStats::default();
    // CFQ's full set when present; else BFQ's; else the throttle layer's.
    if dir.join("blkio.io_service_bytes_recursive").exists() {
        b.io_service_bytes_recursive = read("blkio.io_service_bytes_recursive")?;
        b.io_serviced_recursive = read("blkio.io_serviced_recursive")?;
        b.io_queue_recursive = read("blkio.io_queued_recursive")?;
        b.io_service_time_recursive = read("blkio.io_service_time_recursive")?;
        b.io_wait_time_recursive = read("blkio.io_wait_time_recursive")?;
        b.io_merged_recursive = read("blkio.io_merged_recursive")?;
        b.io_time_recursive = read("blkio.time_recursive")?;
        b.sectors_recursive = read("blkio.sectors_recursive")?;
    } else if dir.join("blkio.bfq.io_service_bytes_recursive").exists() {
        b.io_service_bytes_recursive = read("blkio.bfq.io_service_bytes_recursive")?;
        b.io_serviced_recursive = read("blkio.bfq.io_serviced_recursive")?;
    } else {
        b.io_service_bytes_recursive = read("blkio.throttle.io_service_bytes_recursive")?;
        b.io_serviced_recursive = read("blkio.throttle.io_serviced_recursive")?;
    }
    Ok(b)
}

fn v2_cpu(dir: &Path, c: &mut CpuStats) -> Result<()> {
    let Some(text) = fsio::read_opt(&RealFs, dir, "cpu.stat")? else {
        return Ok(());
    };
    for (k, v) in parse_flat_keyed(&text) {
        match k {
            "usage_usec" => c.usage.total = v * 1000,
            "user_usec" => c.usage.user = v * 1000,
            "system_usec" => c.usage.kernel = v * 1000,
            "nr_periods" => c.throttling.periods = v,
            "nr_throttled" => c.throttling.throttled_periods = v,
            "throttled_usec" => c.throttling.throttled_time = v * 1000,
            _ => {}
        }
    }
    Ok(())
}

fn v2_memory(dir: &Path, m: &mut MemoryStats) -> Result<()> {
    let num = |f: &str| -> Result<Option<u64>> {
        Ok(fsio::read_opt(&RealFs, dir, f)?.and_then(|s| parse_u64_or_max(&s)))
    };
    let Some(usage) = num("memory.current")? else {
        return Ok(());
    }; // no memory controller
    let limit = num("memory.max")?.unwrap_or(u64::MAX);
    let events = fsio::read_opt(&RealFs, dir, "memory.events")?.unwrap_or_default();
    let event = |key: &str| {
        parse_flat_keyed(&events)
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, v)| v)
    };
    m.usage = MemoryEntry {
        limit,
        usage,
        max: num("memory.peak")?.unwrap_or(0),
        failcnt: event("max"),
    };
    m.oom_kill = event("oom_kill");
    if let Some(text) = fsio::read_opt(&RealFs, dir, "memory.stat")? {
        m.raw = parse_flat_keyed(&text)
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    }
    m.cache = m.raw.get("file").copied().unwrap_or(0);
    if let Some(swap) = num("memory.swap.current")? {
        let swap_max = num("memory.swap.max")?.unwrap_or(u64::MAX);
        m.swap = MemoryEntry {
            limit: limit.saturating_add(swap_max),
            usage: usage + swap,
            max: num("memory.swap.peak")?.unwrap_or(0),
            failcnt: 0,
        };
    }
    m.kernel.usage = m.raw.get("kernel").copied().unwrap_or(0);
    Ok(())
}

fn v2_io(dir: &Path) -> Result<BlkioStats> {
    let mut b = BlkioStats::default();
    let Some(text) = fsio::read_opt(&RealFs, dir, "io.stat")? else {
        return Ok(b);
    };
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (maj.parse(), min.parse()) else {
            continue;
        };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(value) = v.parse() else { continue };
            let e = |op: &str| BlkioEntry {
                major,
                minor,
                op: op.into(),
                value,
            };
            match k {
                "rbytes" => b.io_service_bytes_recursive.push(e("Read")),
                "wbytes" => b.io_service_bytes_recursive.push(e("Write")),
                "dbytes" => b.io_service_bytes_recursive.push(e("Discard")),
                "rios" => b.io_serviced_recursive.push(e("Read")),
                "wios" => b.io_serviced_recursive.push(e("Write")),
                "dios" => b.io_serviced_recursive.push(e("Discard")),
                _ => {}
            }
        }
    }
    Ok(b)
}

/// Page sizes the kernel supports ("2MB", "1GB"), from /sys/kernel/mm/hugepages.
pub(crate) fn hugepage_sizes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut sizes: Vec<(u64, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let s = if kb >= 1 << 20 && kb.is_multiple_of(1 << 20) {
                format!("{}GB", kb >> 20)
            } else if kb >= 1 << 10 && kb.is_multiple_of(1 << 10) {
                format!("{}MB", kb >> 10)
            } else {
                format!("{kb}KB")
            };
            Some((kb, s))
        })
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, s)| s).collect()
}

fn unified_hugetlb(dir: &Path) -> Result<BTreeMap<String, HugetlbStats>> {
    let mut out = BTreeMap::new();
    for size in hugepage_sizes() {
        let Some(cur) = fsio::read_opt(&RealFs, dir, &format!("hugetlb.{size}.current"))? else {
            continue; // hugetlb not enabled for this cgroup
        };
        let events =
            fsio::read_opt(&RealFs, dir, &format!("hugetlb.{size}.events"))?.unwrap_or_default();
        out.insert(
            size.clone(),
            HugetlbStats {
                usage: parse_u64_or_max(&cur).unwrap_or(0),
                max: 0, // cgroup2 keeps no peak for hugetlb
                failcnt: parse_flat_keyed(&events)
                    .find(|(k, _)| *k == "max")
                    .map_or(0, |(_, v)| v),
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_blkio() {
        let e = parse_blkio("8:0 Read 4096\n8:0 Write 0\n8:16 Total 7\nTotal 4103\n");
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            BlkioEntry {
                major: 8,
                minor: 0,
                op: "Read".into(),
                value: 4096
            }
        );
        assert_eq!(e[2].minor, 16);
    }

    #[test]
    fn stats_json_shape() {
        let mut s = Stats::default();
        s.hugetlb.insert("2MB".into(), HugetlbStats::default());
        let v = serde_json::to_value(&s).unwrap();
        assert!(v["cpu"]["throttling"].get("throttledPeriods").is_some());
        assert!(v["cpu"]["usage"].get("total").is_some());
        assert!(v["memory"].get("kernelTCP").is_some());
        assert!(v["memory"].get("oom_kill").is_some());
        assert!(v["blkio"].get("ioServiceBytesRecursive").is_some());
        assert!(v["hugetlb"]["2MB"].get("failcnt").is_some());
        let back: Stats = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
