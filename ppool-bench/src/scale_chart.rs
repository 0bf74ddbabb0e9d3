//! `results/remote_scale.svg`: the `remote_scale` metric as small multiples, one panel per
//! figure, each a line over the pool sizes (workers) for ppool and for `mp.Pool(N)`.
//!
//! The metric's results have a different unit per figure, so the bar chart of
//! `latest.svg` leaves them out. Its contenders are named `"<side>: <figure>"`, a side
//! being `ppool HxW` (H hosts of W workers) or `mp.Pool(N)`; that is all this chart reads,
//! from a run's [`MetricResult`] or from a saved JSON report (`--chart-from`).

use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

use crate::BenchResult;
use crate::chart::{ANCHOR_COLOR, HEADER, PPOOL_COLOR, WIDTH};
use crate::report::{RunInfo, fmt_value};
use crate::results::{Better, Contender, MetricResult};
use crate::stats::Summary;

/// The metric this chart draws.
pub(crate) const METRIC: &str = "remote_scale";
/// The chart's file name in the results directory.
pub(crate) const FILE: &str = "remote_scale.svg";

const PANEL_HEIGHT: u32 = 320;
const COLUMNS: usize = 4;

/// How a panel's values axis is scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scale {
    Linear,
    Log,
    /// Logarithmic when the values span more than [`AUTO_LOG_SPAN`] times, else linear.
    Auto,
}

/// Largest max/min ratio that [`Scale::Auto`] still draws linearly.
const AUTO_LOG_SPAN: f64 = 30.0;

/// One figure of the metric, drawn as one panel.
#[derive(Debug, Clone, Copy)]
struct Figure {
    /// The figure's name after `"<side>: "` in the contender names.
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    better: Better,
    scale: Scale,
}

/// The panels, in order.
const FIGURES: &[Figure] = &[
    Figure {
        key: "start ms",
        title: "start: build() / Pool(N)",
        unit: "ms",
        better: Better::Lower,
        scale: Scale::Log,
    },
    Figure {
        key: "efficiency %",
        title: "efficiency, 4 waves of 50 ms tasks",
        unit: "% of ideal",
        better: Better::Higher,
        scale: Scale::Linear,
    },
    Figure {
        key: "tiny tasks/s",
        title: "tiny tasks per second",
        unit: "tasks/s",
        better: Better::Higher,
        scale: Scale::Auto,
    },
    Figure {
        key: "threads",
        title: "supervisor threads (max)",
        unit: "threads",
        better: Better::Lower,
        scale: Scale::Log,
    },
    Figure {
        key: "tiny cpu us/task",
        title: "supervisor CPU per tiny task",
        unit: "µs",
        better: Better::Lower,
        scale: Scale::Auto,
    },
    Figure {
        key: "sleep cpu us/task",
        title: "supervisor CPU per 50 ms task",
        unit: "µs",
        better: Better::Lower,
        scale: Scale::Auto,
    },
    Figure {
        key: "join ms",
        title: "join()",
        unit: "ms",
        better: Better::Lower,
        scale: Scale::Log,
    },
];

/// Which pool a contender measured, and at how many workers.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Side {
    ppool: bool,
    workers: usize,
    /// ppool's (hosts, workers per host).
    shape: Option<(usize, usize)>,
}

/// Reads a side's name: `ppool HxW` or `mp.Pool(N)`.
fn parse_side(name: &str) -> Option<Side> {
    if let Some(shape) = name.strip_prefix("ppool ") {
        let (h, w) = shape.split_once('x')?;
        let (h, w): (usize, usize) = (h.parse().ok()?, w.parse().ok()?);
        return Some(Side {
            ppool: true,
            workers: h.checked_mul(w)?,
            shape: Some((h, w)),
        });
    }
    let n = name.strip_prefix("mp.Pool(")?.strip_suffix(')')?;
    Some(Side {
        ppool: false,
        workers: n.parse().ok()?,
        shape: None,
    })
}

/// One size of one side: where its samples lie.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    workers: usize,
    summary: Summary,
}

