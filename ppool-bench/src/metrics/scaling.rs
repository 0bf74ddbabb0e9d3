//! Metric 5: CPU scaling with one worker per core.

use std::thread;
use std::time::Duration;

use super::{Ctx, Measured, Runners, note_shutdown, py_args, ready};
use crate::kernel;
use crate::ppool_side::SpinPool;
use crate::results::{Better, MetricResult};

const TASKS: usize = 200;
const TASK_TIME: Duration = Duration::from_millis(10);
/// In-process runs averaged for the serial time of one task.
const SERIAL_RUNS: u32 = 20;

/// 200 tasks of ~10 ms on n = cores workers; efficiency = serial work / (n x wall).
pub(crate) fn cpu_scaling(ctx: &Ctx) -> MetricResult {
    let mut m = MetricResult::new(
        "cpu_scaling",
        "CPU scaling: 200 tasks of ~10 ms, one worker per core",
        "% parallel efficiency",
        Better::Higher,
    );
    let workers = thread::available_parallelism().map_or(1, |n| n.get());
    let iters = kernel::calibrate(TASK_TIME);
    m.note(format!(
        "{workers} workers (available_parallelism); efficiency = {TASKS} x serial task time \
         / ({workers} x wall time), serial time re-measured in-process each repetition \
         ({SERIAL_RUNS}-run mean); rust kernel: {iters} xorshift steps, python kernel \
         calibrated to {} ms separately",
        TASK_TIME.as_millis()
    ));
    let ppool = ready(&mut m, "ppool", SpinPool::new(workers));
    let mut runners = Runners::default();
    if let Some(pool) = &ppool {
        runners.add("ppool", move || {
            let serial = kernel::serial_task_time(iters, SERIAL_RUNS);
            let wall = pool.run(iters, TASKS)?;
            let efficiency =
                100.0 * TASKS as f64 * serial.as_secs_f64() / (workers as f64 * wall.as_secs_f64());
            Ok(Measured::one("ppool batch", efficiency))
        });
    }
    let args = py_args(&[
        ("tasks", TASKS.to_string()),
        ("workers", workers.to_string()),
        ("target-ms", TASK_TIME.as_millis().to_string()),
    ]);
    runners.add_python(ctx, &mut m, "cpu_scaling", args);
    runners.run(&mut m, ctx.opts.reps);
    if let Some(pool) = ppool {
        note_shutdown(&mut m, "ppool", pool.finish());
    }
    m
}
