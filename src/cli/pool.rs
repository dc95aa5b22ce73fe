//! `sprout pool ...`: a client of sproutd's warm pool (the orchestrator
//! API of `shim/API.md`): pool status, pre-warm, drain, policy, the node
//! memory budget, claims and releases of instances, request-slot leases,
//! and the Prometheus metrics. sproutd's socket is found as for `sprout
//! function`; its error answers become the command's error (exit 1).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use sprout_shim::client::Client;
use sprout_shim::proto::{
    BudgetBody, BudgetView, ClaimBody, DrainBody, FunctionPoolView, PolicyBody, PolicyStrategy,
    PolicyView, PrewarmBody, StartCounts, parse_size,
};

use super::GlobalOpts;
use super::lifecycle::Format;

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// The memory budget and every function's pool, or one function's
    /// pool and its instances.
    Status {
        /// Only this function, with its instances.
        function: Option<String>,
        #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Hold COUNT warm instances of a function from now on (its min-warm),
    /// forking what is missing.
    Prewarm { function: String, count: u32 },
    /// Destroy a function's pool instances; those serving leases go when
    /// their last lease does, or at once with --force.
    Drain {
        function: String,
        /// Also destroy instances serving leases (their requests fail).
        #[arg(long)]
        force: bool,
    },
    /// Show a function's pool policy, or change the settings given.
    Policy(PolicyArgs),
    /// Show the node memory budget of the warm pools, or set it.
    Budget {
        /// Bytes, with an optional K, M, G or T suffix (binary: 512M, 2G),
        /// as sproutd's --memory-budget.
        #[arg(value_parser = parse_size)]
        bytes: Option<u64>,
    },
    /// Claim an instance of a function (warm from the pool when one is);
    /// prints its id, which `release` takes.
    Claim(ClaimArgs),
    /// Give a claimed instance back (destroyed, or back in the pool if the
    /// function reuses instances).
    Release {
        /// The claimed instance's id.
        id: String,
    },
    /// Take a request slot on an instance of a function.
    Acquire {
        function: String,
        #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Give a request slot back.
    Return {
        /// The lease, as `acquire` printed it.
        lease: String,
    },
    /// Print sproutd's metrics (Prometheus text format).
    Metrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// Learn idle times and pre-warm ahead of predicted arrivals.
    Hybrid,
    /// Keep an instance --keep-alive after its last request.
    Fixed,
    /// No pool: every start forks, every release destroys.
    None,
}

impl From<Strategy> for PolicyStrategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::Hybrid => PolicyStrategy::Hybrid,
            Strategy::Fixed => PolicyStrategy::Fixed,
            Strategy::None => PolicyStrategy::None,
        }
    }
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    pub function: String,
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// The keep-alive of `fixed`: seconds, or units such as 90s, 10m,
    /// 1h30m, 1d.
    #[arg(long, value_parser = parse_duration_secs)]
    pub keep_alive: Option<u64>,
    /// Warm instances kept whatever the policy says.
    #[arg(long)]
    pub min_warm: Option<u32>,
    /// Released instances go back to the pool (true) or are destroyed.
    #[arg(long)]
    pub reuse: Option<bool>,
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ClaimArgs {
    pub function: String,
    /// A bundle of yours; one naming its own cgroupsPath gets a fresh fork
    /// placed there.
    #[arg(short = 'b', long)]
    pub bundle: Option<PathBuf>,
    /// Limits applied before the instance runs: a JSON file of OCI
    /// `linux.resources`.
    #[arg(long)]
    pub resources: Option<PathBuf>,
    /// A file the instance's stdout is appended to from now on.
    #[arg(long)]
    pub stdout: Option<PathBuf>,
    /// A file the instance's stderr is appended to from now on.
    #[arg(long)]
    pub stderr: Option<PathBuf>,
    /// An annotation of the instance (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn pool(g: &GlobalOpts, c: PoolCommand) -> Result<u8> {
    let client = Client::new(&g.sproutd_socket);
    let mut out = std::io::stdout().lock();
    match c {
        PoolCommand::Status {
            function: Some(f),
            format,
        } => {
            let v = client.function_pool(&f)?;
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&v)?)?,
                Format::Table => write_function(&mut out, &v)?,
            }
        }
        PoolCommand::Status {
            function: None,
            format,
        } => {
            let v = client.pool()?;
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&v)?)?,
                Format::Table => {
                    writeln!(out, "{}", budget_line(&v.budget))?;
                    write_pools(&mut out, &v.functions)?;
                }
            }
        }
        PoolCommand::Prewarm { function, count } => {
            let r = client.prewarm(&function, &PrewarmBody { count })?;
            writeln!(out, "{function}: forked {}, warm {}", r.forked, r.warm)?;
        }
        PoolCommand::Drain { function, force } => {
            let r = client.drain(&function, &DrainBody { force })?;
            write!(out, "{function}: destroyed {}", r.destroyed)?;
            if r.busy > 0 {
                write!(
                    out,
                    ", {} serving leases (destroyed with their last lease)",
                    r.busy
                )?;
            }
            writeln!(out)?;
        }
        PoolCommand::Policy(a) => {
            let body = PolicyBody {
                strategy: a.strategy.map(Into::into),
                keep_alive_s: a.keep_alive,
                min_warm: a.min_warm,
                reuse: a.reuse,
            };
            let changes = body.strategy.is_some()
                || body.keep_alive_s.is_some()
                || body.min_warm.is_some()
                || body.reuse.is_some();
            let v = if changes {
                client.set_policy(&a.function, &body)?
            } else {
                client.function_pool(&a.function)?
            };
            match a.format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&v.policy)?)?,
                Format::Table => writeln!(out, "{}: {}", v.function, policy_line(&v.policy))?,
            }
        }
        PoolCommand::Budget { bytes } => {
            let v = match bytes {
                Some(limit_bytes) => client.set_budget(&BudgetBody { limit_bytes })?,
                None => client.pool()?,
            };
            writeln!(out, "{}", budget_line(&v.budget))?;
        }
        PoolCommand::Claim(a) => {
            let body = claim_body(&a)?;
            let c = client.claim(&a.function, &body)?;
            match a.format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&c)?)?,
                Format::Table => {
                    write!(
                        out,
                        "{} pid={} path={} claim_us={}",
                        c.id,
                        c.pid,
                        c.path.as_str(),
                        c.claim_us
                    )?;
                    if let Some(addr) = c.address {
                        write!(out, " address={addr}")?;
                    }
                    writeln!(out)?;
                }
            }
        }
        PoolCommand::Release { id } => {
            let r = client.release(&id)?;
            let what = if r.reused {
                "back in the pool"
            } else {
                "destroyed"
            };
            writeln!(out, "{}: {what}", r.id)?;
        }
        PoolCommand::Acquire { function, format } => {
            let l = client.acquire_lease(&function)?;
            match format {
                Format::Json => writeln!(out, "{}", serde_json::to_string(&l)?)?,
                Format::Table => {
                    write!(
                        out,
                        "{} instance={} pid={} path={} us={}",
                        l.lease,
                        l.instance,
                        l.pid,
                        l.path.as_str(),
                        l.us
                    )?;
                    if let Some(addr) = l.address {
                        write!(out, " address={addr}")?;
                    }
                    writeln!(out)?;
                }
            }
        }
        PoolCommand::Return { lease } => client.release_lease(&lease)?,
        PoolCommand::Metrics => out.write_all(client.metrics()?.as_bytes())?,
    }
    Ok(0)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("resolving {}", p.display()))
}

