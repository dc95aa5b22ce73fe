//! `Stats`: the runtime's cgroup statistics in containerd's formats,
//! `io.containerd.cgroups.v1.Metrics` on v1 and hybrid hosts and
//! `io.containerd.cgroups.v2.Metrics` on cgroup v2 (the only two types
//! CRI accepts), packed in an `Any` with the bare type name.

use std::collections::BTreeMap;

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use sprout_runtime::cgroups::Layout;
use sprout_runtime::cgroups::{BlkioEntry, MemoryEntry, Stats};

/// The metrics `Any` for a cgroup of `layout`.
pub fn to_any(stats: &Stats, layout: Layout) -> Any {
    let (type_url, value) = match layout {
        Layout::V2 => (
            "io.containerd.cgroups.v2.Metrics",
            v2_metrics(stats).write_to_bytes(),
        ),
        _ => (
            "io.containerd.cgroups.v1.Metrics",
            v1_metrics(stats).write_to_bytes(),
        ),
    };
    Any {
        type_url: type_url.into(),
        value: value.unwrap_or_default(),
        ..Default::default()
    }
}

fn raw(m: &BTreeMap<String, u64>, key: &str) -> u64 {
    m.get(key).copied().unwrap_or(0)
}

fn v1_entry(e: &MemoryEntry) -> v1::MemoryEntry {
    v1::MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    }
}

fn v1_blkio(entries: &[BlkioEntry]) -> Vec<v1::BlkIOEntry> {
    entries
        .iter()
        .map(|e| v1::BlkIOEntry {
            op: e.op.clone(),
            major: e.major,
            minor: e.minor,
            value: e.value,
            ..Default::default()
        })
        .collect()
}

