//! Shared values on a host: each is sent to the host's agent once, the first time a job that
//! names it goes there, as a SHARE message and its bytes in SHARE_PART messages written from
//! the pool's own read-only mapping (never copied into the outbox); a FORGET tells the agent
//! when the pool freed it. Every message goes through the host's outbox, so nothing here
//! waits for the host.

use super::host::Conn;
use super::outbox::SharedData;
use crate::mux::{CONTROL, Control};
use crate::share::Stored;
use crate::sync::lock;
use std::io;
use std::sync::Arc;

/// The most bytes of a value in one SHARE_PART message.
const PART: usize = 1 << 20;

impl AsRef<[u8]> for Stored {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

/// Sends the host each of `needs` it was not sent yet, before whatever is posted next.
pub(super) fn provide(conn: &Conn, needs: &[Arc<Stored>]) -> io::Result<()> {
    if needs.is_empty() {
        return Ok(());
    }
    // Held while a value is posted, so that a job posted after another thread's check finds
    // the value's bytes ahead of it in the outbox.
    let mut provided = lock(&conn.provided);
    for stored in needs {
        let id = stored.id();
        if provided.contains(&id) {
            continue;
        }
        let header = stored.header();
        let begin = Control::Share {
            token: header.token,
            id,
            kind: header.kind.code() as u8,
            len: header.len,
            hash: header.hash,
        };
        conn.outbox.post(CONTROL, &begin.encode())?;
        let len = stored.bytes().len();
        let part = PART.min(conn.max_message.saturating_sub(64)).max(1);
        let data: SharedData = stored.clone();
        let mut offset = 0;
        while offset < len {
            let end = (offset + part).min(len);
            let prefix = Control::share_part_prefix(id, offset as u64);
            conn.outbox
                .post_shared(CONTROL, &prefix, Arc::clone(&data), offset..end)?;
            offset = end;
        }
        provided.insert(id);
    }
    Ok(())
}

/// Tells the host to let value `id` go, if it was sent it.
pub(super) fn forget(conn: &Conn, id: u64) {
    if lock(&conn.provided).remove(&id) {
        let _ = conn.outbox.post(CONTROL, &Control::Forget { id }.encode());
    }
}
