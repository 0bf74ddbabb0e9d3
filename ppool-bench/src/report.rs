//! The printed table and the machine-readable JSON.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::BenchResult;
use crate::results::{Cell, MetricResult, Table};

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
        if m.table.is_some() || !m.tables.is_empty() {
            if let Some(t) = &m.table {
                write_table(&mut out, t);
            }
            for (title, t) in &m.tables {
                let _ = writeln!(out, "  -- {title}");
                write_table(&mut out, t);
            }
            for note in &m.notes {
                let _ = writeln!(out, "  note: {note}");
            }
            continue;
        }
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

/// A metric's own table of medians: quantities down, configurations across; `err` marks a
/// value missing from a configuration that failed, `-` one that does not apply.
fn write_table(out: &mut String, t: &Table) {
    let label_width = t
        .rows
        .iter()
        .map(|r| r.label.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let width = t
        .columns
        .iter()
        .map(|c| c.name.len() + usize::from(c.error.is_some()))
        .max()
        .unwrap_or(0)
        .max(8);
    let mut line = format!("  {:<label_width$}", "median");
    for c in &t.columns {
        let name = if c.error.is_some() {
            format!("{}*", c.name)
        } else {
            c.name.clone()
        };
        let _ = write!(line, " {name:>width$}");
    }
    let _ = writeln!(out, "{line}");
    for row in &t.rows {
        let mut line = format!("  {:<label_width$}", row.label);
        for (c, cell) in t.columns.iter().zip(&row.cells) {
            let text = match cell {
                // Counts read better without decimals.
                Cell::Value(v) if v.fract() == 0.0 && v.abs() < 1e4 => format!("{v:.0}"),
                Cell::Value(v) => fmt_value(*v),
                Cell::Text(text) => text.clone(),
                Cell::Missing if c.error.is_some() => "err".to_owned(),
                Cell::Missing | Cell::NotApplicable => "-".to_owned(),
            };
            let _ = write!(line, " {text:>width$}");
        }
        let _ = writeln!(out, "{line}");
    }
    for c in t.columns.iter().filter(|c| c.error.is_some()) {
        let _ = writeln!(
            out,
            "  * {}: {}",
            c.name,
            c.error.as_deref().unwrap_or_default()
        );
    }
}

fn table_json(t: &Table) -> Value {
    let columns: Vec<Value> = t
        .columns
        .iter()
        .map(|c| json!({"name": c.name, "error": c.error}))
        .collect();
    let rows: Vec<Value> = t
        .rows
        .iter()
        .map(|r| {
            let medians: Vec<Value> = r
                .cells
                .iter()
                .map(|cell| match cell {
                    Cell::Value(v) => json!(v),
                    Cell::Text(text) => json!(text),
                    Cell::Missing => Value::Null,
                    Cell::NotApplicable => json!("n/a"),
                })
                .collect();
            json!({"quantity": r.label, "medians": medians})
        })
        .collect();
    json!({"columns": columns, "rows": rows})
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
        "table": m.table.as_ref().map(table_json),
        "tables": m
            .tables
            .iter()
            .map(|(title, t)| {
                let mut t = table_json(t);
                t["title"] = json!(title);
                t
            })
            .collect::<Vec<_>>(),
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

    #[test]
    fn a_metric_table_replaces_the_contender_list() {
        use crate::results::{Column, TableRow};
        let mut m = MetricResult::new("remote_scale", "t", "mixed", Better::Higher);
        m.mixed_units = true;
        m.record("ppool 4x4: start ms", 12.0);
        m.record("mp.Pool(16): start ms", 60.0);
        m.table = Some(Table {
            columns: vec![
                Column {
                    name: "ppool 4x4".into(),
                    error: None,
                },
                Column {
                    name: "ppool 64x16".into(),
                    error: Some("build failed".into()),
                },
            ],
            rows: vec![
                TableRow {
                    label: "start ms".into(),
                    cells: vec![Cell::Value(12.0), Cell::Missing],
                },
                TableRow {
                    label: "chunksize".into(),
                    cells: vec![Cell::NotApplicable, Cell::NotApplicable],
                },
            ],
        });
        let info = RunInfo {
            quick: false,
            reps: 1,
            cpus: 2,
        };
        let text = table(&info, std::slice::from_ref(&m));
        assert!(
            text.contains("ppool 64x16*") && text.contains("err"),
            "{text}"
        );
        assert!(text.contains("start ms") && text.contains(" 12 "), "{text}");
        assert!(text.contains("* ppool 64x16: build failed"), "{text}");
        assert!(!text.contains("mp.Pool(16): start ms"), "{text}");
        let json = to_json(&info, &[m]);
        assert!(
            json["metrics"][0]["ratios"]
                .as_array()
                .is_some_and(Vec::is_empty)
        );
        assert_eq!(json["metrics"][0]["table"]["rows"][0]["medians"][0], 12.0);
        assert_eq!(json["metrics"][0]["table"]["rows"][1]["medians"][0], "n/a");
        assert_eq!(json["metrics"][0]["contenders"][1]["samples"][0], 60.0);
    }

    #[test]
    fn titled_tables_print_words_and_go_to_json() {
        use crate::results::{Column, TableRow};
        let mut m = MetricResult::new("shared", "t", "per row", Better::Lower);
        m.mixed_units = true;
        m.tables.push((
            "goals".into(),
            Table {
                columns: vec![Column {
                    name: "met".into(),
                    error: None,
                }],
                rows: vec![TableRow {
                    label: "memory".into(),
                    cells: vec![Cell::Text("yes".into())],
                }],
            },
        ));
        let info = RunInfo {
            quick: true,
            reps: 1,
            cpus: 2,
        };
        let text = table(&info, std::slice::from_ref(&m));
        assert!(text.contains("-- goals") && text.contains("yes"), "{text}");
        let json = to_json(&info, &[m]);
        assert_eq!(json["metrics"][0]["tables"][0]["title"], "goals");
        assert_eq!(
            json["metrics"][0]["tables"][0]["rows"][0]["medians"][0],
            "yes"
        );
    }
}