fn claim_body(a: &ClaimArgs) -> Result<ClaimBody> {
    let resources = match &a.resources {
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{}: not OCI linux.resources", p.display()))?,
        ),
        None => None,
    };
    let abs = |p: &Option<PathBuf>| p.as_deref().map(absolute).transpose();
    Ok(ClaimBody {
        bundle: abs(&a.bundle)?,
        resources,
        stdout: abs(&a.stdout)?,
        stderr: abs(&a.stderr)?,
        annotations: a.annotations.iter().cloned().collect::<HashMap<_, _>>(),
    })
}

fn write_pools(out: &mut impl Write, pools: &[FunctionPoolView]) -> Result<()> {
    writeln!(
        out,
        "{:<24} {:<8} {:<11} {:>6} {:>4} {:>9} {:>6} {:>8} {:>6} {:>7} {:>6} {:>6} {:>10}",
        "FUNCTION",
        "STRATEGY",
        "TIER",
        "TARGET",
        "WARM",
        "INSTANCES",
        "LEASES",
        "POOL_HIT",
        "FORK",
        "RESTORE",
        "COLD",
        "COLD%",
        "PER_INST"
    )?;
    for p in pools {
        let s = &p.starts;
        writeln!(
            out,
            "{:<24} {:<8} {:<11} {:>6} {:>4} {:>9} {:>6} {:>8} {:>6} {:>7} {:>6} {:>6} {:>10}",
            p.function,
            strategy_name(p.policy.strategy),
            p.plan.tier,
            p.plan.target,
            p.warm,
            p.instances.len(),
            p.leases,
            s.pool_hit,
            s.fork,
            s.restore,
            s.cold,
            cold_percent(s),
            human_bytes(p.bytes_per_instance)
        )?;
    }
    Ok(())
}

