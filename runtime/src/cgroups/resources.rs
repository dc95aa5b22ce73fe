//! OCI `linux.resources` → cgroup file writes, for v1 (and hybrid) and v2.
//!
//! Only what the spec sets is written. A resource whose controller is not
//! available is an error naming the controller.

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory, LinuxNetwork, LinuxPids, LinuxRdma,
    LinuxResources,
};

use super::SavedCgroup;
use super::devices;
use super::error::{CgroupError, Result};
use super::fsio::{self, CgroupFs};
use super::layout::Layout;

const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
const MEM_LIMIT: &str = "memory.limit_in_bytes";

pub(crate) fn apply(fs: &dyn CgroupFs, cg: &SavedCgroup, r: &LinuxResources) -> Result<()> {
    if cg.layout == Layout::V2 {
        apply_v2(fs, cg, r)
    } else {
        apply_v1(fs, cg, r)
    }
}

fn need_v1<'a>(
    cg: &'a SavedCgroup,
    controller: &'static str,
    resource: &'static str,
) -> Result<&'a Path> {
    cg.v1
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == controller))
        .map(|d| d.dir.as_path())
        .ok_or(CgroupError::ControllerUnavailable {
            controller: controller.into(),
            resource,
        })
}

fn invalid(resource: &'static str, reason: impl Into<String>) -> CgroupError {
    CgroupError::InvalidResource {
        resource,
        reason: reason.into(),
    }
}