/// One figure's data: a line for ppool and one for mp.Pool, each ordered by workers.
#[derive(Debug, Clone, Default, PartialEq)]
struct Series {
    ppool: Vec<Point>,
    mp: Vec<Point>,
}

impl Series {
    fn points(&self) -> impl Iterator<Item = &Point> {
        self.ppool.iter().chain(&self.mp)
    }

    fn is_empty(&self) -> bool {
        self.ppool.is_empty() && self.mp.is_empty()
    }
}

/// Pulls figure `key` out of the contenders, one point per side and size with data.
fn series(contenders: &[Contender], key: &str) -> Series {
    let mut out = Series::default();
    for c in contenders {
        let Some((side, figure)) = c.name.split_once(": ") else {
            continue;
        };
        if figure != key {
            continue;
        }
        let (Some(side), Some(summary)) = (parse_side(side), c.summary()) else {
            continue;
        };
        let line = if side.ppool {
            &mut out.ppool
        } else {
            &mut out.mp
        };
        line.push(Point {
            workers: side.workers,
            summary,
        });
    }
    out.ppool.sort_by_key(|p| p.workers);
    out.mp.sort_by_key(|p| p.workers);
    out
}

/// What the chart is drawn from: the metric's contenders and facts about the run.
#[derive(Debug, Clone)]
pub(crate) struct ScaleRun {
    cpus: usize,
    quick: bool,
    contenders: Vec<Contender>,
    /// Sides whose run failed (their points may be missing).
    failed: Vec<String>,
}

impl ScaleRun {
    /// The metric of a run, if it measured anything this chart draws.
    pub(crate) fn from_metric(info: &RunInfo, m: &MetricResult) -> Option<ScaleRun> {
        let failed = m.table.as_ref().map_or_else(Vec::new, |t| {
            t.columns
                .iter()
                .filter(|c| c.error.is_some())
                .map(|c| c.name.clone())
                .collect()
        });
        ScaleRun {
            cpus: info.cpus,
            quick: info.quick,
            contenders: m.contenders.clone(),
            failed,
        }
        .with_data()
    }

    /// The metric in a JSON report as written by [`crate::report::to_json`].
    pub(crate) fn from_json(doc: &Value) -> BenchResult<ScaleRun> {
        let metric = doc
            .get("metrics")
            .and_then(Value::as_array)
            .ok_or("not a ppool-bench report: no \"metrics\" list")?
            .iter()
            .find(|m| m.get("id").and_then(Value::as_str) == Some(METRIC))
            .ok_or("the report has no remote_scale metric")?;
        let contenders = metric
            .get("contenders")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|c| {
                Some(Contender {
                    name: c.get("name")?.as_str()?.to_owned(),
                    samples: c
                        .get("samples")?
                        .as_array()?
                        .iter()
                        .filter_map(Value::as_f64)
                        .collect(),
                })
            })
            .collect();
        let failed = metric
            .pointer("/table/columns")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|c| c.get("error").is_some_and(|e| !e.is_null()))
            .filter_map(|c| c.get("name")?.as_str().map(str::to_owned))
            .collect();
        let run = ScaleRun {
            cpus: doc
                .get("cpus")
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0),
            quick: doc.get("quick").and_then(Value::as_bool).unwrap_or(false),
            contenders,
            failed,
        };
        run.with_data()
            .ok_or_else(|| "the report's remote_scale metric has no data to draw".into())
    }

    fn with_data(self) -> Option<ScaleRun> {
        FIGURES
            .iter()
            .any(|f| !series(&self.contenders, f.key).is_empty())
            .then_some(self)
    }

    /// Most repetitions any figure has.
    fn reps(&self) -> usize {
        self.contenders
            .iter()
            .filter(|c| {
                c.name
                    .split_once(": ")
                    .and_then(|(s, _)| parse_side(s))
                    .is_some()
            })
            .map(|c| c.samples.len())
            .max()
            .unwrap_or(0)
    }

    /// ppool's shapes, as `HxW`, by workers.
    fn shapes(&self) -> Vec<String> {
        let mut shapes: Vec<(usize, usize)> = self
            .contenders
            .iter()
            .filter_map(|c| parse_side(c.name.split_once(": ")?.0)?.shape)
            .collect();
        shapes.sort_by_key(|&(h, w)| (h * w, h));
        shapes.dedup();
        shapes.iter().map(|(h, w)| format!("{h}x{w}")).collect()
    }
}

