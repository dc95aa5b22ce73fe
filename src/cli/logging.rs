//! runc-compatible logging: `--log FILE --log-format text|json`.
//!
//! containerd's runc shim (go-runc) reads the last `"level":"error"` line of
//! the JSON log to explain a failed call, so lines use logrus's field names:
//! `{"level":"error","msg":"...","time":"..."}`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

struct RuncFormat {
    out: Mutex<Box<dyn Write + Send>>,
    format: LogFormat,
    max: Level,
}

#[derive(Default)]
struct Fields {
    msg: String,
    extra: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.extra
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.extra
                .push((field.name().to_string(), value.to_string()));
        }
    }
}

fn level_name(l: &Level) -> &'static str {
    match *l {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

impl<S: Subscriber> Layer<S> for RuncFormat {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().level() > &self.max {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let time = sprout::runtime::state::rfc3339(std::time::SystemTime::now());
        let level = level_name(event.metadata().level());
        let line = match self.format {
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("level".into(), level.into());
                obj.insert("msg".into(), f.msg.into());
                obj.insert("time".into(), time.into());
                for (k, v) in f.extra {
                    obj.insert(k, v.into());
                }
                serde_json::Value::Object(obj).to_string()
            }
            LogFormat::Text => {
                let mut s = format!("time={time:?} level={level} msg={:?}", f.msg);
                for (k, v) in f.extra {
                    s.push_str(&format!(" {k}={v:?}"));
                }
                s
            }
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Installs the global subscriber: to `log` if given, else to stderr
/// (warnings and errors only unless `debug`).
pub fn init(log: Option<&Path>, format: LogFormat, debug: bool) -> anyhow::Result<()> {
    let out: Box<dyn Write + Send> = match log {
        Some(p) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("opening log file {}: {e}", p.display()))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let max = if debug {
        Level::DEBUG
    } else if log.is_some() {
        Level::INFO
    } else {
        Level::WARN
    };
    let layer = RuncFormat {
        out: Mutex::new(out),
        format,
        max,
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
    Ok(())
}

/// Writes a fatal error to the log file, if one is configured. The caller
/// prints it on stderr too.
pub fn log_fatal(log: Option<&Path>, format: LogFormat, msg: &str) {
    let Some(p) = log else { return };
    let Ok(mut f) = OpenOptions::new().create(true).append(true).open(p) else {
        return;
    };
    let time = sprout::runtime::state::rfc3339(std::time::SystemTime::now());
    let line = match format {
        LogFormat::Json => {
            serde_json::json!({"level": "error", "msg": msg, "time": time}).to_string()
        }
        LogFormat::Text => format!("time={time:?} level=error msg={msg:?}"),
    };
    let _ = writeln!(f, "{line}");
}