pub fn v1_metrics(s: &Stats) -> v1::Metrics {
    let r = &s.memory.raw;
    let memory = v1::MemoryStat {
        cache: s.memory.cache,
        rss: raw(r, "rss"),
        rss_huge: raw(r, "rss_huge"),
        mapped_file: raw(r, "mapped_file"),
        dirty: raw(r, "dirty"),
        writeback: raw(r, "writeback"),
        pg_pg_in: raw(r, "pgpgin"),
        pg_pg_out: raw(r, "pgpgout"),
        pg_fault: raw(r, "pgfault"),
        pg_maj_fault: raw(r, "pgmajfault"),
        inactive_anon: raw(r, "inactive_anon"),
        active_anon: raw(r, "active_anon"),
        inactive_file: raw(r, "inactive_file"),
        active_file: raw(r, "active_file"),
        unevictable: raw(r, "unevictable"),
        hierarchical_memory_limit: raw(r, "hierarchical_memory_limit"),
        hierarchical_swap_limit: raw(r, "hierarchical_memsw_limit"),
        total_cache: raw(r, "total_cache"),
        total_rss: raw(r, "total_rss"),
        total_rss_huge: raw(r, "total_rss_huge"),
        total_mapped_file: raw(r, "total_mapped_file"),
        total_dirty: raw(r, "total_dirty"),
        total_writeback: raw(r, "total_writeback"),
        total_pg_pg_in: raw(r, "total_pgpgin"),
        total_pg_pg_out: raw(r, "total_pgpgout"),
        total_pg_fault: raw(r, "total_pgfault"),
        total_pg_maj_fault: raw(r, "total_pgmajfault"),
        total_inactive_anon: raw(r, "total_inactive_anon"),
        total_active_anon: raw(r, "total_active_anon"),
        total_inactive_file: raw(r, "total_inactive_file"),
        total_active_file: raw(r, "total_active_file"),
        total_unevictable: raw(r, "total_unevictable"),
        usage: Some(v1_entry(&s.memory.usage)).into(),
        swap: Some(v1_entry(&s.memory.swap)).into(),
        kernel: Some(v1_entry(&s.memory.kernel)).into(),
        kernel_tcp: Some(v1_entry(&s.memory.kernel_tcp)).into(),
        ..Default::default()
    };
    let b = &s.blkio;
    v1::Metrics {
        hugetlb: s
            .hugetlb
            .iter()
            .map(|(size, h)| v1::HugetlbStat {
                usage: h.usage,
                max: h.max,
                failcnt: h.failcnt,
                pagesize: size.clone(),
                ..Default::default()
            })
            .collect(),
        pids: Some(v1::PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v1::CPUStat {
            usage: Some(v1::CPUUsage {
                total: s.cpu.usage.total,
                kernel: s.cpu.usage.kernel,
                user: s.cpu.usage.user,
                per_cpu: s.cpu.usage.percpu.clone(),
                ..Default::default()
            })
            .into(),
            throttling: Some(v1::Throttle {
                periods: s.cpu.throttling.periods,
                throttled_periods: s.cpu.throttling.throttled_periods,
                throttled_time: s.cpu.throttling.throttled_time,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        memory: Some(memory).into(),
        blkio: Some(v1::BlkIOStat {
            io_service_bytes_recursive: v1_blkio(&b.io_service_bytes_recursive),
            io_serviced_recursive: v1_blkio(&b.io_serviced_recursive),
            io_queued_recursive: v1_blkio(&b.io_queue_recursive),
            io_service_time_recursive: v1_blkio(&b.io_service_time_recursive),
            io_wait_time_recursive: v1_blkio(&b.io_wait_time_recursive),
            io_merged_recursive: v1_blkio(&b.io_merged_recursive),
            io_time_recursive: v1_blkio(&b.io_time_recursive),
            sectors_recursive: v1_blkio(&b.sectors_recursive),
            ..Default::default()
        })
        .into(),
        memory_oom_control: Some(v1::MemoryOomControl {
            oom_kill: s.memory.oom_kill,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub fn v2_metrics(s: &Stats) -> v2::Metrics {
    let r = &s.memory.raw;
    let ns_to_us = |ns: u64| ns / 1000;
    v2::Metrics {
        pids: Some(v2::PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        })
        .into(),
        cpu: Some(v2::CPUStat {
            usage_usec: ns_to_us(s.cpu.usage.total),
            user_usec: ns_to_us(s.cpu.usage.user),
            system_usec: ns_to_us(s.cpu.usage.kernel),
            nr_periods: s.cpu.throttling.periods,
            nr_throttled: s.cpu.throttling.throttled_periods,
            throttled_usec: ns_to_us(s.cpu.throttling.throttled_time),
            ..Default::default()
        })
        .into(),
        memory: Some(v2::MemoryStat {
            anon: raw(r, "anon"),
            file: raw(r, "file"),
            kernel_stack: raw(r, "kernel_stack"),
            slab: raw(r, "slab"),
            sock: raw(r, "sock"),
            shmem: raw(r, "shmem"),
            file_mapped: raw(r, "file_mapped"),
            file_dirty: raw(r, "file_dirty"),
            file_writeback: raw(r, "file_writeback"),
            anon_thp: raw(r, "anon_thp"),
            inactive_anon: raw(r, "inactive_anon"),
            active_anon: raw(r, "active_anon"),
            inactive_file: raw(r, "inactive_file"),
            active_file: raw(r, "active_file"),
            unevictable: raw(r, "unevictable"),
            slab_reclaimable: raw(r, "slab_reclaimable"),
            slab_unreclaimable: raw(r, "slab_unreclaimable"),
            pgfault: raw(r, "pgfault"),
            pgmajfault: raw(r, "pgmajfault"),
            usage: s.memory.usage.usage,
            usage_limit: s.memory.usage.limit,
            max_usage: s.memory.usage.max,
            // v2 reports memory+swap as `swap` (like v1's memsw).
            swap_usage: s.memory.swap.usage.saturating_sub(s.memory.usage.usage),
            swap_limit: s.memory.swap.limit,
            ..Default::default()
        })
        .into(),
        memory_events: Some(v2::MemoryEvents {
            oom_kill: s.memory.oom_kill,
            ..Default::default()
        })
        .into(),
        hugetlb: s
            .hugetlb
            .iter()
            .map(|(size, h)| v2::HugeTlbStat {
                current: h.usage,
                max: h.max,
                pagesize: size.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_metrics_carry_the_values() {
        let mut s = Stats::default();
        s.cpu.usage.total = 5_000;
        s.memory.usage.usage = 4096;
        s.memory.raw.insert("total_rss".into(), 1234);
        s.pids.current = 3;
        let any = to_any(&s, Layout::Hybrid);
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 5_000);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.total_rss, 1234);
        assert_eq!(m.pids.current, 3);
        let any = to_any(&s, Layout::V2);
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 5);
        assert_eq!(m.memory.usage, 4096);
    }
}
