//! What may cross threads: a pool is shared by reference (`Send + Sync`), a task, a batch and
//! an `as_completed` may be handed to another thread (`Send`), a task may be waited on from
//! several (`Sync`), and the error is `Send + Sync + 'static + Clone`, as `std::error::Error`
//! users expect. A `Map` holds the input iterator, so it is `Send` when that is.
use ppool::{AsCompleted, Batch, EntryView, Error, Map, ProcessPool, Task, pool_entry};

#[pool_entry]
fn square(x: u64) -> u64 {
    x * x
}

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn error<E: std::error::Error + Send + Sync + Clone + 'static>() {}

fn main() {
    send::<ProcessPool<square>>();
    sync::<ProcessPool<square>>();
    send::<EntryView<'static, square>>();
    sync::<EntryView<'static, square>>();
    send::<Task<u64>>();
    sync::<Task<u64>>();
    send::<Batch<u64>>();
    sync::<Batch<u64>>();
    send::<AsCompleted<u64>>();
    send::<Map<'static, square, std::ops::Range<u64>>>();
    error::<Error>();
}
