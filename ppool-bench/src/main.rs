//! ppool-bench: ppool against a raw pipe, procspawn, Python multiprocessing and mpire.
//!
//! `cargo run --release -p ppool-bench [-- --quick] [-- --only METRIC]`
//!
//! `cargo run -p ppool-bench -- --chart-from ppool-bench/results/remote_scale-after.json`
//! runs nothing and redraws `ppool-bench/results/remote_scale.svg` from a saved report.
//!
//! Every metric measures ppool and its anchors in the same run, interleaved, over
//! several repetitions; the report gives medians with min-max and ppool/anchor ratios
//! and is also written to `ppool-bench/results/latest.{json,svg}` (and `remote_scale` to
//! `remote_scale.svg`).

mod anchors;
mod chart;
mod children;
mod cli;
mod kernel;
mod metrics;
mod ppool_side;
mod procs;
mod report;
mod results;
mod scale_chart;
mod stats;

use std::path::Path;

use crate::anchors::python::PythonEnv;
use crate::cli::{METRICS, Options};
use crate::metrics::Ctx;
use crate::report::RunInfo;

/// Errors of a benchmark binary: any error, with its message.
pub(crate) type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Where `latest.json`, `latest.svg` and `remote_scale.svg` go.
const RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

/// Metrics that have Python anchors.
const PYTHON_METRICS: &[&str] = &[
    "sync_rtt",
    "bulk_tiny",
    "call_with",
    "echo_10mb",
    "cpu_scaling",
    "startup",
    "map_rss",
    "remote_scale",
    "shared",
];

ppool::main! {
    fn main() {
        if let Err(e) = run() {
            eprintln!("ppool-bench: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Child modes first: the bench re-executes itself for anchors and sub-measurements.
    if children::dispatch(&args)? {
        return Ok(());
    }
    // In a procspawn worker this serves the call and exits.
    anchors::procspawn::init();
    let Some(opts) = Options::parse(&args)? else {
        return Ok(());
    };
    let dir = Path::new(RESULTS_DIR);
    if let Some(json) = &opts.chart_from {
        scale_chart::redraw(json, &dir.join(scale_chart::FILE))?;
        eprintln!(
            "wrote ppool-bench/results/{} from {}",
            scale_chart::FILE,
            json.display()
        );
        return Ok(());
    }
    let python = if !opts.python {
        Err("python anchors skipped (--no-python)".to_owned())
    } else if PYTHON_METRICS.iter().any(|m| opts.wants(m)) {
        PythonEnv::prepare()
    } else {
        Err("python anchors not needed".to_owned())
    };
    if let Err(why) = &python {
        eprintln!("{why}");
    }
    let info = RunInfo {
        quick: opts.quick,
        reps: opts.reps,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let ctx = Ctx { opts, python };

    let mut results = Vec::new();
    for (id, what) in METRICS {
        if !ctx.opts.wants(id) {
            continue;
        }
        eprintln!("== {id}: {what}");
        results.push(metrics::run_metric(id, &ctx)?);
    }

    println!("{}", report::table(&info, &results));
    report::write_json(&dir.join("latest.json"), &report::to_json(&info, &results))?;
    chart::write_svg(&dir.join("latest.svg"), &info, &results)?;
    eprintln!("wrote ppool-bench/results/latest.json and latest.svg");
    let scale = results
        .iter()
        .find(|m| m.id == scale_chart::METRIC)
        .and_then(|m| scale_chart::ScaleRun::from_metric(&info, m));
    if let Some(scale) = scale {
        scale_chart::write_svg(&dir.join(scale_chart::FILE), &scale)?;
        eprintln!("wrote ppool-bench/results/{}", scale_chart::FILE);
    }
    Ok(())
}
