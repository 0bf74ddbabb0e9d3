//! The codec: ppool's (postcard beneath, with the wrappers that keep user errors' messages
//! and grow the stack) against plain postcard, on the payloads the other metrics carry.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Ctx, Measured, Runners};
use crate::results::{Better, MetricResult};

const UNIT: &str = "ns per value, encoded and decoded";

/// A record of the mixed kind a real task carries.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    values: Vec<f64>,
    flag: Option<bool>,
    kind: Kind,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
enum Kind {
    Plain,
    Scaled { by: f32 },
}

fn record() -> Record {
    Record {
        id: 123_456_789,
        name: "sample-0042".into(),
        tags: vec!["a".into(), "bb".into(), "ccc".into()],
        values: (0..16).map(|i| f64::from(i) * 0.5).collect(),
        flag: Some(true),
        kind: Kind::Scaled { by: 1.5 },
    }
}

/// `u64`, the tiny task of `bulk_tiny` and `sync_rtt`.
pub(crate) fn codec_small(ctx: &Ctx) -> MetricResult {
    measure(
        ctx,
        MetricResult::new(
            "codec_small",
            "Codec: one u64 (a tiny task), ppool's codec vs plain postcard",
            UNIT,
            Better::Lower,
        ),
        7u64,
        ctx.opts.size(2_000_000, 200_000),
    )
}

/// A record of strings, floats, an option and an enum.
pub(crate) fn codec_record(ctx: &Ctx) -> MetricResult {
    measure(
        ctx,
        MetricResult::new(
            "codec_record",
            "Codec: a 6-field record with strings, floats and an enum, ppool's codec vs plain postcard",
            UNIT,
            Better::Lower,
        ),
        record(),
        ctx.opts.size(500_000, 50_000),
    )
}

fn measure<T>(ctx: &Ctx, mut m: MetricResult, value: T, n: usize) -> MetricResult
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + 'static,
{
    m.note(format!(
        "{n} encodes and decodes per sample, into a reused buffer, one thread"
    ));
    m.note(
        "ppool's codec runs user code under catch_unwind, grows the stack for deep values and \
         keeps the text of a user type's own serde errors; plain postcard does none of these",
    );
    let mut runners = Runners::default();
    let v = &value;
    runners.add("ppool codec", move || {
        let mut buf = Vec::with_capacity(256);
        let start = Instant::now();
        for _ in 0..n {
            buf.clear();
            ppool::__private::codec::encode_into(black_box(v), &mut buf)?;
            let back: T = ppool::__private::codec::decode(black_box(&buf))?;
            black_box(back);
        }
        Ok(Measured::one("ppool codec", nanos_per(start, n)))
    });
    runners.add("postcard", move || {
        let mut buf = Vec::with_capacity(256);
        let start = Instant::now();
        for _ in 0..n {
            buf.clear();
            buf = postcard::to_extend(black_box(v), buf)?;
            let back: T = postcard::from_bytes(black_box(&buf))?;
            black_box(back);
        }
        Ok(Measured::one("postcard", nanos_per(start, n)))
    });
    runners.run(&mut m, ctx.opts.reps);
    m
}

fn nanos_per(start: Instant, n: usize) -> f64 {
    start.elapsed().as_secs_f64() * 1e9 / n.max(1) as f64
}
