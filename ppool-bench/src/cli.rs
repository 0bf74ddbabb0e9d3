//! Command line of the benchmark's main process.

use std::path::PathBuf;

use crate::BenchResult;

/// Every metric, in the order they run and are reported.
pub(crate) const METRICS: &[(&str, &str)] = &[
    ("sync_rtt", "sync round trip, one task in flight"),
    (
        "sync_rtt_pinned",
        "sync round trip, everything pinned to CPU 0",
    ),
    ("bulk_tiny", "1M tiny tasks in one batch"),
    (
        "call_with",
        "call_with, 20k tasks with completion callbacks",
    ),
    ("echo_10mb", "10 MiB echo round trip"),
    ("echo_100mb", "100 MiB echo round trip"),
    (
        "ssh_rtt",
        "sync round trip to a worker on another host over ssh",
    ),
    ("ssh_bulk", "tiny tasks in bulk on other hosts over ssh"),
    (
        "remote_scale",
        "remote workers by count (4x4, 16x16, 64x16 agents x workers) beside mp.Pool(N)",
    ),
    (
        "shared",
        "shared inputs: 256 MiB to every worker (2 local, 4x4 hosts), a handle in tiny tasks, \
         10/100 MiB as SharedBytes",
    ),
    ("cpu_scaling", "CPU scaling, 200 x ~10 ms tasks"),
    (
        "startup",
        "whole process: start pool of 2, 2 tasks, shut down",
    ),
    ("map_rss", "lazy map over many items: peak RSS growth"),
    (
        "codec_small",
        "codec: one u64, ppool's codec vs plain postcard",
    ),
    (
        "codec_record",
        "codec: a mixed record, ppool's codec vs plain postcard",
    ),
];

const USAGE: &str = "\
usage: cargo run --release -p ppool-bench -- [options]

options:
  --quick            small sizes and 2 repetitions (smoke run)
  --reps N           repetitions per metric (default 5, quick 2)
  --only LIST        run only these metrics (comma separated, may repeat)
  --no-python        skip the Python anchors (multiprocessing, mpire)
  --chart-from FILE  run nothing: redraw results/remote_scale.svg from the
                     remote_scale metric of a saved JSON report
  --help             print this help and the metric names";

/// Parsed options of the main benchmark process.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    pub(crate) only: Vec<String>,
    pub(crate) python: bool,
    /// A saved JSON report to redraw the remote_scale chart from, instead of a run.
    pub(crate) chart_from: Option<PathBuf>,
}

impl Options {
    /// Parses the arguments after the program name; `Ok(None)` means help was printed.
    pub(crate) fn parse(args: &[String]) -> BenchResult<Option<Options>> {
        let mut quick = false;
        let mut reps = None;
        let mut only = Vec::new();
        let mut python = true;
        let mut chart_from = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--no-python" => python = false,
                "--reps" => {
                    let value = it.next().ok_or("--reps needs a number")?;
                    let n: usize = value.parse().map_err(|_| format!("bad --reps {value:?}"))?;
                    if n == 0 {
                        return Err("--reps must be at least 1".into());
                    }
                    reps = Some(n);
                }
                "--chart-from" => {
                    let value = it.next().ok_or("--chart-from needs a JSON file")?;
                    chart_from = Some(PathBuf::from(value));
                }
                "--only" => {
                    let value = it.next().ok_or("--only needs a metric name")?;
                    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                        if !METRICS.iter().any(|(id, _)| *id == name) {
                            return Err(format!("unknown metric {name:?} (see --help)").into());
                        }
                        only.push(name.to_owned());
                    }
                }
                "--help" | "-h" => {
                    println!("{USAGE}\n\nmetrics:");
                    for (id, what) in METRICS {
                        println!("  {id:<16} {what}");
                    }
                    return Ok(None);
                }
                // `cargo bench` style harness flags are accepted and ignored.
                "--bench" => {}
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        Ok(Some(Options {
            quick,
            reps: reps.unwrap_or(if quick { 2 } else { 5 }),
            only,
            python,
            chart_from,
        }))
    }

    /// Whether metric `id` was selected.
    pub(crate) fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|m| m == id)
    }

    /// `full` normally, `quick` with `--quick`.
    pub(crate) fn size<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> BenchResult<Option<Options>> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Options::parse(&args)
    }

    #[test]
    fn defaults_and_quick() -> BenchResult<()> {
        let full = parse(&[])?.ok_or("no options")?;
        assert_eq!((full.quick, full.reps, full.python), (false, 5, true));
        let quick = parse(&["--quick", "--only", "startup,bulk_tiny"])?.ok_or("no options")?;
        assert_eq!(quick.reps, 2);
        assert!(quick.wants("startup") && quick.wants("bulk_tiny") && !quick.wants("sync_rtt"));
        assert_eq!(full.chart_from, None);
        Ok(())
    }

    #[test]
    fn chart_from_a_file() -> BenchResult<()> {
        let opts = parse(&["--chart-from", "results/x.json"])?.ok_or("no options")?;
        assert_eq!(opts.chart_from, Some(PathBuf::from("results/x.json")));
        assert!(parse(&["--chart-from"]).is_err());
        Ok(())
    }

    #[test]
    fn rejects_unknown() {
        assert!(parse(&["--only", "nope"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["--reps", "0"]).is_err());
    }
}
