//! `sprout update`: new resource limits for a running container, from a
//! LinuxResources JSON (`--resources FILE|-`, what containerd passes) or
//! from runc's individual flags.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use oci_spec::runtime::LinuxResources;

use super::{GlobalOpts, runtime};

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// LinuxResources JSON file, or "-" for stdin.
    #[arg(short = 'r', long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<i64>,
    /// Memory soft limit in bytes.
    #[arg(long)]
    pub memory_reservation: Option<i64>,
    /// Memory plus swap limit in bytes (-1: unlimited).
    #[arg(long)]
    pub memory_swap: Option<i64>,
    /// CPU shares (relative weight).
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    /// CPU CFS quota in microseconds.
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds.
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPU realtime period in microseconds.
    #[arg(long)]
    pub cpu_rt_period: Option<u64>,
    /// CPU realtime runtime in microseconds.
    #[arg(long)]
    pub cpu_rt_runtime: Option<i64>,
    /// CPUs to use (e.g. 0-1).
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to use.
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Maximum number of pids (-1: unlimited).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10-1000).
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Container id.
    pub id: String,
}

fn from_flags(a: &UpdateArgs) -> Result<LinuxResources> {
    let mut v = serde_json::json!({});
    let mut set = |path: &[&str], value: serde_json::Value| {
        let mut cur = &mut v;
        for p in &path[..path.len() - 1] {
            cur = cur
                .as_object_mut()
                .expect("object")
                .entry(p.to_string())
                .or_insert_with(|| serde_json::json!({}));
        }
        cur[path[path.len() - 1]] = value;
    };
    if let Some(x) = a.memory {
        set(&["memory", "limit"], x.into());
    }
    if let Some(x) = a.memory_reservation {
        set(&["memory", "reservation"], x.into());
    }
    if let Some(x) = a.memory_swap {
        set(&["memory", "swap"], x.into());
    }
    if let Some(x) = a.cpu_shares {
        set(&["cpu", "shares"], x.into());
    }
    if let Some(x) = a.cpu_quota {
        set(&["cpu", "quota"], x.into());
    }
    if let Some(x) = a.cpu_period {
        set(&["cpu", "period"], x.into());
    }
    if let Some(x) = a.cpu_rt_period {
        set(&["cpu", "realtimePeriod"], x.into());
    }
    if let Some(x) = a.cpu_rt_runtime {
        set(&["cpu", "realtimeRuntime"], x.into());
    }
    if let Some(x) = &a.cpuset_cpus {
        set(&["cpu", "cpus"], x.clone().into());
    }
    if let Some(x) = &a.cpuset_mems {
        set(&["cpu", "mems"], x.clone().into());
    }
    if let Some(x) = a.pids_limit {
        set(&["pids", "limit"], x.into());
    }
    if let Some(x) = a.blkio_weight {
        set(&["blockIO", "weight"], x.into());
    }
    Ok(serde_json::from_value(v)?)
}

pub fn update(g: &GlobalOpts, a: UpdateArgs) -> Result<u8> {
    let resources = match &a.resources {
        Some(p) => {
            let data = if p.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
            };
            serde_json::from_slice(&data).context("parsing the resources JSON")?
        }
        None => from_flags(&a)?,
    };
    let rt = runtime(g)?;
    rt.container(&a.id)?.update(&resources)?;
    Ok(0)
}
