//! `results/latest.svg`: one horizontal bar chart per metric (median, min-max whisker).
//! Metrics of mixed units are left out; `remote_scale` has a chart of its own
//! ([`crate::scale_chart`]).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::BenchResult;
use crate::report::{RunInfo, fmt_value};
use crate::results::MetricResult;
use crate::stats::Summary;

pub(crate) const WIDTH: u32 = 1500;
pub(crate) const HEADER: u32 = 50;
const PANEL_HEIGHT: u32 = 300;
const COLUMNS: usize = 2;
pub(crate) const PPOOL_COLOR: RGBColor = RGBColor(0xd9, 0x5f, 0x02);
pub(crate) const ANCHOR_COLOR: RGBColor = RGBColor(0x75, 0x70, 0xb3);

/// Draws every metric that has data into an SVG file at `path`.
pub(crate) fn write_svg(path: &Path, info: &RunInfo, metrics: &[MetricResult]) -> BenchResult<()> {
    let shown: Vec<&MetricResult> = metrics
        .iter()
        .filter(|m| !m.mixed_units && m.contenders.iter().any(|c| c.summary().is_some()))
        .collect();
    let rows = shown.len().div_ceil(COLUMNS).max(1);
    let height = HEADER + PANEL_HEIGHT * u32::try_from(rows)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);
    let title = format!(
        "ppool-bench: {} CPUs, {} repetitions{}; bars = median, whiskers = min-max; orange = ppool",
        info.cpus,
        info.reps,
        if info.quick { " (--quick)" } else { "" }
    );
    header.draw_text(
        &title,
        &("sans-serif", 20).into_font().color(&BLACK),
        (20, 15),
    )?;
    let panels = body.split_evenly((rows, COLUMNS));
    for (metric, panel) in shown.iter().zip(panels.iter()) {
        draw_panel(panel, metric)?;
    }
    root.present()?;
    Ok(())
}

fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, m: &MetricResult) -> BenchResult<()> {
    let bars: Vec<(&str, Summary, bool)> = m
        .contenders
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.summary()?, c.is_ppool())))
        .collect();
    // Integer ranges are inclusive in plotters, and a one-value range has no extent:
    // draw at least two rows, leaving the extra one empty.
    let count = bars.len();
    let rows = count.max(2);
    let top = bars
        .iter()
        .map(|(_, s, _)| s.max.max(s.median))
        .fold(0.0, f64::max);
    let x_max = if top > 0.0 { top * 1.25 } else { 1.0 };
    // Rows are drawn bottom-up, so the first contender (ppool) goes on top.
    let row = |i: usize| rows - 1 - i;
    let names: Vec<&str> = bars.iter().map(|(name, _, _)| *name).collect();
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(k) if *k < rows => names
            .get(rows - 1 - *k)
            .map_or_else(String::new, |n| (*n).to_owned()),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{}: {} ({} is better)", m.id, m.unit, m.better.as_str()),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(210)
        .build_cartesian_2d(0.0..x_max, (0..rows - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .y_labels(rows)
        .y_label_formatter(&label)
        .x_label_formatter(&|v| fmt_value(*v))
        .label_style(("sans-serif", 12))
        .draw()?;
    for (i, (_, s, is_ppool)) in bars.iter().enumerate() {
        let k = row(i);
        let color = if *is_ppool { PPOOL_COLOR } else { ANCHOR_COLOR };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(k)),
                (s.median, SegmentValue::Exact(k + 1)),
            ],
            color.filled(),
        );
        bar.set_margin(6, 6, 0, 0);
        chart.draw_series(std::iter::once(bar))?;
        let whisker = vec![
            (s.min, SegmentValue::CenterOf(k)),
            (s.max, SegmentValue::CenterOf(k)),
        ];
        chart.draw_series(std::iter::once(PathElement::new(
            whisker,
            BLACK.stroke_width(2),
        )))?;
        let text_style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(std::iter::once(Text::new(
            format!(" {}", fmt_value(s.median)),
            (s.max.max(s.median), SegmentValue::CenterOf(k)),
            text_style,
        )))?;
    }
    Ok(())
}
