//! A strict reader of the Prometheus text format 0.0.4 for the tests: it
//! refuses what a lenient parser would skip (bad names, unknown escapes,
//! a `# TYPE` after its samples, interleaved families, duplicate series,
//! histograms whose buckets are not cumulative or lack `+Inf`, `_sum` or
//! `_count`).

use std::collections::{BTreeMap, HashMap, HashSet};

use super::text::{valid_label_name, valid_name};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// The value of the one sample named `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

/// The families of `text`, in order, or the first violation with its line.
pub fn parse(text: &str) -> Result<Vec<Family>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut families: Vec<Family> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut seen_series: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a comment
            }
            let name = parts.next().unwrap_or_default();
            if !valid_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let arg = parts.next().unwrap_or_default();
            let i = family_at(&mut families, &mut index, name).map_err(at)?;
            let f = &mut families[i];
            if !f.samples.is_empty() {
                return Err(at(format!("# {keyword} of {name} after its samples")));
            }
            if keyword == "HELP" {
                if f.help.is_some() {
                    return Err(at(format!("second # HELP of {name}")));
                }
                f.help = Some(unescape(arg, false).map_err(at)?);
            } else {
                if f.kind != "untyped" || !matches!(arg, "counter" | "gauge" | "histogram") {
                    return Err(at(format!("bad or second # TYPE {arg:?} of {name}")));
                }
                f.kind = arg.to_string();
            }
            continue;
        }
        let s = sample(line).map_err(at)?;
        let series_key = (s.name.clone(), s.labels.clone().into_iter().collect());
        if !seen_series.insert(series_key) {
            return Err(at("duplicate series".into()));
        }
        let family = owner(&families, &index, &s.name);
        let i = family_at(&mut families, &mut index, &family).map_err(at)?;
        let f = &mut families[i];
        let suffix = &s.name[family.len()..];
        let has_le = s.labels.contains_key("le");
        let fits = match (f.kind.as_str(), suffix) {
            ("histogram", "_bucket") => has_le,
            ("histogram", "_sum" | "_count") => !has_le,
            ("histogram", _) => false,
            (_, suffix) => suffix.is_empty() && !has_le,
        };
        if !fits {
            return Err(at(format!("{} does not fit its {} family", s.name, f.kind)));
        }
        if f.kind == "counter" && (s.value < 0.0 || s.value.is_nan()) {
            return Err(at("a counter below zero".into()));
        }
        f.samples.push(s);
    }
    for f in &families {
        if f.kind == "histogram" {
            check_histogram(f)?;
        }
    }
    Ok(families)
}

/// The family a sample belongs to: a histogram's for its `_bucket`,
/// `_sum` and `_count`, else the sample's own name.
fn owner(families: &[Family], index: &HashMap<String, usize>, name: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && index
                .get(base)
                .is_some_and(|&i| families[i].kind == "histogram")
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// The index of family `name`, opening it if new; a family that was left
/// for another may not come back.
fn family_at(
    families: &mut Vec<Family>,
    index: &mut HashMap<String, usize>,
    name: &str,
) -> Result<usize, String> {
    match index.get(name) {
        Some(&i) if i + 1 == families.len() => Ok(i),
        Some(_) => Err(format!("family {name} is interleaved with another")),
        None => {
            families.push(Family {
                name: name.to_string(),
                kind: "untyped".into(),
                help: None,
                samples: Vec::new(),
            });
            index.insert(name.to_string(), families.len() - 1);
            Ok(families.len() - 1)
        }
    }
}

fn check_histogram(f: &Family) -> Result<(), String> {
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);
    let mut series: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in &f.samples {
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let entry = series.entry(labels.into_iter().collect()).or_default();
        match s.name.strip_prefix(&f.name).unwrap_or_default() {
            "_bucket" => {
                let le = le.unwrap_or_default();
                let bound = parse_float(&le).map_err(|e| format!("{}: le {e}", f.name))?;
                entry.0.push((bound, s.value));
            }
            "_sum" => entry.1 = Some(s.value),
            _ => entry.2 = Some(s.value),
        }
    }
    for (labels, (buckets, sum, count)) in series {
        let what = format!("{}{labels:?}", f.name);
        let (Some(_), Some(count)) = (sum, count) else {
            return Err(format!("{what}: no _sum or _count"));
        };
        if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
            return Err(format!("{what}: the last bucket is not +Inf"));
        }
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                return Err(format!("{what}: buckets not ascending and cumulative"));
            }
        }
        if buckets.last().map(|b| b.1) != Some(count) {
            return Err(format!("{what}: +Inf bucket differs from _count"));
        }
    }
    Ok(())
}

/// `name{labels} value [timestamp]`
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("a label without =")?;
            let key = &rest[..eq];
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            let r = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("an unquoted label value")?;
            let (raw, after) = quoted(r)?;
            if labels
                .insert(key.to_string(), unescape(raw, true)?)
                .is_some()
            {
                return Err(format!("label {key} twice"));
            }
            rest = after;
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
    }
    let mut fields = rest.split(' ').filter(|f| !f.is_empty());
    let value = parse_float(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Splits `s` (just after an opening quote) at its closing quote: the
/// raw text and what follows the quote.
fn quoted(s: &str) -> Result<(&str, &str), String> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Ok((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    Err("an unterminated label value".into())
}

/// `\\`, `\n` and (in label values) `\"`; any other escape is an error.
fn unescape(s: &str, label: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut cs = s.chars();
    while let Some(c) = cs.next() {
        if c != '\\' {
            if label && c == '"' {
                return Err("an unescaped quote".into());
            }
            out.push(c);
            continue;
        }
        match cs.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

/// A Go float as Prometheus reads it.
fn parse_float(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            s.parse().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_a_lenient_parser_skips() {
        let ok = "# HELP a x\n# TYPE a counter\na{l=\"v\\\"\"} 1\n";
        assert_eq!(parse(ok).unwrap()[0].samples[0].labels["l"], "v\"");
        for bad in [
            "a 1",                                                            // no final newline
            "a-b 1\n",                                                        // bad name
            "a{l=\"v\\t\"} 1\n",                                              // unknown escape
            "a{l=v} 1\n",                                                     // unquoted
            "a{l=\"v\",l=\"w\"} 1\n",                                         // label twice
            "a 1\n# TYPE a counter\n",                                        // TYPE after samples
            "a 1\nb 1\na{x=\"y\"} 1\n",                                       // interleaved
            "a 1\na 2\n",                                                     // duplicate series
            "a one\n",                                                        // bad value
            "# TYPE a counter\na -1\n",                                       // negative counter
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // no _sum
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
