//! The worker's end: a `tracing` subscriber that writes each enabled event, with the spans it
//! happened in, as one marked line on stderr.

use super::{Record, SpanRecord, Value, level_byte};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record as Values};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// Set once [`make_global`] has put the subscriber in place: only then is the running task
/// noted.
static CAPTURING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The spans entered on this thread, innermost last.
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The entry this thread runs, and how many tasks this process had started before it.
    static TASK: Cell<Option<(&'static str, u64)>> = const { Cell::new(None) };
}

/// How many tasks this process has started.
static TASKS: AtomicU64 = AtomicU64::new(0);

/// Notes that this thread starts a task of `entry` (only while capturing: a relaxed load
/// otherwise). The note stays until the next task: events after a task belong to none, which
/// the worker's loop does not emit.
#[inline]
pub(crate) fn task_starts(entry: &'static str) {
    if CAPTURING.load(Ordering::Relaxed) {
        let n = TASKS.fetch_add(1, Ordering::Relaxed);
        let _ = TASK.try_with(|t| t.set(Some((entry, n))));
    }
}

/// The capturing subscriber for events up to `max` (a [`level_byte`]; 0: none).
///
/// The worker runs its initializer under it as the thread's default, and makes it the
/// global default before the first task, unless the initializer installed a subscriber of its
/// own, which then keeps the events.
pub(crate) fn dispatch(max: u8) -> Option<tracing::Dispatch> {
    let level = super::level_of(max)?;
    Some(tracing::Dispatch::new(Capture {
        max: LevelFilter::from_level(level),
        spans: Mutex::new(HashMap::new()),
        next: AtomicU64::new(1),
    }))
}

/// Makes `dispatch` the process's global default, if nothing else is.
pub(crate) fn make_global(dispatch: tracing::Dispatch) {
    if tracing::dispatcher::set_global_default(dispatch).is_ok() {
        CAPTURING.store(true, Ordering::Relaxed);
    }
}

/// A span this process has open.
#[derive(Debug)]
struct Open {
    record: SpanRecord,
    /// Handles to it (`clone_span` adds one, `try_close` takes one).
    refs: usize,
}

/// The subscriber.
#[derive(Debug)]
struct Capture {
    max: LevelFilter,
    spans: Mutex<HashMap<u64, Open>>,
    next: AtomicU64,
}

impl Capture {
    fn spans(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        crate::sync::lock(&self.spans)
    }

    fn write(&self, record: &Record) {
        if let Some(line) = record.to_line() {
            // One write: a line shorter than a pipe's buffer never mixes with another's.
            let _ = std::io::stderr().lock().write_all(&line);
        }
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if self.enabled(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        self.max >= *meta.level()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let meta = attrs.metadata();
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let record = SpanRecord {
            name: meta.name().to_string(),
            target: meta.target().to_string(),
            level: level_byte(*meta.level()),
            fields: fields.0,
        };
        self.spans().insert(id, Open { record, refs: 1 });
        Id::from_u64(id)
    }

    fn record(&self, span: &Id, values: &Values<'_>) {
        let mut fields = Fields::default();
        values.record(&mut fields);
        if let Some(open) = self.spans().get_mut(&span.into_u64()) {
            open.record.fields.extend(fields.0);
        }
    }

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        // `try_with`: an event may come from a thread-local's destructor.
        let stack: Vec<u64> = STACK.try_with(|s| s.borrow().clone()).unwrap_or_default();
        let spans = {
            let open = self.spans();
            stack
                .iter()
                .filter_map(|id| open.get(id).map(|o| o.record.clone()))
                .collect()
        };
        let record = Record {
            level: level_byte(*meta.level()),
            target: meta.target().to_string(),
            module_path: meta.module_path().map(str::to_string),
            file: meta.file().map(str::to_string),
            line: meta.line(),
            fields: fields.0,
            spans,
            task: TASK
                .try_with(Cell::get)
                .ok()
                .flatten()
                .map(|(entry, n)| (entry.to_string(), n)),
        };
        self.write(&record);
    }

    fn enter(&self, span: &Id) {
        let _ = STACK.try_with(|s| s.borrow_mut().push(span.into_u64()));
    }

    fn exit(&self, span: &Id) {
        let id = span.into_u64();
        let _ = STACK.try_with(|s| {
            let mut stack = s.borrow_mut();
            if let Some(at) = stack.iter().rposition(|&x| x == id) {
                stack.remove(at);
            }
        });
    }

    fn clone_span(&self, id: &Id) -> Id {
        if let Some(open) = self.spans().get_mut(&id.into_u64()) {
            open.refs += 1;
        }
        id.clone()
    }

    fn try_close(&self, id: Id) -> bool {
        let mut open = self.spans();
        let key = id.into_u64();
        let closed = match open.get_mut(&key) {
            Some(o) if o.refs > 1 => {
                o.refs -= 1;
                false
            }
            Some(_) => true,
            None => false,
        };
        if closed {
            open.remove(&key);
        }
        closed
    }
}

/// The fields of an event or span, as values.
#[derive(Debug, Default)]
pub(super) struct Fields(pub(super) Vec<(String, Value)>);

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        self.0.push((field.name().to_string(), value));
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, Value::F64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::I64(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::U64(value));
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.push(field, Value::I128(value));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.push(field, Value::U128(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::Str(value.to_string()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = vec![value.to_string()];
        let mut source = value.source();
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        self.push(field, Value::Error(chain));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, Value::Debug(format!("{value:?}")));
    }
}