/// Reads the JSON report at `json` and draws its remote_scale metric into `svg`.
pub(crate) fn redraw(json: &Path, svg: &Path) -> BenchResult<()> {
    let text = std::fs::read_to_string(json)
        .map_err(|e| format!("cannot read {}: {e}", json.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    write_svg(svg, &ScaleRun::from_json(&doc)?)
}

/// Draws one panel per figure that has data into an SVG file at `path`.
pub(crate) fn write_svg(path: &Path, run: &ScaleRun) -> BenchResult<()> {
    let panels: Vec<(&Figure, Series)> = FIGURES
        .iter()
        .map(|f| (f, series(&run.contenders, f.key)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    // One more cell for the legend.
    let rows = (panels.len() + 1).div_ceil(COLUMNS);
    let height = HEADER + PANEL_HEIGHT * u32::try_from(rows)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);
    let title = format!(
        "ppool-bench remote_scale: {} CPUs, {} repetitions{}; points = median, whiskers = \
         min-max; orange = ppool (H hosts x W workers), purple = mp.Pool(N)",
        run.cpus,
        run.reps(),
        if run.quick { " (--quick)" } else { "" }
    );
    header.draw_text(
        &title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (20, 15),
    )?;
    let cells = body.split_evenly((rows, COLUMNS));
    for ((figure, series), cell) in panels.iter().zip(cells.iter()) {
        draw_panel(cell, figure, series)?;
    }
    if let Some(cell) = cells.get(panels.len()) {
        draw_legend(cell, run)?;
    }
    root.present()?;
    Ok(())
}

/// The values axis: how values map onto it, and its range and ticks in that mapping.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    log: bool,
    range: (f64, f64),
    ticks: Vec<f64>,
}

impl Axis {
    /// An axis for values between `lo` and `hi` (both finite, `lo <= hi`).
    fn new(scale: Scale, lo: f64, hi: f64) -> Axis {
        let log = lo > 0.0
            && match scale {
                Scale::Linear => false,
                Scale::Log => true,
                Scale::Auto => hi / lo > AUTO_LOG_SPAN,
            };
        if log {
            let (a, b) = (lo.log10(), hi.log10());
            // Room above and below for the value labels.
            let pad = ((b - a) * 0.15).max(0.15);
            Axis {
                log,
                range: (a - pad, b + pad),
                ticks: log_ticks(a - pad, b + pad),
            }
        } else {
            let lo = lo.min(0.0);
            let hi = if hi > lo { hi } else { lo + 1.0 };
            let top = hi + (hi - lo) * 0.2;
            Axis {
                log,
                range: (lo, top),
                ticks: linear_ticks(lo, top),
            }
        }
    }

    fn place(&self, v: f64) -> f64 {
        if self.log { v.log10() } else { v }
    }

    fn value_at(&self, v: f64) -> f64 {
        if self.log { 10f64.powf(v) } else { v }
    }
}

/// A linear f64 axis with the ticks given (plotters' own `with_key_points` wrapper on an
/// f64 range cannot take label formatters).
struct Ticked {
    linear: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(range: Range<f64>, ticks: Vec<f64>) -> Ticked {
        Ticked {
            linear: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Grid lines at the ticks only, none between them.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.linear.range()
    }
}

/// Ticks at 1, 2 and 5 times a power of ten (or only the powers, or more steps, to keep
/// between 3 and 7), as log10 of the values, within `lo..=hi` (log10 too).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let ticks_with = |steps: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        for decade in (lo.floor() as i32)..=(hi.ceil() as i32) {
            for &s in steps {
                let t = f64::from(decade) + s.log10();
                if t >= lo - 1e-9 && t <= hi + 1e-9 {
                    out.push(t);
                }
            }
        }
        out
    };
    let ticks = ticks_with(&[1.0, 2.0, 5.0]);
    if ticks.len() > 7 {
        let powers = ticks_with(&[1.0]);
        if powers.len() >= 2 {
            return powers;
        }
    } else if ticks.len() < 3 {
        return ticks_with(&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0]);
    }
    ticks
}