fn errno_of(e: &CgroupError) -> Option<i32> {
    match e {
        CgroupError::Write { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Writes `first` then `second`; if `first` fails with EINVAL (the kernel
/// judged it against the *old* value of `second`), writes it again after
/// `second`. Used for cfs period/quota and rt period/runtime.
fn write_pair(
    fs: &dyn CgroupFs,
    dir: &Path,
    first: Option<(&str, String)>,
    second: Option<(&str, String)>,
) -> Result<()> {
    let mut retry = None;
    if let Some((file, v)) = &first {
        match fsio::write(fs, dir, file, v) {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(libc::EINVAL) && second.is_some() => {
                retry = first.clone()
            }
            Err(e) => return Err(e),
        }
    }
    if let Some((file, v)) = &second {
        fsio::write(fs, dir, file, v)?;
    }
    if let Some((file, v)) = retry {
        fsio::write(fs, dir, file, &v)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- v1 ----

fn apply_v1(fs: &dyn CgroupFs, cg: &SavedCgroup, r: &LinuxResources) -> Result<()> {
    if let Some(cpu) = r.cpu() {
        let (cpus, mems) = (non_empty(cpu.cpus()), non_empty(cpu.mems()));
        if cpus.is_some() || mems.is_some() {
            let dir = need_v1(cg, "cpuset", "cpu.cpus/cpu.mems")?;
            if let Some(c) = cpus {
                fsio::write(fs, dir, "cpuset.cpus", c)?;
            }
            if let Some(m) = mems {
                fsio::write(fs, dir, "cpuset.mems", m)?;
            }
        }
        cpu_v1(fs, cg, cpu)?;
    }
    if let Some(m) = r.memory() {
        memory_v1(fs, cg, m)?;
    }
    if let Some(p) = r.pids() {
        fsio::write(
            fs,
            need_v1(cg, "pids", "pids.limit")?,
            "pids.max",
            &pids_value(p),
        )?;
    }
    if let Some(b) = r.block_io() {
        blkio_v1(fs, cg, b)?;
    }
    if let Some(h) = r.hugepage_limits().as_deref().filter(|h| !h.is_empty()) {
        hugetlb(fs, cg, h)?;
    }
    if let Some(n) = r.network() {
        network_v1(fs, cg, n)?;
    }
    if let Some(rdma) = r.rdma().as_ref().filter(|m| !m.is_empty()) {
        write_rdma(fs, need_v1(cg, "rdma", "rdma")?, rdma)?;
    }
    if let Some(d) = r.devices() {
        let rules = devices::normalize(d)?;
        devices::apply_v1(fs, need_v1(cg, "devices", "devices")?, &rules)?;
    }
    if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        unified(fs, cg, u)?;
    }
    Ok(())
}

fn cpu_v1(fs: &dyn CgroupFs, cg: &SavedCgroup, cpu: &LinuxCpu) -> Result<()> {
    let shares = cpu.shares().filter(|s| *s != 0);
    let quota = cpu.quota().filter(|q| *q != 0);
    let period = cpu.period().filter(|p| *p != 0);
    let rt_period = cpu.realtime_period().filter(|p| *p != 0);
    let rt_runtime = cpu.realtime_runtime().filter(|r| *r != 0);
    if shares.is_none()
        && quota.is_none()
        && period.is_none()
        && cpu.burst().is_none()
        && rt_period.is_none()
        && rt_runtime.is_none()
        && cpu.idle().is_none()
    {
        return Ok(());
    }
    let dir = need_v1(cg, "cpu", "cpu")?;
    if let Some(s) = shares {
        fsio::write(fs, dir, "cpu.shares", &s.to_string())?;
    }
    write_pair(
        fs,
        dir,
        period.map(|p| ("cpu.cfs_period_us", p.to_string())),
        quota.map(|q| {
            (
                "cpu.cfs_quota_us",
                if q < 0 {
                    "-1".to_string()
                } else {
                    q.to_string()
                },
            )
        }),
    )?;
    if let Some(b) = cpu.burst() {
        fsio::write(fs, dir, "cpu.cfs_burst_us", &b.to_string())?;
    }
    write_pair(
        fs,
        dir,
        rt_period.map(|p| ("cpu.rt_period_us", p.to_string())),
        rt_runtime.map(|r| {
            (
                "cpu.rt_runtime_us",
                if r < 0 {
                    "-1".to_string()
                } else {
                    r.to_string()
                },
            )
        }),
    )?;
    if let Some(i) = cpu.idle() {
        fsio::write(fs, dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

fn check_mem_value(resource: &'static str, v: Option<i64>) -> Result<()> {
    match v {
        Some(x) if x < -1 => Err(invalid(resource, format!("{x} (use -1 for unlimited)"))),
        _ => Ok(()),
    }
}

fn v1_bytes(v: i64) -> String {
    v.to_string()
}

/// Refuses a new memory limit at or below current usage when the spec asks
/// for `checkBeforeUpdate`.
fn check_before_update(
    fs: &dyn CgroupFs,
    dir: &Path,
    usage_file: &str,
    limit: Option<i64>,
) -> Result<()> {
    let Some(limit) = limit.filter(|l| *l > 0) else {
        return Ok(());
    };
    let usage = fsio::read(fs, dir, usage_file)?;
    let usage: u64 = usage
        .trim()
        .parse()
        .map_err(|_| fsio::parse_err(dir, usage_file, "not a number"))?;
    if (limit as u64) <= usage {
        return Err(invalid(
            "memory.limit",
            format!("{limit} is not above the current usage {usage} (checkBeforeUpdate)"),
        ));
    }
    Ok(())
}

fn memory_v1(fs: &dyn CgroupFs, cg: &SavedCgroup, m: &LinuxMemory) -> Result<()> {
    if m.kernel().is_some() || m.kernel_tcp().is_some() {
        tracing::warn!(
            "memory.kernel / memory.kernelTCP are deprecated and ignored (as runc does)"
        );
    }
    // 0 means "not set" for these, as in runc (whose specs and callers
    // use it so): writing it would OOM-kill the init at once (limit) or
    // refuse the container (swap below the limit).
    let limit = m.limit().filter(|&v| v != 0);
    let mut swap = m.swap().filter(|&v| v != 0);
    let reservation = m.reservation().filter(|&v| v != 0);
    check_mem_value("memory.limit", limit)?;
    check_mem_value("memory.swap", swap)?;
    check_mem_value("memory.reservation", reservation)?;
    if let Some(s) = m.swappiness()
        && s > 100
    {
        return Err(invalid(
            "memory.swappiness",
            format!("{s} is not in 0..=100"),
        ));
    }
    if limit.is_none()
        && swap.is_none()
        && reservation.is_none()
        && m.swappiness().is_none()
        && m.disable_oom_killer() != Some(true)
        && m.use_hierarchy().is_none()
    {
        return Ok(());
    }
    let dir = need_v1(cg, "memory", "memory")?;
    if m.check_before_update() == Some(true) {
        check_before_update(fs, dir, "memory.usage_in_bytes", limit)?;
    }
    let memsw = fs.exists(&dir.join(MEMSW_LIMIT));
    // Unlimited memory with no explicit swap: unlimited memory+swap too.
    if limit == Some(-1) && swap.is_none() && memsw {
        swap = Some(-1);
    }
    if let Some(s) = swap
        && !memsw
    {
        if s == -1 {
            swap = None; // nothing to lift without swap accounting
        } else {
            return Err(CgroupError::ControllerUnavailable {
                controller: "memory swap accounting (memory.memsw.*)".into(),
                resource: "memory.swap",
            });
        }
    }
    match (limit, swap) {
        (Some(l), Some(s)) => {
            if s != -1 && l == -1 {
                return Err(invalid(
                    "memory.swap",
                    format!("{s} is finite but memory.limit is unlimited"),
                ));
            }
            if s != -1 && s < l {
                return Err(invalid(
                    "memory.swap",
                    format!("memory+swap {s} is below memory.limit {l}"),
                ));
            }
            // The kernel keeps limit <= memsw.limit at every step: raise
            // memsw first when it grows past the current limit, else lower
            // the limit first.
            let cur = fsio::read(fs, dir, MEM_LIMIT)?;
            let cur = fsio::parse_i64_as_u64(&cur)
                .ok_or_else(|| fsio::parse_err(dir, MEM_LIMIT, "not a number"))?;
            if s == -1 || cur < s as u64 {
                fsio::write(fs, dir, MEMSW_LIMIT, &v1_bytes(s))?;
                fsio::write(fs, dir, MEM_LIMIT, &v1_bytes(l))?;
            } else {
                fsio::write(fs, dir, MEM_LIMIT, &v1_bytes(l))?;
                fsio::write(fs, dir, MEMSW_LIMIT, &v1_bytes(s))?;
            }
        }
        (Some(l), None) => fsio::write(fs, dir, MEM_LIMIT, &v1_bytes(l))?,
        (None, Some(s)) => fsio::write(fs, dir, MEMSW_LIMIT, &v1_bytes(s))?,
        (None, None) => {}
    }
    if let Some(r) = reservation {
        fsio::write(fs, dir, "memory.soft_limit_in_bytes", &v1_bytes(r))?;
    }
    if let Some(s) = m.swappiness() {
        fsio::write(fs, dir, "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        fsio::write(fs, dir, "memory.oom_control", "1")?;
    }
    if let Some(h) = m.use_hierarchy() {
        fsio::write(fs, dir, "memory.use_hierarchy", if h { "1" } else { "0" })?;
    }
    Ok(())
}

fn pids_value(p: &LinuxPids) -> String {
    // runc: a limit <= 0 means "no limit".
    if p.limit() > 0 {
        p.limit().to_string()
    } else {
        "max".to_string()
    }
}

fn dev(major: i64, minor: i64, resource: &'static str) -> Result<String> {
    if major < 0 || minor < 0 {
        return Err(invalid(
            resource,
            format!("device {major}:{minor} has a negative number"),
        ));
    }
    Ok(format!("{major}:{minor}"))
}

fn blkio_v1(fs: &dyn CgroupFs, cg: &SavedCgroup, b: &LinuxBlockIo) -> Result<()> {
    let weight = b.weight().filter(|w| *w != 0);
    let leaf = b.leaf_weight().filter(|w| *w != 0);
    let wdev = b.weight_device().as_deref().unwrap_or_default();
    let throttles = [
        (
            b.throttle_read_bps_device(),
            "blkio.throttle.read_bps_device",
        ),
        (
            b.throttle_write_bps_device(),
            "blkio.throttle.write_bps_device",
        ),
        (
            b.throttle_read_iops_device(),
            "blkio.throttle.read_iops_device",
        ),
        (
            b.throttle_write_iops_device(),
            "blkio.throttle.write_iops_device",
        ),
    ];
    let any_throttle = throttles
        .iter()
        .any(|(l, _)| l.as_ref().is_some_and(|l| !l.is_empty()));
    if weight.is_none() && leaf.is_none() && wdev.is_empty() && !any_throttle {
        return Ok(());
    }
    let dir = need_v1(cg, "blkio", "blockIO")?;
    // CFQ's files, or BFQ's when the kernel only has BFQ (blk-mq).
    let needs_weight = weight.is_some() || wdev.iter().any(|d| d.weight().is_some());
    let (weight_file, weight_dev_file) = if !needs_weight || fs.exists(&dir.join("blkio.weight")) {
        ("blkio.weight", "blkio.weight_device")
    } else if fs.exists(&dir.join("blkio.bfq.weight")) {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    } else {
        return Err(CgroupError::ControllerUnavailable {
            controller: "blkio weight (CFQ or BFQ I/O scheduler)".into(),
            resource: "blockIO.weight",
        });
    };
    if let Some(w) = weight {
        fsio::write(fs, dir, weight_file, &w.to_string())?;
    }
    let needs_leaf = leaf.is_some() || wdev.iter().any(|d| d.leaf_weight().is_some());
    if needs_leaf && !fs.exists(&dir.join("blkio.leaf_weight")) {
        return Err(CgroupError::ControllerUnavailable {
            controller: "blkio leaf weight (CFQ I/O scheduler)".into(),
            resource: "blockIO.leafWeight",
        });
    }
    if let Some(w) = leaf {
        fsio::write(fs, dir, "blkio.leaf_weight", &w.to_string())?;
    }
    for d in wdev {
        let id = dev(d.major(), d.minor(), "blockIO.weightDevice")?;
        if let Some(w) = d.weight() {
            fsio::write(fs, dir, weight_dev_file, &format!("{id} {w}"))?;
        }
        if let Some(w) = d.leaf_weight() {
            fsio::write(fs, dir, "blkio.leaf_weight_device", &format!("{id} {w}"))?;
        }
    }
    for (list, file) in throttles {
        for d in list.as_deref().unwrap_or_default() {
            let id = dev(d.major(), d.minor(), "blockIO.throttle*Device")?;
            fsio::write(fs, dir, file, &format!("{id} {}", d.rate()))?;
        }
    }
    Ok(())
}

fn network_v1(fs: &dyn CgroupFs, cg: &SavedCgroup, n: &LinuxNetwork) -> Result<()> {
    if let Some(id) = n.class_id() {
        fsio::write(
            fs,
            need_v1(cg, "net_cls", "network.classID")?,
            "net_cls.classid",
            &id.to_string(),
        )?;
    }
    if let Some(prios) = n.priorities().as_deref().filter(|p| !p.is_empty()) {
        let dir = need_v1(cg, "net_prio", "network.priorities")?;
        for p in prios {
            if p.name().is_empty() || p.name().contains(char::is_whitespace) {
                return Err(invalid(
                    "network.priorities",
                    format!("bad interface name {:?}", p.name()),
                ));
            }
            fsio::write(
                fs,
                dir,
                "net_prio.ifpriomap",
                &format!("{} {}", p.name(), p.priority()),
            )?;
        }
    }
    Ok(())
}

fn write_rdma(
    fs: &dyn CgroupFs,
    dir: &Path,
    rdma: &std::collections::HashMap<String, LinuxRdma>,
) -> Result<()> {
    let sorted: BTreeMap<_, _> = rdma.iter().collect();
    for (device, limits) in sorted {
        if device.is_empty() || device.contains(char::is_whitespace) {
            return Err(invalid("rdma", format!("bad device name {device:?}")));
        }
        let mut line = device.clone();
        if let Some(h) = limits.hca_handles() {
            line.push_str(&format!(" hca_handle={h}"));
        }
        if let Some(o) = limits.hca_objects() {
            line.push_str(&format!(" hca_object={o}"));
        }
        if line.len() > device.len() {
            fsio::write(fs, dir, "rdma.max", &line)?;
        }
    }
    Ok(())
}

/// Validates an OCI hugepage size ("2MB", "1GB", "64KB").
fn page_size(s: &str) -> Result<&str> {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &s[digits.len()..];
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || !["KB", "MB", "GB"].contains(&unit)
    {
        return Err(invalid(
            "hugepageLimits.pageSize",
            format!("{s:?} is not like \"2MB\" or \"1GB\""),
        ));
    }
    Ok(s)
}

fn hugetlb(fs: &dyn CgroupFs, cg: &SavedCgroup, limits: &[LinuxHugepageLimit]) -> Result<()> {
    let unsupported = |ps: &str| {
        invalid(
            "hugepageLimits.pageSize",
            format!("page size {ps} is not supported by this kernel"),
        )
    };
    if let Some(dir) = cg
        .v1
        .iter()
        .find(|d| d.controllers.iter().any(|c| c == "hugetlb"))
        .map(|d| d.dir.as_path())
    {
        for l in limits {
            let ps = page_size(l.page_size())?;
            let v = if l.limit() < 0 {
                "-1".to_string()
            } else {
                l.limit().to_string()
            };
            let file = format!("hugetlb.{ps}.limit_in_bytes");
            match fsio::write(fs, dir, &file, &v) {
                Err(e) if errno_of(&e) == Some(libc::ENOENT) => return Err(unsupported(ps)),
                r => r?,
            }
            let rsvd = format!("hugetlb.{ps}.rsvd.limit_in_bytes");
            if fs.exists(&dir.join(&rsvd)) {
                fsio::write(fs, dir, &rsvd, &v)?;
            }
        }
        return Ok(());
    }
    let Some(dir) = cg.unified.as_deref() else {
        return Err(CgroupError::ControllerUnavailable {
            controller: "hugetlb".into(),
            resource: "hugepageLimits",
        });
    };
    ensure_unified(fs, cg, &["hugetlb"])?;
    for l in limits {
        let ps = page_size(l.page_size())?;
        let v = if l.limit() < 0 {
            "max".to_string()
        } else {
            l.limit().to_string()
        };
        match fsio::write(fs, dir, &format!("hugetlb.{ps}.max"), &v) {
            Err(e) if errno_of(&e) == Some(libc::ENOENT) => return Err(unsupported(ps)),
            r => r?,
        }
        let rsvd = format!("hugetlb.{ps}.rsvd.max");
        if fs.exists(&dir.join(&rsvd)) {
            fsio::write(fs, dir, &rsvd, &v)?;
        }
    }
    Ok(())
}

/// `linux.resources.unified`: raw cgroup2 files, where a cgroup2 directory
/// exists (v2, or hybrid's unified hierarchy).
fn unified(
    fs: &dyn CgroupFs,
    cg: &SavedCgroup,
    map: &std::collections::HashMap<String, String>,
) -> Result<()> {
    let Some(dir) = cg.unified.as_deref() else {
        return Err(CgroupError::Unsupported {
            resource: "unified",
            layout: "cgroup v1 without a cgroup2 hierarchy",
        });
    };
    let sorted: BTreeMap<_, _> = map.iter().collect();
    for (k, v) in sorted {
        if k.is_empty()
            || k.contains('/')
            || k.contains('\0')
            || k == "."
            || k == ".."
            || k.contains("..")
        {
            return Err(invalid(
                "unified",
                format!("key {k:?} is not a plain cgroup file name"),
            ));
        }
        match fsio::write(fs, dir, k, v) {
            // The file appears once its controller is enabled from above.
            Err(e) if errno_of(&e) == Some(libc::ENOENT) => {
                let controller = k.split('.').next().unwrap_or_default();
                if controller.is_empty() || controller == "cgroup" {
                    return Err(e);
                }
                ensure_unified(fs, cg, &[controller])?;
                fsio::write(fs, dir, k, v)?;
            }
            r => r?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- v2 ----

fn resource_of(controller: &str) -> &'static str {
    match controller {
        "cpu" => "cpu",
        "cpuset" => "cpu.cpus/cpu.mems",
        "memory" => "memory",
        "pids" => "pids",
        "io" => "blockIO",
        "hugetlb" => "hugepageLimits",
        "rdma" => "rdma",
        _ => "unified",
    }
}

/// Makes `wanted` controllers available in the cgroup2 directory by
/// enabling them in `cgroup.subtree_control` of its ancestors as needed,
/// never above `unified_base`.
pub(crate) fn ensure_unified(fs: &dyn CgroupFs, cg: &SavedCgroup, wanted: &[&str]) -> Result<()> {
    let Some(leaf) = cg.unified.as_deref() else {
        let c = wanted.first().copied().unwrap_or_default();
        return Err(CgroupError::ControllerUnavailable {
            controller: c.into(),
            resource: resource_of(c),
        });
    };
    let base = cg.unified_base.as_deref().unwrap_or(leaf);
    enable_chain(fs, leaf, base, wanted)
}

fn enable_chain(fs: &dyn CgroupFs, dir: &Path, base: &Path, wanted: &[&str]) -> Result<()> {
    let avail = fsio::read(fs, dir, "cgroup.controllers")?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| !avail.split_whitespace().any(|a| a == *w))
        .collect();
    let Some(first) = missing.first() else {
        return Ok(());
    };
    let parent = match dir.parent() {
        Some(p) if dir != base && p.starts_with(base) => p,
        _ => {
            return Err(CgroupError::ControllerUnavailable {
                controller: (*first).into(),
                resource: resource_of(first),
            });
        }
    };
    enable_chain(fs, parent, base, &missing)?;
    let value = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    fsio::write(fs, parent, "cgroup.subtree_control", &value)
}

/// On a pure v2 host, enables cpu/io/memory/pids for a new cgroup so it is
/// accounted from the start (best effort).
pub(crate) fn enable_default_v2_controllers(fs: &dyn CgroupFs, cg: &SavedCgroup) {
    let Some(base) = cg.unified_base.as_deref() else {
        return;
    };
    let Ok(avail) = fsio::read(fs, base, "cgroup.controllers") else {
        return;
    };
    let wanted: Vec<&str> = ["cpu", "io", "memory", "pids"]
        .into_iter()
        .filter(|c| avail.split_whitespace().any(|a| a == *c))
        .collect();
    if wanted.is_empty() {
        return;
    }
    if let Err(e) = ensure_unified(fs, cg, &wanted) {
        tracing::warn!(error = %e, "enabling cgroup2 controllers for a new cgroup");
    }
}

/// runc's conversion of cgroup v1 `cpu.shares` [2, 262144] to cgroup v2
/// `cpu.weight` [1, 10000]: a quadratic fit in log2 space that maps the
/// defaults (1024 → 100) and both ends onto each other.
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        1..=2 => 1,
        s if s >= 262_144 => 10_000,
        s => {
            let l = (s as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            10f64.powf(exponent).ceil() as u64
        }
    }
}

/// cgroup v1 blkio weight [10, 1000] to cgroup v2 `io.weight` [1, 10000].
pub(crate) fn blkio_weight_to_io_weight(w: u16) -> u64 {
    let w = u64::from(w.clamp(10, 1000));
    1 + (w - 10) * 9999 / 990
}

/// OCI `memory.swap` (memory+swap) to cgroup v2 `memory.swap.max` (swap
/// only); `None` leaves the file alone.
pub(crate) fn swap_to_v2(swap: Option<i64>, limit: Option<i64>) -> Result<Option<String>> {
    let limit = limit.unwrap_or(0);
    match swap {
        None | Some(0) => Ok(if limit == -1 {
            Some("max".into())
        } else {
            None
        }),
        Some(-1) => Ok(Some("max".into())),
        Some(s) if s < -1 => Err(invalid(
            "memory.swap",
            format!("{s} (use -1 for unlimited)"),
        )),
        Some(s) => {
            if limit <= 0 {
                return Err(invalid(
                    "memory.swap",
                    format!("{s} needs a finite memory.limit to be converted for cgroup v2"),
                ));
            }
            if s < limit {
                return Err(invalid(
                    "memory.swap",
                    format!("memory+swap {s} is below memory.limit {limit}"),
                ));
            }
            Ok(Some((s - limit).to_string()))
        }
    }
}

fn v2_bytes(v: i64) -> String {
    if v == -1 { "max".into() } else { v.to_string() }
}

fn apply_v2(fs: &dyn CgroupFs, cg: &SavedCgroup, r: &LinuxResources) -> Result<()> {
    let Some(dir) = cg.unified.as_deref() else {
        return Err(CgroupError::ControllerUnavailable {
            controller: "cgroup2".into(),
            resource: "resources",
        });
    };
    // Make every controller the spec needs available, in one pass (the
    // fast path is a single read of cgroup.controllers).
    let mut need = Vec::new();
    if let Some(c) = r.cpu() {
        if non_empty(c.cpus()).is_some() || non_empty(c.mems()).is_some() {
            need.push("cpuset");
        }
        if c.shares().is_some_and(|s| s != 0)
            || c.quota().is_some_and(|q| q != 0)
            || c.period().is_some_and(|p| p != 0)
            || c.burst().is_some()
            || c.idle().is_some()
        {
            need.push("cpu");
        }
        if c.realtime_period().is_some_and(|p| p != 0)
            || c.realtime_runtime().is_some_and(|r| r != 0)
        {
            return Err(CgroupError::Unsupported {
                resource: "cpu.realtimeRuntime/realtimePeriod",
                layout: "cgroup v2",
            });
        }
    }
    if let Some(m) = r.memory()
        && (m.limit().is_some() || m.swap().is_some() || m.reservation().is_some())
    {
        need.push("memory");
    }
    if r.pids().is_some() {
        need.push("pids");
    }
    if let Some(b) = r.block_io()
        && (b.weight().is_some_and(|w| w != 0)
            || b.weight_device().as_ref().is_some_and(|d| !d.is_empty())
            || [
                b.throttle_read_bps_device(),
                b.throttle_write_bps_device(),
                b.throttle_read_iops_device(),
                b.throttle_write_iops_device(),
            ]
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| !l.is_empty())))
    {
        need.push("io");
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        need.push("hugetlb");
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        need.push("rdma");
    }
    if !need.is_empty() {
        ensure_unified(fs, cg, &need)?;
    }

    if let Some(cpu) = r.cpu() {
        if let Some(c) = non_empty(cpu.cpus()) {
            fsio::write(fs, dir, "cpuset.cpus", c)?;
        }
        if let Some(m) = non_empty(cpu.mems()) {
            fsio::write(fs, dir, "cpuset.mems", m)?;
        }
        cpu_v2(fs, dir, cpu)?;
    }
    if let Some(m) = r.memory() {
        memory_v2(fs, dir, m)?;
    }
    if let Some(p) = r.pids() {
        fsio::write(fs, dir, "pids.max", &pids_value(p))?;
    }
    if let Some(b) = r.block_io() {
        io_v2(fs, dir, b)?;
    }
    if let Some(h) = r.hugepage_limits().as_deref().filter(|h| !h.is_empty()) {
        hugetlb(fs, cg, h)?;
    }
    if let Some(n) = r.network()
        && (n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()))
    {
        return Err(CgroupError::Unsupported {
            resource: "network (net_cls/net_prio)",
            layout: "cgroup v2",
        });
    }
    if let Some(rdma) = r.rdma().as_ref().filter(|m| !m.is_empty()) {
        write_rdma(fs, dir, rdma)?;
    }
    if let Some(d) = r.devices() {
        let rules = devices::normalize(d)?;
        devices::apply_v2(dir, &rules)?;
    }
    if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        unified(fs, cg, u)?;
    }
    Ok(())
}

fn cpu_v2(fs: &dyn CgroupFs, dir: &Path, cpu: &LinuxCpu) -> Result<()> {
    if let Some(s) = cpu.shares().filter(|s| *s != 0) {
        fsio::write(fs, dir, "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    let quota = cpu.quota().filter(|q| *q != 0).map(|q| {
        if q < 0 {
            "max".to_string()
        } else {
            q.to_string()
        }
    });
    match (quota, cpu.period().filter(|p| *p != 0)) {
        (None, None) => {}
        (Some(q), Some(p)) => fsio::write(fs, dir, "cpu.max", &format!("{q} {p}"))?,
        // A lone quota keeps the current period (the kernel parses one token).
        (Some(q), None) => fsio::write(fs, dir, "cpu.max", &q)?,
        // A lone period keeps the current quota.
        (None, Some(p)) => {
            let cur = fsio::read(fs, dir, "cpu.max")?;
            let q = cur.split_whitespace().next().unwrap_or("max").to_string();
            fsio::write(fs, dir, "cpu.max", &format!("{q} {p}"))?;
        }
    }
    if let Some(b) = cpu.burst() {
        fsio::write(fs, dir, "cpu.max.burst", &b.to_string())?;
    }
    if let Some(i) = cpu.idle() {
        fsio::write(fs, dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

fn memory_v2(fs: &dyn CgroupFs, dir: &Path, m: &LinuxMemory) -> Result<()> {
    if m.kernel().is_some() || m.kernel_tcp().is_some() {
        tracing::warn!(
            "memory.kernel / memory.kernelTCP are deprecated and ignored (as runc does)"
        );
    }
    if m.swappiness().is_some() {
        tracing::warn!("memory.swappiness has no cgroup v2 equivalent; ignored (as runc does)");
    }
    if m.disable_oom_killer() == Some(true) {
        tracing::warn!(
            "memory.disableOOMKiller has no cgroup v2 equivalent; ignored (as runc does)"
        );
    }
    // 0 is "not set", as on v1 (and in runc).
    let limit = m.limit().filter(|&v| v != 0);
    let reservation = m.reservation().filter(|&v| v != 0);
    check_mem_value("memory.limit", limit)?;
    check_mem_value("memory.reservation", reservation)?;
    let swap = swap_to_v2(m.swap(), limit)?;
    if m.check_before_update() == Some(true) {
        check_before_update(fs, dir, "memory.current", limit)?;
    }
    if let Some(s) = swap {
        if fs.exists(&dir.join("memory.swap.max")) {
            fsio::write(fs, dir, "memory.swap.max", &s)?;
        } else if s != "max" {
            return Err(CgroupError::ControllerUnavailable {
                controller: "memory swap accounting (memory.swap.max)".into(),
                resource: "memory.swap",
            });
        }
    }
    if let Some(l) = limit {
        fsio::write(fs, dir, "memory.max", &v2_bytes(l))?;
    }
    if let Some(r) = reservation {
        fsio::write(fs, dir, "memory.low", &v2_bytes(r))?;
    }
    Ok(())
}

fn io_v2(fs: &dyn CgroupFs, dir: &Path, b: &LinuxBlockIo) -> Result<()> {
    if b.leaf_weight().is_some()
        || b.weight_device()
            .iter()
            .flatten()
            .any(|d| d.leaf_weight().is_some())
    {
        tracing::warn!("blockIO leaf weights have no cgroup v2 equivalent; ignored");
    }
    let weight = b.weight().filter(|w| *w != 0);
    let wdev = b.weight_device().as_deref().unwrap_or_default();
    if weight.is_some() || wdev.iter().any(|d| d.weight().is_some()) {
        // BFQ takes v1-style weights directly; io.weight needs conversion.
        let bfq = fs.exists(&dir.join("io.bfq.weight"));
        let (file, conv): (&str, fn(u16) -> u64) = if bfq {
            ("io.bfq.weight", u64::from)
        } else {
            ("io.weight", blkio_weight_to_io_weight)
        };
        if let Some(w) = weight {
            fsio::write(fs, dir, file, &conv(w).to_string())?;
        }
        for d in wdev {
            if let Some(w) = d.weight() {
                let id = dev(d.major(), d.minor(), "blockIO.weightDevice")?;
                fsio::write(fs, dir, file, &format!("{id} {}", conv(w)))?;
            }
        }
    }
    for (list, key) in [
        (b.throttle_read_bps_device(), "rbps"),
        (b.throttle_write_bps_device(), "wbps"),
        (b.throttle_read_iops_device(), "riops"),
        (b.throttle_write_iops_device(), "wiops"),
    ] {
        for d in list.as_deref().unwrap_or_default() {
            let id = dev(d.major(), d.minor(), "blockIO.throttle*Device")?;
            let rate = if d.rate() == 0 {
                "max".to_string()
            } else {
                d.rate().to_string()
            };
            fsio::write(fs, dir, "io.max", &format!("{id} {key}={rate}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::V1Dir;
    use crate::cgroups::fsio::recording::RecordingFs;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder,
        LinuxPidsBuilder, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
        LinuxWeightDeviceBuilder,
    };

    fn v1_cg(with_unified: bool) -> SavedCgroup {
        let v1 = ["cpu", "cpuset", "memory", "pids", "blkio", "devices"]
            .iter()
            .map(|c| V1Dir {
                controllers: vec![c.to_string()],
                dir: format!("/cg/{c}/x").into(),
            })
            .collect();
        SavedCgroup {
            layout: if with_unified {
                Layout::Hybrid
            } else {
                Layout::V1
            },
            v1,
            unified: with_unified.then(|| "/u/x".into()),
            unified_base: with_unified.then(|| "/u".into()),
            created: vec![],
        }
    }

    fn v2_cg() -> SavedCgroup {
        SavedCgroup {
            layout: Layout::V2,
            v1: vec![],
            unified: Some("/u/a/x".into()),
            unified_base: Some("/u".into()),
            created: vec![],
        }
    }

    fn w(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn mem(limit: Option<i64>, swap: Option<i64>) -> LinuxResources {
        let mut m = LinuxMemoryBuilder::default();
        if let Some(l) = limit {
            m = m.limit(l);
        }
        if let Some(s) = swap {
            m = m.swap(s);
        }
        LinuxResourcesBuilder::default()
            .memory(m.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn v1_memory_raising_writes_memsw_first() {
        let fs =
            RecordingFs::default().with_file("/cg/memory/x/memory.limit_in_bytes", "104857600\n");
        apply(&fs, &v1_cg(false), &mem(Some(200 << 20), Some(300 << 20))).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/cg/memory/x/memory.memsw.limit_in_bytes", "314572800"),
                ("/cg/memory/x/memory.limit_in_bytes", "209715200"),
            ])
        );
    }

    #[test]
    fn v1_memory_lowering_writes_limit_first() {
        let fs = RecordingFs::default().with_file(
            "/cg/memory/x/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        apply(&fs, &v1_cg(false), &mem(Some(32 << 20), Some(32 << 20))).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/cg/memory/x/memory.limit_in_bytes", "33554432"),
                ("/cg/memory/x/memory.memsw.limit_in_bytes", "33554432"),
            ])
        );
    }

    #[test]
    fn v1_memory_unlimited_lifts_swap_too() {
        let fs = RecordingFs::default().with_file("/cg/memory/x/memory.limit_in_bytes", "33554432");
        apply(&fs, &v1_cg(false), &mem(Some(-1), None)).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/cg/memory/x/memory.memsw.limit_in_bytes", "-1"),
                ("/cg/memory/x/memory.limit_in_bytes", "-1")
            ])
        );
    }

    #[test]
    fn v1_memory_rejects_swap_below_limit_and_missing_swap_accounting() {
        let fs = RecordingFs::default().with_file("/cg/memory/x/memory.limit_in_bytes", "0");
        let err = apply(&fs, &v1_cg(false), &mem(Some(64 << 20), Some(32 << 20))).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::InvalidResource {
                    resource: "memory.swap",
                    ..
                }
            ),
            "{err}"
        );
        let fs = RecordingFs::default().without("/cg/memory/x/memory.memsw.limit_in_bytes");
        let err = apply(&fs, &v1_cg(false), &mem(Some(64 << 20), Some(128 << 20))).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::ControllerUnavailable {
                    resource: "memory.swap",
                    ..
                }
            ),
            "{err}"
        );
        assert!(fs.taken().is_empty());
    }

    #[test]
    fn v1_memory_zero_means_unset() {
        // A limit with swap 0: only the limit, even without swap
        // accounting (runc's reading of 0).
        let fs = RecordingFs::default().without("/cg/memory/x/memory.memsw.limit_in_bytes");
        apply(&fs, &v1_cg(false), &mem(Some(64 << 20), Some(0))).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[("/cg/memory/x/memory.limit_in_bytes", "67108864")])
        );
        // A limit of 0 is no limit, not an instant OOM kill.
        let fs = RecordingFs::default();
        apply(&fs, &v1_cg(false), &mem(Some(0), Some(0))).unwrap();
        assert!(fs.taken().is_empty(), "{:?}", fs.taken());
    }

    #[test]
    fn v1_memory_other_fields() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .reservation(1 << 20)
                    .swappiness(10u64)
                    .disable_oom_killer(true)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let fs = RecordingFs::default();
        apply(&fs, &v1_cg(false), &r).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/cg/memory/x/memory.soft_limit_in_bytes", "1048576"),
                ("/cg/memory/x/memory.swappiness", "10"),
                ("/cg/memory/x/memory.oom_control", "1"),
            ])
        );
        let bad = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .swappiness(101u64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert!(apply(&fs, &v1_cg(false), &bad).is_err());
    }

    fn cpu(b: LinuxCpuBuilder) -> LinuxResources {
        LinuxResourcesBuilder::default()
            .cpu(b.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn v1_cpu_and_cpuset() {
        let fs = RecordingFs::default();
        let r = cpu(LinuxCpuBuilder::default()
            .shares(512u64)
            .quota(50_000)
            .period(100_000u64)
            .cpus("0")
            .mems("0"));
        apply(&fs, &v1_cg(false), &r).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/cg/cpuset/x/cpuset.cpus", "0"),
                ("/cg/cpuset/x/cpuset.mems", "0"),
                ("/cg/cpu/x/cpu.shares", "512"),
                ("/cg/cpu/x/cpu.cfs_period_us", "100000"),
                ("/cg/cpu/x/cpu.cfs_quota_us", "50000"),
            ])
        );
    }

    #[test]
    fn v1_cpu_period_retried_after_quota_on_einval() {
        let fs =
            RecordingFs::default().failing("/cg/cpu/x/cpu.cfs_period_us", "10000", libc::EINVAL);
        let r = cpu(LinuxCpuBuilder::default().quota(5000).period(10_000u64));
        // The recording fs keeps failing, so the retry fails too; the order
        // of attempts is what matters.
        let err = apply(&fs, &v1_cg(false), &r).unwrap_err();
        assert_eq!(fs.taken(), w(&[("/cg/cpu/x/cpu.cfs_quota_us", "5000")]));
        assert!(
            matches!(err, CgroupError::Write { ref file, .. } if file.ends_with("cpu.cfs_period_us"))
        );
        // Without a quota to write, EINVAL is reported at once.
        let fs =
            RecordingFs::default().failing("/cg/cpu/x/cpu.cfs_period_us", "10000", libc::EINVAL);
        assert!(
            apply(
                &fs,
                &v1_cg(false),
                &cpu(LinuxCpuBuilder::default().period(10_000u64))
            )
            .is_err()
        );
        assert!(fs.taken().is_empty());
    }

    #[test]
    fn v1_missing_controller_is_named() {
        let mut cg = v1_cg(false);
        cg.v1.retain(|d| d.controllers[0] != "pids");
        let r = LinuxResourcesBuilder::default()
            .pids(LinuxPidsBuilder::default().limit(10).build().unwrap())
            .build()
            .unwrap();
        let err = apply(&RecordingFs::default(), &cg, &r).unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerUnavailable { ref controller, .. } if controller == "pids"),
            "{err}"
        );
    }

    #[test]
    fn pids_limits() {
        for (limit, want) in [(10, "10"), (0, "max"), (-1, "max")] {
            let fs = RecordingFs::default();
            let r = LinuxResourcesBuilder::default()
                .pids(LinuxPidsBuilder::default().limit(limit).build().unwrap())
                .build()
                .unwrap();
            apply(&fs, &v1_cg(false), &r).unwrap();
            assert_eq!(fs.taken(), w(&[("/cg/pids/x/pids.max", want)]));
            let fs = RecordingFs::default().with_file("/u/a/x/cgroup.controllers", "pids memory");
            apply(&fs, &v2_cg(), &r).unwrap();
            assert_eq!(fs.taken(), w(&[("/u/a/x/pids.max", want)]));
        }
    }

    fn blkio() -> LinuxResources {
        let b = LinuxBlockIoBuilder::default()
            .weight(500u16)
            .weight_device(vec![
                LinuxWeightDeviceBuilder::default()
                    .major(8)
                    .minor(0)
                    .weight(200u16)
                    .build()
                    .unwrap(),
            ])
            .throttle_read_bps_device(vec![
                LinuxThrottleDeviceBuilder::default()
                    .major(8)
                    .minor(0)
                    .rate(1_000_000u64)
                    .build()
                    .unwrap(),
            ])
            .throttle_write_iops_device(vec![
                LinuxThrottleDeviceBuilder::default()
                    .major(8)
                    .minor(16)
                    .rate(100u64)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        LinuxResourcesBuilder::default()
            .block_io(b)
            .build()
            .unwrap()
    }

    #[test]
    fn v1_blkio_uses_bfq_files_when_cfq_is_absent() {
        let fs = RecordingFs::default().without("/cg/blkio/x/blkio.weight");
        apply(&fs, &v1_cg(false), &blkio()).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/cg/blkio/x/blkio.bfq.weight", "500"),
                ("/cg/blkio/x/blkio.bfq.weight_device", "8:0 200"),
                ("/cg/blkio/x/blkio.throttle.read_bps_device", "8:0 1000000"),
                ("/cg/blkio/x/blkio.throttle.write_iops_device", "8:16 100"),
            ])
        );
    }

    #[test]
    fn v2_io() {
        let fs = RecordingFs::default()
            .with_file("/u/a/x/cgroup.controllers", "io")
            .without("/u/a/x/io.bfq.weight");
        apply(&fs, &v2_cg(), &blkio()).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                (
                    "/u/a/x/io.weight",
                    &blkio_weight_to_io_weight(500).to_string()
                ),
                (
                    "/u/a/x/io.weight",
                    &format!("8:0 {}", blkio_weight_to_io_weight(200))
                ),
                ("/u/a/x/io.max", "8:0 rbps=1000000"),
                ("/u/a/x/io.max", "8:16 wiops=100"),
            ])
        );
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(1000), 10000);
    }

    #[test]
    fn cpu_weight_conversion() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1 << 20), 10_000);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(2048), 174);
        // Monotonic.
        let mut last = 0;
        for s in (2..262_144).step_by(97) {
            let w = shares_to_weight(s);
            assert!(w >= last && (1..=10_000).contains(&w));
            last = w;
        }
    }

    #[test]
    fn v2_cpu() {
        let fs = RecordingFs::default().with_file("/u/a/x/cgroup.controllers", "cpu cpuset");
        let r = cpu(LinuxCpuBuilder::default()
            .shares(1024u64)
            .quota(50_000)
            .period(100_000u64)
            .cpus("0-1"));
        apply(&fs, &v2_cg(), &r).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/u/a/x/cpuset.cpus", "0-1"),
                ("/u/a/x/cpu.weight", "100"),
                ("/u/a/x/cpu.max", "50000 100000")
            ])
        );
        // Quota -1 is "max"; a lone period keeps the current quota.
        let fs = RecordingFs::default().with_file("/u/a/x/cgroup.controllers", "cpu");
        apply(&fs, &v2_cg(), &cpu(LinuxCpuBuilder::default().quota(-1))).unwrap();
        assert_eq!(fs.taken(), w(&[("/u/a/x/cpu.max", "max")]));
        let fs = RecordingFs::default()
            .with_file("/u/a/x/cgroup.controllers", "cpu")
            .with_file("/u/a/x/cpu.max", "20000 100000\n");
        apply(
            &fs,
            &v2_cg(),
            &cpu(LinuxCpuBuilder::default().period(50_000u64)),
        )
        .unwrap();
        assert_eq!(fs.taken(), w(&[("/u/a/x/cpu.max", "20000 50000")]));
        // Realtime has no v2 equivalent.
        let err = apply(
            &fs,
            &v2_cg(),
            &cpu(LinuxCpuBuilder::default().realtime_runtime(100)),
        )
        .unwrap_err();
        assert!(matches!(err, CgroupError::Unsupported { .. }));
    }

    #[test]
    fn v2_memory_and_swap_conversion() {
        let fs = RecordingFs::default().with_file("/u/a/x/cgroup.controllers", "memory");
        apply(&fs, &v2_cg(), &mem(Some(100), Some(300))).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/u/a/x/memory.swap.max", "200"),
                ("/u/a/x/memory.max", "100")
            ])
        );
        let fs = RecordingFs::default().with_file("/u/a/x/cgroup.controllers", "memory");
        apply(&fs, &v2_cg(), &mem(Some(-1), None)).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/u/a/x/memory.swap.max", "max"),
                ("/u/a/x/memory.max", "max")
            ])
        );
        assert_eq!(
            swap_to_v2(Some(-1), Some(100)).unwrap().as_deref(),
            Some("max")
        );
        assert_eq!(swap_to_v2(None, Some(100)).unwrap(), None);
        assert_eq!(
            swap_to_v2(Some(100), Some(100)).unwrap().as_deref(),
            Some("0")
        );
        assert!(swap_to_v2(Some(50), Some(100)).is_err());
        assert!(swap_to_v2(Some(50), None).is_err());
        assert!(swap_to_v2(Some(50), Some(-1)).is_err());
    }

    #[test]
    fn v2_enables_missing_controllers_from_the_base_down() {
        // /u (base) has memory; /u/a (existing parent) and /u/a/x lack it.
        let fs = RecordingFs::default()
            .with_file("/u/cgroup.controllers", "cpu memory pids")
            .with_file("/u/a/cgroup.controllers", "cpu")
            .with_file("/u/a/x/cgroup.controllers", "cpu");
        apply(&fs, &v2_cg(), &mem(Some(1 << 20), None)).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/u/cgroup.subtree_control", "+memory"),
                ("/u/a/cgroup.subtree_control", "+memory"),
                ("/u/a/x/memory.max", "1048576"),
            ])
        );
        // Not available at the base: a clear error, nothing written.
        let fs = RecordingFs::default()
            .with_file("/u/cgroup.controllers", "cpu")
            .with_file("/u/a/cgroup.controllers", "cpu")
            .with_file("/u/a/x/cgroup.controllers", "cpu");
        let err = apply(&fs, &v2_cg(), &mem(Some(1 << 20), None)).unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerUnavailable { ref controller, resource: "memory" } if controller == "memory"),
            "{err}"
        );
        assert!(fs.taken().is_empty());
    }

    #[test]
    fn hybrid_hugetlb_goes_to_the_unified_dir() {
        let fs = RecordingFs::default()
            .with_file("/u/cgroup.controllers", "hugetlb")
            .with_file("/u/x/cgroup.controllers", "")
            .without("/u/x/hugetlb.2MB.rsvd.max");
        let r = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default()
                    .page_size("2MB")
                    .limit(4 << 20)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        apply(&fs, &v1_cg(true), &r).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[
                ("/u/cgroup.subtree_control", "+hugetlb"),
                ("/u/x/hugetlb.2MB.max", "4194304")
            ])
        );
        // Pure v1 without a hugetlb hierarchy: named error.
        let err = apply(&fs, &v1_cg(false), &r).unwrap_err();
        assert!(
            matches!(err, CgroupError::ControllerUnavailable { ref controller, .. } if controller == "hugetlb")
        );
        // Bad page size.
        let r = LinuxResourcesBuilder::default()
            .hugepage_limits(vec![
                LinuxHugepageLimitBuilder::default()
                    .page_size("2M")
                    .limit(1)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        assert!(matches!(
            apply(&fs, &v1_cg(true), &r).unwrap_err(),
            CgroupError::InvalidResource { .. }
        ));
    }

    #[test]
    fn unified_map() {
        let mut map = std::collections::HashMap::new();
        map.insert("pids.max".to_string(), "7".to_string());
        map.insert("cgroup.max.depth".to_string(), "3".to_string());
        let r = LinuxResourcesBuilder::default()
            .unified(map)
            .build()
            .unwrap();
        let fs = RecordingFs::default();
        apply(&fs, &v1_cg(true), &r).unwrap();
        assert_eq!(
            fs.taken(),
            w(&[("/u/x/cgroup.max.depth", "3"), ("/u/x/pids.max", "7")])
        );
        assert!(matches!(
            apply(&fs, &v1_cg(false), &r).unwrap_err(),
            CgroupError::Unsupported { .. }
        ));
        for bad in ["../x", "a/b", "..", ""] {
            let mut map = std::collections::HashMap::new();
            map.insert(bad.to_string(), "1".to_string());
            let r = LinuxResourcesBuilder::default()
                .unified(map)
                .build()
                .unwrap();
            assert!(
                matches!(
                    apply(&fs, &v1_cg(true), &r).unwrap_err(),
                    CgroupError::InvalidResource { .. }
                ),
                "{bad}"
            );
        }
    }
}