fn write_function(out: &mut impl Write, p: &FunctionPoolView) -> Result<()> {
    let plan = &p.plan;
    writeln!(out, "function: {}", p.function)?;
    writeln!(out, "policy:   {}", policy_line(&p.policy))?;
    write!(
        out,
        "plan:     target {}, pre-warm {}, tier {}",
        plan.target,
        yes_no(plan.pre_warm),
        plan.tier
    )?;
    if let Some(ms) = plan.review_in_ms {
        write!(out, ", next review in {ms} ms")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "pool:     {} warm, {} leases, {} per instance, write set {} pages",
        p.warm,
        p.leases,
        human_bytes(p.bytes_per_instance),
        p.write_set_pages
    )?;
    let s = &p.starts;
    writeln!(
        out,
        "starts:   {} pool hit, {} fork, {} restore, {} cold (cold-start ratio {})",
        s.pool_hit,
        s.fork,
        s.restore,
        s.cold,
        cold_percent(s)
    )?;
    if p.instances.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<32} {:>8} {:<7} {:>6} ADDRESS",
        "ID", "PID", "STATE", "LEASES"
    )?;
    for i in &p.instances {
        writeln!(
            out,
            "{:<32} {:>8} {:<7} {:>6} {}",
            i.id,
            i.pid,
            i.state,
            format!("{}/{}", i.leases, i.capacity),
            i.address.map_or("-".to_string(), |a| a.to_string())
        )?;
    }
    Ok(())
}

fn strategy_name(s: PolicyStrategy) -> &'static str {
    match s {
        PolicyStrategy::Hybrid => "hybrid",
        PolicyStrategy::Fixed => "fixed",
        PolicyStrategy::None => "none",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn policy_line(p: &PolicyView) -> String {
    format!(
        "strategy {}, keep-alive {}, min-warm {}, reuse {}",
        strategy_name(p.strategy),
        human_duration(p.keep_alive_s),
        p.min_warm,
        yes_no(p.reuse)
    )
}

fn budget_line(b: &BudgetView) -> String {
    format!(
        "budget: {} used of {}",
        human_bytes(b.used_bytes),
        human_bytes(b.limit_bytes)
    )
}

/// "25.0%", or "-" before the first start.
fn cold_percent(s: &StartCounts) -> String {
    if *s == StartCounts::default() {
        "-".into()
    } else {
        format!("{:.1}%", s.cold_ratio() * 100.0)
    }
}

const UNITS: [(&str, u64); 5] = [
    ("", 1),
    ("K", 1 << 10),
    ("M", 1 << 20),
    ("G", 1 << 30),
    ("T", 1 << 40),
];

/// Seconds from `600`, `600s`, `10m`, `1h30m`, `1d`.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let bad =
        || format!("bad duration {s:?}: seconds, or amounts with s, m, h, d (90s, 10m, 1h30m)");
    let t = s.trim();
    if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let mut total: u64 = 0;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        let unit = rest[digits..].chars().next().ok_or_else(bad)?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        rest = &rest[digits + 1..];
        if rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(bad()); // "10ms", "1hr"
        }
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("bad annotation {s:?}: KEY=VALUE")),
    }
}