/// Four to seven ticks at multiples of 1, 2 or 5 times a power of ten within `lo..=hi`.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    if raw.is_nan() || raw <= 0.0 {
        return vec![lo];
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick's label: [`fmt_value`] without trailing zeros (`2.00` -> `2`, `10.0k` -> `10k`).
fn tick_label(v: f64) -> String {
    let text = fmt_value(v);
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    if !digits.contains('.') {
        return text;
    }
    format!(
        "{}{suffix}",
        digits.trim_end_matches('0').trim_end_matches('.')
    )
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    figure: &Figure,
    series: &Series,
) -> BenchResult<()> {
    let (lo, hi) = series.points().fold((f64::INFINITY, 0f64), |(lo, hi), p| {
        let s = p.summary;
        (lo.min(s.min).min(s.median), hi.max(s.max).max(s.median))
    });
    let axis = Axis::new(figure.scale, lo, hi);
    // Workers on a log2 axis, ticked at each size measured.
    let mut sizes: Vec<usize> = series.points().map(|p| p.workers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let x = |workers: usize| (workers.max(1) as f64).log2();
    let x_lo = sizes.first().map_or(0.0, |&w| x(w)) - 0.6;
    let x_hi = sizes.last().map_or(0.0, |&w| x(w)) + 0.6;
    let x_ticks: Vec<f64> = sizes.iter().map(|&w| x(w)).collect();

    let y_desc = if axis.log {
        format!("{}, log scale", figure.unit)
    } else {
        figure.unit.to_owned()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} ({} is better)", figure.title, figure.better.as_str()),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            Ticked::new(x_lo..x_hi, x_ticks),
            Ticked::new(axis.range.0..axis.range.1, axis.ticks.clone()),
        )?;
    chart
        .configure_mesh()
        .light_line_style(TRANSPARENT)
        .bold_line_style(BLACK.mix(0.1))
        .x_desc("workers")
        .y_desc(y_desc)
        .x_label_formatter(&|v| format!("{:.0}", v.exp2()))
        .y_label_formatter(&|v| tick_label(axis.value_at(*v)))
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 12))
        .draw()?;

    let at = |p: &Point, v: f64| (x(p.workers), axis.place(v));
    let lines = [
        (&series.ppool, PPOOL_COLOR, &series.mp),
        (&series.mp, ANCHOR_COLOR, &series.ppool),
    ];
    // Lines and whiskers first, so that no line crosses a value label.
    for (line, color, _) in lines {
        chart.draw_series(std::iter::once(PathElement::new(
            line.iter()
                .map(|p| at(p, p.summary.median))
                .collect::<Vec<_>>(),
            color.stroke_width(2),
        )))?;
        chart.draw_series(
            line.iter()
                .filter(|p| p.summary.max > p.summary.min)
                .map(|p| {
                    PathElement::new(
                        vec![at(p, p.summary.min), at(p, p.summary.max)],
                        color.stroke_width(2),
                    )
                }),
        )?;
    }
    for (line, color, other) in lines {
        for p in line {
            let median = p.summary.median;
            // The label goes above the point, or below it where the other line is higher.
            let below = other
                .iter()
                .any(|q| q.workers == p.workers && q.summary.median > median);
            let (dy, vpos) = if below {
                (8, VPos::Top)
            } else {
                (-8, VPos::Bottom)
            };
            let text = point_label(median);
            let half = i32::try_from(text.len())? * 6 / 2 + 2;
            let (top, bottom) = if below { (dy, dy + 14) } else { (dy - 14, dy) };
            let style = ("sans-serif", 12)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Center, vpos));
            chart.draw_series(std::iter::once(
                EmptyElement::at(at(p, median))
                    + Circle::new((0, 0), 4, color.filled())
                    + Rectangle::new([(-half, top), (half, bottom)], WHITE.mix(0.9).filled())
                    + Text::new(text, (0, dy), style),
            ))?;
        }
    }
    Ok(())
}

