//! The metrics and the harness that interleaves their contenders.
//!
//! Every contender is a [`Runner`] producing one sample per repetition. Runners take
//! turns within a repetition, and the order flips on every other repetition, so slow
//! drifts of the machine hit ppool and the anchors alike.

pub(crate) mod codec;
pub(crate) mod latency;
pub(crate) mod process;
pub(crate) mod remote;
pub(crate) mod remote_scale;
pub(crate) mod scaling;
pub(crate) mod shared;
pub(crate) mod shared_broadcast;
pub(crate) mod throughput;

use std::time::Duration;

use serde_json::Value;

use crate::BenchResult;
use crate::anchors::python::PythonEnv;
use crate::cli::Options;
use crate::results::MetricResult;

/// Worker count of every pool unless a metric says otherwise.
pub(crate) const WORKERS: usize = 2;

/// What every metric needs to know about this run.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) opts: Options,
    /// The Python anchors, or why they are skipped.
    pub(crate) python: Result<PythonEnv, String>,
}

/// Runs the metric called `id`.
pub(crate) fn run_metric(id: &str, ctx: &Ctx) -> BenchResult<MetricResult> {
    Ok(match id {
        "sync_rtt" => latency::sync_rtt(ctx),
        "sync_rtt_pinned" => latency::sync_rtt_pinned(ctx),
        "bulk_tiny" => throughput::bulk_tiny(ctx),
        "call_with" => throughput::call_with(ctx),
        "echo_10mb" => throughput::echo_10mb(ctx),
        "echo_100mb" => throughput::echo_100mb(ctx),
        "ssh_rtt" => remote::ssh_rtt(ctx),
        "ssh_bulk" => remote::ssh_bulk(ctx),
        "remote_scale" => remote_scale::remote_scale(ctx),
        "cpu_scaling" => scaling::cpu_scaling(ctx),
        "startup" => process::startup(ctx),
        "map_rss" => process::map_rss(ctx),
        "codec_small" => codec::codec_small(ctx),
        "codec_record" => codec::codec_record(ctx),
        "shared" => shared::shared(ctx),
        other => return Err(format!("no metric {other:?}").into()),
    })
}

/// The values one runner measured in one repetition.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    pub(crate) values: Vec<(String, f64)>,
    pub(crate) notes: Vec<String>,
}

impl Measured {
    pub(crate) fn one(name: &str, value: f64) -> Measured {
        Measured {
            values: vec![(name.to_owned(), value)],
            notes: Vec::new(),
        }
    }
}

type SampleFn<'a> = Box<dyn FnMut() -> BenchResult<Measured> + 'a>;

/// One contender (or a group measured together, like the Python anchors).
pub(crate) struct Runner<'a> {
    label: String,
    sample: SampleFn<'a>,
}

/// The runners of one metric, in their first-repetition order (ppool first).
#[derive(Default)]
pub(crate) struct Runners<'a> {
    list: Vec<Runner<'a>>,
}

impl<'a> Runners<'a> {
    pub(crate) fn add(&mut self, label: &str, sample: impl FnMut() -> BenchResult<Measured> + 'a) {
        self.list.push(Runner {
            label: label.to_owned(),
            sample: Box::new(sample),
        });
    }

    /// Adds `anchors.py METRIC ARGS` as a runner, or notes why Python is skipped.
    pub(crate) fn add_python(
        &mut self,
        ctx: &'a Ctx,
        metric: &mut MetricResult,
        py_metric: &'static str,
        args: Vec<String>,
    ) {
        let env = match &ctx.python {
            Ok(env) => env,
            Err(why) => {
                metric.note(why.clone());
                return;
            }
        };
        self.add("python", move || {
            let out = env.run(py_metric, &args)?;
            let values = out
                .values
                .into_iter()
                .filter_map(|(name, v)| v.as_f64().map(|v| (name, v)))
                .collect();
            Ok(Measured {
                values,
                notes: out.notes,
            })
        });
    }

    /// Runs every runner `reps` times, interleaved, recording into `metric`.
    /// A runner that fails is noted and dropped; the others go on.
    pub(crate) fn run(mut self, metric: &mut MetricResult, reps: usize) {
        let mut alive = vec![true; self.list.len()];
        for rep in 0..reps {
            let mut order: Vec<usize> = (0..self.list.len()).collect();
            if rep % 2 == 1 {
                order.reverse();
            }
            let mut line = Vec::new();
            for i in order {
                if !alive[i] {
                    continue;
                }
                let runner = &mut self.list[i];
                match (runner.sample)() {
                    Ok(measured) => {
                        for (name, value) in measured.values {
                            line.push(format!("{name} {}", crate::report::fmt_value(value)));
                            metric.record(&name, value);
                        }
                        for note in measured.notes {
                            metric.note(note);
                        }
                    }
                    Err(e) => {
                        let note = format!("{} failed and was dropped: {e}", runner.label);
                        eprintln!("  {note}");
                        metric.note(note);
                        alive[i] = false;
                    }
                }
            }
            eprintln!("  rep {}/{reps}: {}", rep + 1, line.join(" | "));
        }
    }
}

/// `Some(value)` if setup succeeded; otherwise notes the failure on `metric`.
pub(crate) fn ready<T>(metric: &mut MetricResult, label: &str, setup: BenchResult<T>) -> Option<T> {
    match setup {
        Ok(value) => Some(value),
        Err(e) => {
            let note = format!("{label} skipped: setup failed: {e}");
            eprintln!("  {note}");
            metric.note(note);
            None
        }
    }
}

/// Notes a failure to shut a pool down cleanly.
pub(crate) fn note_shutdown(metric: &mut MetricResult, label: &str, result: BenchResult<()>) {
    if let Err(e) = result {
        metric.note(format!("{label}: shutting the pool down failed: {e}"));
    }
}

/// Microseconds per operation.
pub(crate) fn micros_per(total: Duration, ops: u64) -> f64 {
    total.as_secs_f64() * 1e6 / ops.max(1) as f64
}

/// Operations per second.
pub(crate) fn per_second(ops: u64, total: Duration) -> f64 {
    ops as f64 / total.as_secs_f64().max(1e-12)
}

/// `--flag value` pairs for `anchors.py`.
pub(crate) fn py_args(pairs: &[(&str, String)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(k, v)| [format!("--{k}"), v.clone()])
        .collect()
}

/// A numeric field of a JSON object printed by a child.
pub(crate) fn json_f64(json: &Value, field: &str) -> BenchResult<f64> {
    Ok(json
        .get(field)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("child JSON has no number {field:?}"))?)
}
