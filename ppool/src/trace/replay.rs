//! The supervisor's end: each record from a worker becomes an event of the pool's subscriber,
//! with the record's own level, target, place and fields, inside the spans it happened in,
//! all inside a `task` span tagged with the pool, the worker, its host and pid: the record's
//! [`Origin`], as the forwarder that read it knows it.
//!
//! `tracing` wants static metadata, so each distinct place in the workers' code gets one
//! callsite, made once and kept (leaked) for the life of the program, as every callsite is.
//! At most [`MAX_SITES`] are made; past that, records share one site per kind and level,
//! target `ppool::worker`, whose `ppool.more_fields` carries their fields as text.

use super::{Origin, Record, SpanRecord, Value, level_of};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use tracing::callsite::{Callsite, Identifier};
use tracing::field::{Field, FieldSet, ValueSet};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Level, Metadata};

/// The most places that get a callsite of their own.
const MAX_SITES: usize = 4096;

/// The most fields a callsite can carry (`tracing`'s own limit for a value set).
const MAX_FIELDS: usize = 32;

/// Re-emits `record`, which came from `origin`, to `dispatch`.
pub(crate) fn emit(dispatch: &Dispatch, record: &Record, origin: &Origin) {
    tracing::dispatcher::with_default(dispatch, || emit_here(record, origin));
}

fn emit_here(record: &Record, origin: &Origin) {
    let Some(level) = level_of(record.level) else {
        return;
    };
    let entry = record.task.as_ref().map(|(e, _)| e.as_str());
    let task = record.task.as_ref().map(|(_, n)| *n);
    // Each span is made inside the one before it, so that each has its parent.
    let mut entered = vec![task_span(level, origin, entry, task).entered()];
    for span in &record.spans {
        entered.push(open_span(span).entered());
    }
    let site = site(
        Kind::EVENT,
        "event",
        level,
        &record.target,
        Place {
            module_path: record.module_path.clone(),
            file: record.file.clone(),
            line: record.line,
        },
        &names(&record.fields),
    );
    let meta = site.metadata();
    let enabled = tracing::dispatcher::get_default(|d| d.enabled(meta));
    if enabled {
        with_values(meta, &record.fields, |values| {
            tracing::Event::dispatch(meta, values);
        });
    }
    // Left innermost first.
    while let Some(span) = entered.pop() {
        drop(span);
    }
}

/// The `task` span around every forwarded event, at the event's level so that it shows
/// wherever the event does.
fn task_span(level: Level, o: &Origin, entry: Option<&str>, task: Option<u64>) -> tracing::Span {
    macro_rules! at {
        ($level:expr) => {
            tracing::span!(
                target: "ppool::worker",
                $level,
                "task",
                pool = %o.pool,
                worker = o.worker,
                host = %o.host,
                pid = o.pid,
                entry,
                task,
            )
        };
    }
    match level {
        Level::ERROR => at!(Level::ERROR),
        Level::WARN => at!(Level::WARN),
        Level::INFO => at!(Level::INFO),
        Level::DEBUG => at!(Level::DEBUG),
        Level::TRACE => at!(Level::TRACE),
    }
}

/// A span of the worker's, made again here.
fn open_span(span: &SpanRecord) -> tracing::Span {
    let Some(level) = level_of(span.level) else {
        return tracing::Span::none();
    };
    let site = site(
        Kind::SPAN,
        &span.name,
        level,
        &span.target,
        Place::default(),
        &names(&span.fields),
    );
    let meta = site.metadata();
    if !tracing::dispatcher::get_default(|d| d.enabled(meta)) {
        return tracing::Span::none();
    }
    with_values(meta, &span.fields, |values| {
        tracing::Span::new(meta, values)
    })
}

/// The field names of a record: its own, up to the limit, the last one holding the rest.
fn names(fields: &[(String, Value)]) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in fields {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    if names.len() > MAX_FIELDS {
        names.truncate(MAX_FIELDS - 1);
        names.push("ppool.more_fields");
    }
    names
}