/// `1.5 GiB`, `512 MiB`, `100 B`.
fn human_bytes(n: u64) -> String {
    let (unit, size) = UNITS
        .iter()
        .rev()
        .find(|(_, m)| n >= *m)
        .copied()
        .unwrap_or(("", 1));
    if size == 1 {
        format!("{n} B")
    } else {
        format!("{:.1} {unit}iB", n as f64 / size as f64)
    }
}

/// `600s` as `10m`, `5400s` as `1h30m`.
fn human_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= n {
            out.push_str(&format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("600"), Ok(600));
        assert_eq!(parse_duration_secs("90s"), Ok(90));
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5400));
        assert_eq!(parse_duration_secs("1d2h3m4s"), Ok(93784));
        assert_eq!(parse_duration_secs("0s"), Ok(0));
        for bad in [
            "",
            "s",
            "10x",
            "10ms",
            "1hr",
            "1.5h",
            "-5s",
            "m10",
            "99999999999999999999d",
        ] {
            let e = parse_duration_secs(bad).unwrap_err();
            assert!(e.contains("bad duration"), "{bad:?}: {e}");
        }
        for secs in [0, 59, 600, 5400, 93784] {
            assert_eq!(parse_duration_secs(&human_duration(secs)), Ok(secs));
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(100), "100 B");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(subcommand)]
        pool: PoolCommand,
    }

    fn parse(args: &[&str]) -> Result<PoolCommand, clap::Error> {
        Cmd::try_parse_from(std::iter::once("pool").chain(args.iter().copied())).map(|c| c.pool)
    }

    #[test]
    fn command_lines() {
        match parse(&[
            "policy",
            "f",
            "--strategy",
            "fixed",
            "--keep-alive",
            "10m",
            "--min-warm",
            "2",
            "--reuse",
            "false",
        ])
        .unwrap()
        {
            PoolCommand::Policy(a) => {
                assert_eq!(a.strategy, Some(Strategy::Fixed));
                assert_eq!(a.keep_alive, Some(600));
                assert_eq!(a.min_warm, Some(2));
                assert_eq!(a.reuse, Some(false));
            }
            other => panic!("{other:?}"),
        }
        for (arg, bytes) in [("512M", 512 << 20), ("2G", 2 << 30), ("4096", 4096)] {
            match parse(&["budget", arg]).unwrap() {
                PoolCommand::Budget { bytes: b } => assert_eq!(b, Some(bytes)),
                other => panic!("{other:?}"),
            }
        }
        match parse(&["claim", "f", "--annotation", "a=b=c", "-f", "json"]).unwrap() {
            PoolCommand::Claim(a) => {
                assert_eq!(a.annotations, vec![("a".into(), "b=c".into())]);
                assert_eq!(a.format, Format::Json);
                let body = claim_body(&a).unwrap();
                assert_eq!(body.annotations["a"], "b=c");
            }
            other => panic!("{other:?}"),
        }
        match parse(&["claim", "f", "--stdout", "rel/out"]).unwrap() {
            PoolCommand::Claim(a) => {
                let out = claim_body(&a).unwrap().stdout.unwrap();
                assert!(out.is_absolute() && out.ends_with("rel/out"), "{out:?}");
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &["budget", "lots"][..],
            &["policy", "f", "--strategy", "greedy"],
            &["policy", "f", "--keep-alive", "10 minutes"],
            &["policy", "f", "--reuse", "maybe"],
            &["prewarm", "f", "-3"],
            &["claim", "f", "--annotation", "=v"],
            &["claim", "f", "--id", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
