//! The Prometheus text exposition format, version 0.0.4: a writer of
//! metric families (`# HELP`, `# TYPE`, then their samples, never
//! interleaved with another family's) with the format's escaping.

use std::fmt::Write as _;

/// The content type a scrape of this text is served with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: counts stay exact integers, the rest are floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// A float as Prometheus reads it (Go's `ParseFloat` plus `+Inf`,
/// `-Inf`, `NaN`). Rust's `Display` of a finite `f64` is the shortest
/// decimal that reads back to the same value and never uses an exponent.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A label value between its quotes: `\`, `"` and newline escaped.
pub fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A `# HELP` docstring: only `\` and newline are escaped there.
fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The cumulative buckets of a histogram: `(upper bound, observations
/// at or below it)`, ascending, without `+Inf` (that is `count`).
pub struct HistogramSample<'a> {
    pub buckets: &'a [(f64, u64)],
    pub sum: f64,
    pub count: u64,
}

/// Builds one exposition. Families are written whole, one after the
/// other, each opened by [`family`](Self::family).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens a family: its `# HELP` and `# TYPE` lines. `name` must be a
    /// valid metric name (the callers use constants).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(valid_name(name), "bad metric name {name:?}");
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(help, &mut self.out);
        self.out.push('\n');
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample line of the family opened last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<Value>) {
        self.line(name, labels, None, value.into());
    }

    /// The `_bucket` (with `+Inf`), `_sum` and `_count` lines of one
    /// histogram series of the family `name` opened last.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSample<'_>) {
        let bucket = format!("{name}_bucket");
        for &(le, n) in h.buckets {
            self.line(&bucket, labels, Some(&float(le)), Value::Int(n));
        }
        self.line(&bucket, labels, Some("+Inf"), Value::Int(h.count));
        self.line(&format!("{name}_sum"), labels, None, Value::Float(h.sum));
        self.line(&format!("{name}_count"), labels, None, Value::Int(h.count));
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: Value) {
        self.out.push_str(name);
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        let mut first = true;
        for (k, v) in all {
            debug_assert!(valid_label_name(k), "bad label name {k:?}");
            self.out.push_str(if first { "{" } else { "," });
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(v, &mut self.out);
            self.out.push('"');
        }
        if !first {
            self.out.push('}');
        }
        self.out.push(' ');
        match value {
            Value::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Value::Float(v) => self.out.push_str(&float(v)),
        }
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`
pub fn valid_label_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_and_use_prometheus_spellings() {
        assert_eq!(float(0.00005), "0.00005");
        assert_eq!(float(13.1072), "13.1072");
        assert_eq!(float(2.0), "2");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        for v in [1e-12, 0.1 + 0.2, 123456789.123, 1e22] {
            assert_eq!(float(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.family("sprout_x", Kind::Gauge, "a \\ b\nc \"q\"");
        e.sample("sprout_x", &[("v", "a\\b\"c\nd"), ("w", "plain")], 1u64);
        e.sample("sprout_x", &[], 0.5);
        assert_eq!(
            e.finish(),
            "# HELP sprout_x a \\\\ b\\nc \"q\"\n\
             # TYPE sprout_x gauge\n\
             sprout_x{v=\"a\\\\b\\\"c\\nd\",w=\"plain\"} 1\n\
             sprout_x 0.5\n"
        );
    }

    #[test]
    fn histogram_lines() {
        let mut e = Exposition::new();
        e.family("sprout_h", Kind::Histogram, "h");
        e.histogram(
            "sprout_h",
            &[("f", "a")],
            &HistogramSample {
                buckets: &[(0.5, 1), (1.0, 3)],
                sum: 2.25,
                count: 4,
            },
        );
        assert_eq!(
            e.finish(),
            "# HELP sprout_h h\n# TYPE sprout_h histogram\n\
             sprout_h_bucket{f=\"a\",le=\"0.5\"} 1\n\
             sprout_h_bucket{f=\"a\",le=\"1\"} 3\n\
             sprout_h_bucket{f=\"a\",le=\"+Inf\"} 4\n\
             sprout_h_sum{f=\"a\"} 2.25\n\
             sprout_h_count{f=\"a\"} 4\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("sprout_starts_total"));
        assert!(valid_name("a:b"));
        assert!(!valid_name("1a"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
        assert!(valid_label_name("le"));
        assert!(!valid_label_name("a:b"));
    }
}
