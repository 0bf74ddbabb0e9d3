//! The printed table and the machine-readable JSON.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::BenchResult;
use crate::results::MetricResult;

/// Facts about the run that go into both outputs.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) cpus: usize,
}

/// A value with three significant digits and a k/M suffix for large numbers.
pub(crate) fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The human-readable report of all metrics.
pub(crate) fn table(info: &RunInfo, metrics: &[MetricResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ppool-bench: {} CPUs, {} repetitions{}; median and min-max over repetitions",
        info.cpus,
        info.reps,
        if info.quick { " (--quick)" } else { "" }
    );
    for m in metrics {
        let _ = writeln!(out, "\n[{}] {}", m.id, m.title);
        let _ = writeln!(
            out,
            "  unit: {} ({} is better); last column: ppool/anchor, {}",
            m.unit,
            m.better.as_str(),
            m.ratio_meaning()
        );
        let _ = writeln!(
            out,
            "  {:<30} {:>10} {:>21} {:>12}",
            "contender", "median", "min - max", "ppool/anchor"
        );
        let ratios = m.ratios();
        for c in &m.contenders {
            let Some(s) = c.summary() else { continue };
            let ratio = ratios
                .iter()
                .find(|r| r.anchor == c.name)
                .map(|r| format!("{:.2}", r.ppool_over_anchor))
                .unwrap_or_default();
            let range = format!("{} - {}", fmt_value(s.min), fmt_value(s.max));
            let _ = writeln!(
                out,
                "  {:<30} {:>10} {:>21} {:>12}",
                c.name,
                fmt_value(s.median),
                range,
                ratio
            );
        }
        if m.contenders.is_empty() {
            let _ = writeln!(out, "  (no contender produced data)");
        }
        for note in &m.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    out
}

/// The JSON document written to `results/latest.json`.
pub(crate) fn to_json(info: &RunInfo, metrics: &[MetricResult]) -> Value {
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let metrics: Vec<Value> = metrics.iter().map(metric_json).collect();
    json!({
        "bench": "ppool-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "unix_time": unix_time,
        "quick": info.quick,
        "repetitions": info.reps,
        "cpus": info.cpus,
        "metrics": metrics,
    })
}

fn metric_json(m: &MetricResult) -> Value {
    let contenders: Vec<Value> = m
        .contenders
        .iter()
        .map(|c| {
            let s = c.summary();
            json!({
                "name": c.name,
                "ppool": c.is_ppool(),
                "samples": c.samples,
                "median": s.map(|s| s.median),
                "min": s.map(|s| s.min),
                "max": s.map(|s| s.max),
            })
        })
        .collect();
    let ratios: Vec<Value> = m
        .ratios()
        .iter()
        .map(|r| json!({"anchor": r.anchor, "ppool_over_anchor": r.ppool_over_anchor}))
        .collect();
    json!({
        "id": m.id,
        "title": m.title,
        "unit": m.unit,
        "better": m.better.as_str(),
        "contenders": contenders,
        "ratios": ratios,
        "ratio_meaning": m.ratio_meaning(),
        "notes": m.notes,
    })
}

/// Writes `json` pretty-printed to `path`, creating its directory.
pub(crate) fn write_json(path: &Path, json: &Value) -> BenchResult<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, serde_json::to_string_pretty(json)? + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Better;

    #[test]
    fn formats_values() {
        assert_eq!(fmt_value(1_234_567.0), "1.23M");
        assert_eq!(fmt_value(12_345.0), "12.3k");
        assert_eq!(fmt_value(123.4), "123");
        assert_eq!(fmt_value(12.34), "12.3");
        assert_eq!(fmt_value(1.234), "1.23");
    }

    #[test]
    fn table_and_json_list_every_contender() {
        let mut m = MetricResult::new("sync_rtt", "t", "us", Better::Lower);
        m.record("ppool call", 10.0);
        m.record("raw pipe", 5.0);
        m.note("hello");
        let info = RunInfo {
            quick: true,
            reps: 1,
            cpus: 2,
        };
        let text = table(&info, std::slice::from_ref(&m));
        assert!(text.contains("ppool call") && text.contains("2.00") && text.contains("hello"));
        let json = to_json(&info, &[m]);
        assert_eq!(json["metrics"][0]["ratios"][0]["ppool_over_anchor"], 2.0);
    }
}
