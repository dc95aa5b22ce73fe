//! `sprout events`: resource stats every interval and OOM notifications,
//! one JSON object per line, as runc prints them.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

use sprout::runtime::Status;

use super::{GlobalOpts, runtime};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print the stats once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Interval between stats (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Container id.
    pub id: String,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s, m or h)")),
    };
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn print(event: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

pub fn events(g: &GlobalOpts, a: EventsArgs) -> Result<u8> {
    let rt = runtime(g)?;
    let container = rt.container(&a.id)?;
    if container.status() == Status::Stopped {
        bail!("container {:?} is not running", a.id);
    }
    let stats_event = |c: &sprout::runtime::Container| -> Result<serde_json::Value> {
        Ok(serde_json::json!({"type": "stats", "id": c.id(), "data": c.stats()?}))
    };
    if a.stats {
        print(&stats_event(&container)?);
        return Ok(0);
    }
    let mut watcher = container.cgroup().oom_watcher()?;
    let id = a.id.clone();
    std::thread::spawn(move || {
        loop {
            match watcher.wait(Some(Duration::from_secs(1))) {
                Ok(Some(sprout::runtime::cgroups::OomEvent::Oom { .. })) => {
                    print(&serde_json::json!({"type": "oom", "id": id}))
                }
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => {}
            }
        }
    });
    while container.status() != Status::Stopped {
        print(&stats_event(&container)?);
        let deadline = std::time::Instant::now() + a.interval;
        while std::time::Instant::now() < deadline && container.status() != Status::Stopped {
            std::thread::sleep(Duration::from_millis(100).min(a.interval));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