/// A point's value label: counts without decimals, small values with three decimals,
/// the rest by [`fmt_value`].
fn point_label(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e4 {
        format!("{v:.0}")
    } else if v.abs() < 1.0 {
        format!("{v:.3}")
    } else {
        fmt_value(v)
    }
}

fn draw_legend(area: &DrawingArea<SVGBackend<'_>, Shift>, run: &ScaleRun) -> BenchResult<()> {
    let font = ("sans-serif", 14).into_font().color(&BLACK);
    let shapes = run.shapes();
    let mut lines: Vec<(Option<RGBColor>, String)> = vec![
        (
            Some(PPOOL_COLOR),
            "ppool: H host agents x W workers".to_owned(),
        ),
        (
            None,
            format!("   through a command prefix: {}", shapes.join(", ")),
        ),
        (
            Some(ANCHOR_COLOR),
            "multiprocessing.Pool(N), fork".to_owned(),
        ),
        (None, String::new()),
        (None, "x: workers N (log scale)".to_owned()),
        (None, "points: medians, whiskers: min-max".to_owned()),
    ];
    for name in &run.failed {
        lines.push((None, format!("{name}: failed, points missing")));
    }
    let (left, top, step) = (30, 40, 24);
    for (i, (color, text)) in lines.iter().enumerate() {
        let y = top + step * i32::try_from(i)?;
        if let Some(color) = color {
            area.draw(&Rectangle::new(
                [(left, y - 5), (left + 14, y + 9)],
                color.filled(),
            ))?;
        }
        area.draw_text(text, &font, (left + 22, y - 5))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::to_json;
    use crate::results::{Column, Table};

    fn metric() -> MetricResult {
        let mut m = MetricResult::new(METRIC, "t", "per row", Better::Higher);
        m.mixed_units = true;
        for (side, figure, values) in [
            ("ppool 16x16", "start ms", &[300.0, 350.0, 400.0][..]),
            ("ppool 4x4", "start ms", &[40.0, 50.0, 45.0]),
            ("mp.Pool(16)", "start ms", &[20.0, 22.0, 21.0]),
            ("ppool 4x4", "tiny tasks", &[1e6]),
            ("ppool 4x4", "tiny tasks/s", &[9e6, 1e7]),
            ("ppool 4x4", "rss per agent MiB", &[12.0]),
            ("mp.Pool(16)", "threads", &[4.0]),
        ] {
            for &v in values {
                m.record(&format!("{side}: {figure}"), v);
            }
        }
        m.table = Some(Table {
            columns: vec![
                Column {
                    name: "ppool 4x4".into(),
                    error: None,
                },
                Column {
                    name: "ppool 16x16".into(),
                    error: Some("first wave: timed out".into()),
                },
            ],
            rows: Vec::new(),
        });
        m
    }

    fn info() -> RunInfo {
        RunInfo {
            quick: false,
            reps: 5,
            cpus: 2,
        }
    }

    #[test]
    fn reads_sides() {
        let ppool = parse_side("ppool 64x16");
        assert_eq!(ppool.map(|s| (s.ppool, s.workers)), Some((true, 1024)));
        assert_eq!(ppool.and_then(|s| s.shape), Some((64, 16)));
        let mp = parse_side("mp.Pool(256)");
        assert_eq!(mp.map(|s| (s.ppool, s.workers)), Some((false, 256)));
        for bad in [
            "ppool 4",
            "ppool axb",
            "mp.Pool(x)",
            "raw pipe",
            "mp.Pool(16",
        ] {
            assert_eq!(parse_side(bad), None, "{bad}");
        }
    }

    #[test]
    fn series_per_figure_ordered_by_workers() {
        let m = metric();
        let start = series(&m.contenders, "start ms");
        let ppool: Vec<(usize, f64, f64, f64)> = start
            .ppool
            .iter()
            .map(|p| (p.workers, p.summary.median, p.summary.min, p.summary.max))
            .collect();
        assert_eq!(ppool, [(16, 45.0, 40.0, 50.0), (256, 350.0, 300.0, 400.0)]);
        assert_eq!(start.mp.len(), 1);
        assert_eq!(start.mp[0].workers, 16);
        assert_eq!(start.mp[0].summary.median, 21.0);
        // A figure whose name begins another's is not mixed with it.
        let tiny = series(&m.contenders, "tiny tasks/s");
        assert_eq!(tiny.ppool.len(), 1);
        assert_eq!(tiny.ppool[0].summary.median, 9.5e6);
        assert!(tiny.mp.is_empty());
        let threads = series(&m.contenders, "threads");
        assert!(threads.ppool.is_empty() && threads.mp.len() == 1);
        assert!(series(&m.contenders, "join ms").is_empty());
    }

    #[test]
    fn a_saved_report_gives_what_the_run_gave() -> BenchResult<()> {
        let m = metric();
        let from_run = ScaleRun::from_metric(&info(), &m).ok_or("no data")?;
        let doc = to_json(
            &info(),
            &[MetricResult::new("other", "t", "us", Better::Lower), m],
        );
        let from_json = ScaleRun::from_json(&doc)?;
        for f in FIGURES {
            assert_eq!(
                series(&from_run.contenders, f.key),
                series(&from_json.contenders, f.key),
                "{}",
                f.key
            );
        }
        assert_eq!(from_json.failed, ["ppool 16x16"]);
        assert_eq!(from_run.failed, from_json.failed);
        assert_eq!((from_json.cpus, from_json.reps()), (2, 3));
        assert_eq!(from_json.shapes(), ["4x4", "16x16"]);
        Ok(())
    }

    #[test]
    fn no_data_no_chart() {
        let mut m = MetricResult::new(METRIC, "t", "per row", Better::Higher);
        m.record("ppool 4x4: rss per agent MiB", 12.0);
        assert!(ScaleRun::from_metric(&info(), &m).is_none());
        let doc = to_json(&info(), &[m]);
        assert!(ScaleRun::from_json(&doc).is_err());
        let doc = to_json(&info(), &[]);
        assert!(ScaleRun::from_json(&doc).is_err());
    }

    #[test]
    fn axes_and_ticks() {
        assert_eq!(
            linear_ticks(0.0, 120.0),
            [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
        );
        let log = Axis::new(Scale::Log, 10.0, 1000.0);
        assert!(log.log && log.range.0 < 1.0 && log.range.1 > 3.0);
        let labels: Vec<String> = log
            .ticks
            .iter()
            .map(|&t| tick_label(log.value_at(t)))
            .collect();
        assert_eq!(labels, ["10", "20", "50", "100", "200", "500", "1000"]);
        assert!(!Axis::new(Scale::Auto, 30.0, 180.0).log);
        assert!(Axis::new(Scale::Auto, 0.1, 400.0).log);
        // No log of zero.
        assert!(!Axis::new(Scale::Log, 0.0, 10.0).log);
        assert_eq!(tick_label(2.0), "2");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(10_000.0), "10k");
        assert_eq!(tick_label(2_500_000.0), "2.5M");
        assert_eq!(point_label(4.0), "4");
        assert_eq!(point_label(0.0777), "0.078");
        assert_eq!(point_label(47.6257), "47.6");
        assert_eq!(point_label(10_644_496.2), "10.64M");
    }

    #[test]
    fn draws_a_file() -> BenchResult<()> {
        let run = ScaleRun::from_metric(&info(), &metric()).ok_or("no data")?;
        let path = std::env::temp_dir().join(format!("ppool-bench-{}-{FILE}", std::process::id()));
        write_svg(&path, &run)?;
        let svg = std::fs::read_to_string(&path)?;
        std::fs::remove_file(&path)?;
        assert!(
            svg.contains("start: build() / Pool(N) (lower is better)"),
            "{svg}"
        );
        assert!(svg.contains("16x16: failed"), "{svg}");
        Ok(())
    }
}
