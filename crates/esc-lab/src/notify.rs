//! The client side of notifications, for the lab and the tests (issue 11,
//! item 6): a callback receiver that records every POST (its headers and
//! JSON body), and a server-sent event reader that reconnects with
//! `Last-Event-ID` after every drop, as a client of an HA service must.
//!
//! Both are plain blocking HTTP/1 over `std::net` on their own thread, so
//! they can run in a lab namespace (`Lab::in_ns`) and need no runtime.
//! Every read has a deadline; both stop when dropped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Bounds of what the receiver reads of one request.
const HEAD_BYTES_MAX: usize = 64 * 1024;
const BODY_BYTES_MAX: usize = 8 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: serde_json::Value,
}

/// A callback receiver on `addr` (e.g. `127.0.0.1:0`): answers `200` to
/// every request, except `503` to the first `refuse_first` (to show the
/// sender retries).
pub struct CallbackSink {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_request(s: &mut TcpStream) -> std::io::Result<(String, BTreeMap<String, String>, Vec<u8>)> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    let mut head = line.len();
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        head += n;
        if n == 0 || line == "\r\n" || line == "\n" || head > HEAD_BYTES_MAX {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(BODY_BYTES_MAX);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((path, headers, body))
}

impl CallbackSink {
    pub fn bind(addr: &str, refuse_first: usize) -> std::io::Result<CallbackSink> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Received>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let refused = AtomicUsize::new(0);
        let (rec, st) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let Ok((path, headers, body)) = read_request(&mut s) else {
                    continue;
                };
                let status = if refused.fetch_add(1, Ordering::Relaxed) < refuse_first {
                    "503 Service Unavailable"
                } else {
                    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    if let Ok(mut r) = rec.lock() {
                        r.push(Received {
                            path,
                            headers,
                            body,
                        });
                    }
                    "200 OK"
                };
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Ok(CallbackSink {
            addr,
            received,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every POST accepted so far (the refused ones are not kept).
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits until `n` POSTs were accepted, at most `deadline`.
    pub fn wait(&self, n: usize, deadline: Duration) -> bool {
        crate::cluster::wait_for(deadline, || self.received().len() >= n)
    }
}

impl Drop for CallbackSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept.
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One server-sent event as read.
#[derive(Debug, Clone)]
pub struct SseRecord {
    /// The `id:` (0 for an event without one, e.g. `gap`).
    pub id: u64,
    pub event: String,
    pub data: serde_json::Value,
    /// Which connection (1, 2, ...) delivered it.
    pub connection: u32,
}

/// Reads `GET /v0/events` from `addr`, resuming after the last id on
/// every reconnect; a connection silent for `idle_max` (the node sends a
/// keep-alive every second) counts as dead.
pub struct EventReader {
    events: Arc<Mutex<Vec<SseRecord>>>,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Reads one connection's events into `out` until it ends; false if it
/// could not be opened or was refused.
fn read_stream(
    addr: SocketAddr,
    auth: &str,
    after: u64,
    idle_max: Duration,
    connection: u32,
    out: &Mutex<Vec<SseRecord>>,
    stop: &AtomicBool,
) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, idle_max) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(idle_max));
    // HTTP/1.0: the stream is delimited by the connection's end, not chunked.
    let req = format!(
        "GET /v0/events HTTP/1.0\r\nHost: esc\r\nAuthorization: Basic {auth}\r\nAccept: text/event-stream\r\nLast-Event-ID: {after}\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.contains(" 200 ") {
        return false;
    }
    // Skip the head.
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return true,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let (mut id, mut event, mut data) = (0u64, String::new(), String::new());
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if !data.is_empty() || !event.is_empty() {
                let value = serde_json::from_str(&data).unwrap_or(serde_json::Value::Null);
                if let Ok(mut o) = out.lock() {
                    o.push(SseRecord {
                        id,
                        event: std::mem::take(&mut event),
                        data: value,
                        connection,
                    });
                }
            }
            (id, data) = (0, String::new());
        } else if let Some(v) = l.strip_prefix("id:") {
            id = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
    true
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

impl EventReader {
    /// Starts reading after event `after` (0: from the oldest kept).
    pub fn start(
        addr: SocketAddr,
        user: &str,
        password: &str,
        after: u64,
        idle_max: Duration,
    ) -> EventReader {
        let events: Arc<Mutex<Vec<SseRecord>>> = Default::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (ev, conns, st) = (events.clone(), connections.clone(), stop.clone());
        let auth = basic(user, password);
        let thread = std::thread::spawn(move || {
            let mut n = 0u32;
            while !st.load(Ordering::Relaxed) {
                n += 1;
                let last = ev
                    .lock()
                    .ok()
                    .and_then(|e| e.iter().rev().find(|r| r.id > 0).map(|r| r.id))
                    .unwrap_or(after);
                if read_stream(addr, &auth, last, idle_max, n, &ev, &st) {
                    conns.fetch_add(1, Ordering::Relaxed);
                }
                // The client's reconnect pacing, not synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        EventReader {
            events,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn events(&self) -> Vec<SseRecord> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Connections that were opened and then ended.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Waits until `cond` holds for the events read, at most `deadline`.
    pub fn wait_for(&self, deadline: Duration, cond: impl Fn(&[SseRecord]) -> bool) -> bool {
        crate::cluster::wait_for(deadline, || cond(&self.events()))
    }

    /// Stops reading (within `idle_max`); the events read.
    pub fn finish(mut self) -> Vec<SseRecord> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.events()
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a stream's events show: seqs contiguous (no gap), no id twice,
/// ids increasing. Empty when it holds.
pub fn stream_faults(events: &[SseRecord]) -> Vec<String> {
    let mut faults = Vec::new();
    let mut last: Option<(u64, u64)> = None;
    for e in events {
        if e.event == "gap" {
            faults.push(format!("the node reported a gap: {}", e.data));
            continue;
        }
        let seq = e.data["seq"].as_u64().unwrap_or(0);
        if let Some((id, s)) = last {
            if e.id <= id {
                faults.push(format!(
                    "id {} after {id} (connection {})",
                    e.id, e.connection
                ));
            }
            if seq != s + 1 {
                faults.push(format!(
                    "seq {seq} after {s} (ids {id} -> {}, connection {})",
                    e.id, e.connection
                ));
            }
        }
        last = Some((e.id, seq));
    }
    faults
}