/// Calls `f` with the value set of `fields` for `meta`.
fn with_values<R>(
    meta: &'static Metadata<'static>,
    fields: &[(String, Value)],
    f: impl FnOnce(&ValueSet<'_>) -> R,
) -> R {
    let set = meta.fields();
    let mut known: Vec<(Field, Shown<'_>)> = Vec::new();
    let mut more: Vec<String> = Vec::new();
    for (name, value) in fields {
        match set.field(name.as_str()) {
            Some(field) if !known.iter().any(|(k, _)| *k == field) => {
                known.push((field, Shown::of(value)))
            }
            _ => more.push(format!("{name}={}", Shown::of(value))),
        }
    }
    let more = more.join(" ");
    if !more.is_empty()
        && let Some(field) = set.field("ppool.more_fields")
    {
        known.push((field, Shown::text(&more)));
    }
    let errors: Vec<Option<&(dyn std::error::Error + 'static)>> = known
        .iter()
        .map(|(_, shown)| match shown {
            Shown::Error(e) => Some(e as &(dyn std::error::Error + 'static)),
            _ => None,
        })
        .collect();
    let values: Vec<(&Field, &dyn tracing::Value)> = known
        .iter()
        .zip(&errors)
        .map(|((field, shown), error)| (field, shown.as_value(error)))
        .collect();
    let Some(first) = set.iter().next() else {
        return f(&set.value_set(&[]));
    };
    let mut padded: [(&Field, Option<&dyn tracing::Value>); MAX_FIELDS] =
        [(&first, None); MAX_FIELDS];
    for (slot, (field, value)) in padded.iter_mut().zip(values) {
        *slot = (field, Some(value));
    }
    f(&set.value_set(&padded))
}

/// A value, ready to be recorded as its kind.
enum Shown<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    I128(i128),
    U128(u128),
    F64(f64),
    Str(&'a str),
    /// Recorded with `Debug`, as the text the worker's `Debug` printed.
    Text(tracing::field::DebugValue<Raw<'a>>),
    /// Recorded as `&dyn Error` (by [`with_values`], which holds the reference).
    Error(Remote),
}

impl<'a> Shown<'a> {
    fn of(value: &'a Value) -> Shown<'a> {
        match value {
            Value::Bool(v) => Shown::Bool(*v),
            Value::I64(v) => Shown::I64(*v),
            Value::U64(v) => Shown::U64(*v),
            Value::I128(v) => Shown::I128(*v),
            Value::U128(v) => Shown::U128(*v),
            Value::F64(v) => Shown::F64(*v),
            Value::Str(v) => Shown::Str(v),
            Value::Debug(v) => Shown::text(v),
            Value::Error(chain) => Shown::Error(Remote::chain(chain)),
        }
    }

    fn text(text: &'a str) -> Shown<'a> {
        Shown::Text(tracing::field::debug(Raw(text)))
    }

    /// The value to record; an error is recorded through `error`, its `&dyn Error`.
    fn as_value<'s>(
        &'s self,
        error: &'s Option<&'s (dyn std::error::Error + 'static)>,
    ) -> &'s dyn tracing::Value {
        match (self, error) {
            (_, Some(e)) => e,
            (Shown::Bool(v), _) => v,
            (Shown::I64(v), _) => v,
            (Shown::U64(v), _) => v,
            (Shown::I128(v), _) => v,
            (Shown::U128(v), _) => v,
            (Shown::F64(v), _) => v,
            (Shown::Str(v), _) => v,
            (Shown::Text(v), _) => v,
            (Shown::Error(e), None) => &e.message,
        }
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shown::Bool(v) => write!(f, "{v}"),
            Shown::I64(v) => write!(f, "{v}"),
            Shown::U64(v) => write!(f, "{v}"),
            Shown::I128(v) => write!(f, "{v}"),
            Shown::U128(v) => write!(f, "{v}"),
            Shown::F64(v) => write!(f, "{v}"),
            Shown::Str(v) => write!(f, "{v:?}"),
            Shown::Text(v) => write!(f, "{v:?}"),
            Shown::Error(e) => write!(f, "{e}"),
        }
    }
}

/// Text recorded with `Debug` that prints itself as it is (the worker already formatted it).
struct Raw<'a>(&'a str);

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// An error from a worker: its message, and its sources', as an error again.
#[derive(Debug)]
struct Remote {
    message: String,
    source: Option<Box<Remote>>,
}

impl Remote {
    fn chain(chain: &[String]) -> Remote {
        let mut source = None;
        for message in chain.iter().skip(1).rev() {
            source = Some(Box::new(Remote {
                message: message.clone(),
                source,
            }));
        }
        Remote {
            message: chain.first().cloned().unwrap_or_default(),
            source,
        }
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Remote {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Where a record came from in the worker's code.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
struct Place {
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
}

/// What makes two records share a callsite.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: bool,
    name: String,
    level: u8,
    target: String,
    place: Place,
    fields: Vec<String>,
}

/// A callsite made at run time.
struct Site {
    meta: OnceLock<Metadata<'static>>,
}

impl Callsite for Site {
    fn set_interest(&self, _interest: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.meta.get().unwrap_or(&FALLBACK_META)
    }
}

/// The callsite a [`Site`] stands for while its metadata is being made (it is never
/// registered before it has its own).
struct Fallback;

static FALLBACK: Fallback = Fallback;

static FALLBACK_META: Metadata<'static> = Metadata::new(
    "ppool forwarded record",
    "ppool::worker",
    Level::TRACE,
    None,
    None,
    None,
    FieldSet::new(&[], Identifier(&FALLBACK)),
    Kind::EVENT,
);

impl Callsite for Fallback {
    fn set_interest(&self, _interest: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        &FALLBACK_META
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// The callsite for one place, made and registered on first use.
fn site(
    kind: Kind,
    name: &str,
    level: Level,
    target: &str,
    place: Place,
    fields: &[&str],
) -> &'static Site {
    static SITES: OnceLock<Mutex<HashMap<Key, &'static Site>>> = OnceLock::new();
    let mut key = Key {
        kind: kind.is_span(),
        name: name.to_string(),
        level: super::level_byte(level),
        target: target.to_string(),
        place,
        fields: fields.iter().map(|s| s.to_string()).collect(),
    };
    let sites = SITES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut sites = crate::sync::lock(sites);
    if let Some(site) = sites.get(&key) {
        return site;
    }
    if sites.len() >= MAX_SITES {
        // Full: the shared site of this kind and level (made once, past the limit).
        key = Key {
            kind: key.kind,
            name: if key.kind { "span" } else { "event" }.to_string(),
            level: key.level,
            target: "ppool::worker".to_string(),
            place: Place::default(),
            fields: vec!["message".to_string(), "ppool.more_fields".to_string()],
        };
        if let Some(site) = sites.get(&key) {
            return site;
        }
    }
    let site: &'static Site = Box::leak(Box::new(Site {
        meta: OnceLock::new(),
    }));
    let names: &'static [&'static str] = Box::leak(
        key.fields
            .iter()
            .map(|f| leak(f))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let meta = Metadata::new(
        leak(&key.name),
        leak(&key.target),
        level,
        key.place.file.as_deref().map(leak),
        key.place.line,
        key.place.module_path.as_deref().map(leak),
        FieldSet::new(names, Identifier(site)),
        kind,
    );
    let _ = site.meta.set(meta);
    tracing::callsite::register(site);
    sites.insert(key, site);
    site
}
