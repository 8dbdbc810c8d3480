//! `GET /v0/events`: the event outbox as a server-sent event stream
//! (issue 11, item 6; the WHATWG HTML "Server-sent events" format).
//!
//! Each event goes out with `id:` its outbox id (log index x 16 + n, the
//! same on both nodes), `event:` its name (`VM_ALIVE`, `SERVICE_ALIVE`,
//! ...) and `data:` the event as JSON (with `seq`, contiguous over every
//! event ever emitted). A client that reconnects, through the VIP to
//! whichever node is primary now, with `Last-Event-ID: <id>` resumes right
//! after that event: no gap, and no event under two ids. If that event has
//! left the bounded outbox meanwhile, the stream first says so (`event:
//! gap`) rather than skip silently. An event of an entry this node has
//! not applied yet (a standby just promoted, its last entries still to
//! commit) is waited for, not reported as a gap.
//!
//! The stream reads the store in pages of [`PAGE`] and waits on the applied
//! index between them: nothing is held per client beyond one page, and at
//! most `STREAMS_MAX` streams run at once.

use crate::shared::Shared;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use esc_domain::apply::EVENTS_PER_ENTRY_MAX;
use esc_domain::{query, Event, EventKind};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit};

/// Event streams open at once, per node.
pub const STREAMS_MAX: usize = 64;
/// Events read from the store at a time.
const PAGE: usize = 256;
/// A comment line this often keeps idle proxies from closing the stream,
/// and lets a client tell a dead node (silence) from a quiet one.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// The SSE `event:` name of an outbox event.
pub fn name(e: &Event) -> String {
    match &e.kind {
        EventKind::Esc { event, .. } => event.clone(),
        EventKind::OpModeChanged { .. } => "OP_MODE_CHANGED".into(),
    }
}

fn frame(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.id.to_string())
        .event(name(e))
        .data(serde_json::to_string(e).unwrap_or_default())
}

struct Cursor {
    shared: Shared,
    after: u64,
    applied: watch::Receiver<u64>,
    page: VecDeque<Event>,
    /// Whether the event the client resumes after was looked for.
    resumed: bool,
    _permit: OwnedSemaphorePermit,
}

/// What one read of the store found.
struct Read {
    /// The event `after` is no longer (or never was) in the outbox.
    gap: bool,
    /// The event `after` comes from an entry not applied here yet.
    ahead: bool,
    oldest: Option<u64>,
    events: Vec<Event>,
}

fn read(shared: &Shared, after: u64, check: bool) -> Result<Read, String> {
    // Read before the reader opens: its state is at least this far.
    let applied = shared.store.meta().applied_index;
    let r = shared.store.reader().map_err(|e| e.to_string())?;
    let missing = check
        && after > 0
        && query::event(&r, after)
            .map_err(|e| e.to_string())?
            .is_none();
    // An event id names the entry that emitted it: one of an entry this
    // node has not applied yet (a standby just promoted, its tail still to
    // commit) is still to come here, not lost. The check waits for it.
    let ahead = missing && after / EVENTS_PER_ENTRY_MAX > applied;
    if ahead {
        return Ok(Read {
            gap: false,
            ahead: true,
            oldest: None,
            events: Vec::new(),
        });
    }
    let gap = missing;
    let oldest = if gap {
        query::events(&r, 0, 1)
            .map_err(|e| e.to_string())?
            .first()
            .map(|e| e.id)
    } else {
        None
    };
    let events = query::events(&r, after, PAGE).map_err(|e| e.to_string())?;
    Ok(Read {
        gap,
        ahead: false,
        oldest,
        events,
    })
}

/// The stream of events after `after` (0: from the oldest kept).
pub fn stream(shared: Shared, after: u64, permit: OwnedSemaphorePermit) -> Response {
    let cursor = Cursor {
        applied: shared.applied.subscribe(),
        shared,
        after,
        page: VecDeque::new(),
        resumed: false,
        _permit: permit,
    };
    let events = futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.page.pop_front() {
                c.after = e.id;
                return Some((Ok::<_, Infallible>(frame(&e)), c));
            }
            let (shared, after, check) = (c.shared.clone(), c.after, !c.resumed);
            // Mark before reading: an apply during the read wakes the wait.
            c.applied.mark_unchanged();
            let r = tokio::task::spawn_blocking(move || read(&shared, after, check)).await;
            let Ok(Ok(r)) = r else {
                // The store cannot be read: end the stream; the client
                // reconnects with its Last-Event-ID.
                return None;
            };
            c.resumed = !r.ahead;
            c.page.extend(r.events);
            if r.gap {
                let data = serde_json::json!({
                    "after": after,
                    "oldest": r.oldest,
                    "message": "the event to resume after is no longer in the outbox: events between may be missing",
                });
                let gap = SseEvent::default().event("gap").data(data.to_string());
                return Some((Ok(gap), c));
            }
            if c.page.is_empty() && c.applied.changed().await.is_err() {
                return None;
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
