//! What an unauthenticated or misbehaving client can hold on a node:
//! - silent connections to the replication port lose their handshake slot
//!   within the hello deadline, and one host holds at most a few, so the
//!   real peer still gets in while they keep coming;
//! - a replication link the node closes is closed for good, even while its
//!   writer is stuck on a peer that stopped reading and a snapshot stream
//!   still holds its queue;
//! - the API checks credentials before it reads a request body;
//! - the API holds at most its share of connections from one source and in
//!   all, closes connections whose header does not come (silent, or sent
//!   slowly) within the deadline, and stays healthy and writable
//!   meanwhile (issue 14);
//! - the witness bounds unauthenticated connections as the replication
//!   port does, so silent hosts cannot starve the nodes of it (issue 14).

mod common;

use common::follower::authenticate;
use common::*;
use esc_wire::Message;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TCP connection to `to` from the local address `from` (any 127/8
/// address is local on Linux: each stands for another host).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((from, 0)).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// Waits (at most `limit`) for the peer to close `s`; returns how long it took.
fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// How long the peer took to close each of `conns` (each waited for on a
/// thread of its own, at most `limit`), in order; panics if one stays open.
fn close_times(conns: Vec<TcpStream>, limit: Duration) -> Vec<Duration> {
    let waits: Vec<_> = conns
        .into_iter()
        .map(|s| std::thread::spawn(move || time_to_close(s, limit)))
        .collect();
    let mut times: Vec<Duration> = waits
        .into_iter()
        .map(|w| {
            w.join()
                .unwrap()
                .expect("every silent connection is closed")
        })
        .collect();
    times.sort();
    times
}

/// Whether the peer closed `s` (non-blocking check).
fn is_closed(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 256];
    let mut r = s;
    match r.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

#[test]
fn silent_connections_cannot_keep_the_peer_out() {
    let mut a = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    let mut b = NodeSpec::new("esc-2", "127.0.0.2", "standby");
    a.peer = Some(b.repl);
    b.peer = Some(a.repl);
    let a = Node::start(a);
    wait_until(Duration::from_secs(10), "primary", || {
        a.status()["role"] == "primary"
    });
    let repl = a.spec.repl;

    // One host, six silent connections: two get a handshake slot (and lose
    // it at the hello deadline), the others are closed at once.
    let host = Ipv4Addr::new(127, 0, 0, 3);
    let conns: Vec<TcpStream> = (0..6).map(|_| connect_from(host, repl).unwrap()).collect();
    let times = close_times(conns, Duration::from_secs(4));
    assert!(
        times[3] < Duration::from_millis(700),
        "four of six are closed at once: {times:?}"
    );
    assert!(
        times[5] < Duration::from_secs(3),
        "the hello deadline ends the others: {times:?}"
    );
    wait_until(
        Duration::from_secs(5),
        "refusals and timeouts counted",
        || counter(&a, "handshakes_refused") >= 4 && counter(&a, "handshake_failures") >= 2,
    );

    // A flood of silent connections from four hosts, reopened as soon as
    // they are closed: without the per-host cap they would hold all 16
    // slots, and for 5 s each without the hello deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let attackers: Vec<_> = (3..7u8)
        .map(|h| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let from = Ipv4Addr::new(127, 0, 0, h);
                let mut held: Vec<Option<TcpStream>> = (0..6).map(|_| None).collect();
                let mut opened = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for slot in held.iter_mut() {
                        if slot.as_ref().is_none_or(is_closed) {
                            *slot = connect_from(from, repl).ok();
                            opened += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                opened
            })
        })
        .collect();
    let refused_before = counter(&a, "handshakes_refused");
    let _b = Node::start(b);
    wait_until(
        Duration::from_secs(20),
        "the standby syncs despite the flood",
        || {
            let s = a.status();
            s["role"] == "primary" && s["replication"]["peer"]["in_sync"] == true
        },
    );
    stop.store(true, Ordering::Relaxed);
    let opened: u64 = attackers.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(opened > 24, "the flood ran ({opened} connections)");
    assert!(
        counter(&a, "handshakes_refused") > refused_before,
        "the flood was refused and counted"
    );
}

/// The kernel's view of the TCP socket `local` -> `remote` (IPv4), while
/// it exists: its inode (0 once no process holds it: closed by the
/// application, the kernel still sending what was queued) and its receive
/// queue in bytes.
fn tcp_socket(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v.ip().octets()),
            v.port()
        ),
        SocketAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let inode = f.get(9).and_then(|i| i.parse().ok()).unwrap_or(0);
        let rx_queue = f
            .get(4)
            .and_then(|q| q.split(':').nth(1))
            .and_then(|q| u64::from_str_radix(q, 16).ok())
            .unwrap_or(0);
        Some((inode, rx_queue))
    })
}

#[test]
fn a_closed_link_is_closed_while_a_snapshot_streams_to_a_stuck_peer() {
    let mut spec = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    spec.peer = Some(free_addr("127.0.0.2"));
    spec.snapshot_every_entries = 10;
    spec.log_retain_entries = 2;
    let a = Node::start(spec);
    wait_until(Duration::from_secs(10), "primary", || {
        a.status()["role"] == "primary"
    });
    // A snapshot of ~21 MB: far more than the socket buffers of both ends hold.
    create_tenant(&a);
    let rt = rt();
    let c = client();
    let pad = "x".repeat(500_000);
    for i in 0..42 {
        let code = rt.block_on(async {
            c.post(a.url("/v0/deployments"))
                .basic_auth("admin", Some(PASSWORD))
                .json(&deployment(
                    &format!("d{i}"),
                    serde_json::json!({ "pad": pad }),
                ))
                .send()
                .await
                .unwrap()
                .status()
        });
        assert_eq!(code, 202);
    }
    wait_until(Duration::from_secs(10), "log compacted", || {
        a.status()["store"]["snapshot_index"].as_u64() > Some(0)
    });
    let repl = a.spec.repl;

    // A follower with an empty log gets the snapshot, and stops reading.
    let (mut stuck, mut mac) = authenticate(repl, SECRET, "esc-2");
    let stuck_addr = stuck.local_addr().unwrap();
    stuck
        .write_all(&esc_wire::encode(
            &Message::Status {
                epoch: 0,
                last_index: 0,
                last_epoch: 0,
                applied_index: 0,
            },
            Some(&mut mac),
        ))
        .unwrap();
    // Our receive window is full (it does not grow while we do not read):
    // the writer is stuck on us with most of the snapshot still to send.
    wait_until(Duration::from_secs(10), "the snapshot stream stuck", || {
        tcp_socket(stuck_addr, repl).is_some_and(|(_, rx)| rx > 100_000)
    });
    assert!(
        tcp_socket(repl, stuck_addr).is_some_and(|(inode, _)| inode != 0),
        "the primary holds the link"
    );

    // A new follower connection replaces it: the primary closes the old
    // link, and its socket is released within the drain bound, although
    // its writer is stuck on a full socket and the snapshot stream holds
    // a sender of its queue.
    let (_fresh, _) = authenticate(repl, SECRET, "esc-2");
    wait_until(
        Duration::from_secs(5),
        "the replaced link's socket is released",
        || tcp_socket(repl, stuck_addr).is_none_or(|(inode, _)| inode == 0),
    );
    assert!(a
        .log_text("escadm.log")
        .contains("replaced by a new follower connection"));
    assert_eq!(a.status()["role"], "primary");
    drop(stuck);
}

#[test]
fn an_unauthenticated_write_is_refused_before_its_body_is_read() {
    let a = Node::start(NodeSpec::new("esc-1", "127.0.0.1", "primary"));
    wait_until(Duration::from_secs(10), "primary", || {
        a.status()["role"] == "primary"
    });
    // A body announced and never sent: the answer cannot wait for it.
    let mut s = TcpStream::connect(a.spec.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(
        b"POST /v0/deployments HTTP/1.1\r\nHost: esc\r\nContent-Type: application/json\r\n\
          Content-Length: 500000\r\n\r\n{\"name\":",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
            Err(e) => panic!("no answer before the body ({e}): the body was awaited"),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("www-authenticate: basic"), "{head}");
    assert!(head.contains("esc-transaction-id:"), "{head}");

    // With credentials, bodies are read as before: the size bound holds
    // and a valid one is written.
    let rt = rt();
    // No pooled connections: the node may close one after refusing a body.
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let post = |body: String| {
        rt.block_on(async {
            c.post(a.url("/v0/deployments"))
                .basic_auth("admin", Some(PASSWORD))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    let big = format!(r#"{{"name":"big","pad":"{}"}}"#, "x".repeat(2 << 20));
    // The node answers 413 as soon as the declared length is over the
    // bound and may close before the client has sent it all: either is a
    // refusal.
    let big_status = rt.block_on(async {
        c.post(a.url("/v0/deployments"))
            .basic_auth("admin", Some(PASSWORD))
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert!(
        matches!(big_status, Ok(413)) || big_status.is_err(),
        "an oversized body must be refused: {big_status:?}"
    );

    // A body over the bound is refused once the bound is passed, in the
    // API's JSON error shape (not axum's plain text).
    {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
        let mut s = TcpStream::connect(a.spec.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "POST /v0/deployments HTTP/1.1\r\nHost: esc\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
        )
        .unwrap();
        // The body, from another thread: the node stops reading at the bound.
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..32 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut answer = Vec::new();
        let mut b = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains('}') {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&b[..n]),
            }
        }
        let answer = String::from_utf8_lossy(&answer).to_string();
        // Ends the writer's socket too (a clone of the same one).
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert!(v["error"].is_string(), "{answer}");
    }

    create_tenant(&a);
    assert_eq!(
        post(deployment("ok", serde_json::json!({})).to_string()),
        202
    );
    assert_eq!(post("not json".into()), 400);
    let unauth = rt.block_on(async {
        c.delete(a.url("/v0/deployments/ok"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(unauth, 401);
}

/// The `api_connections` counter `what` of node `n`.
fn api_conns(n: &Node, what: &str) -> u64 {
    n.status()["counters"]["api_connections"][what]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn idle_and_slow_connections_cannot_take_the_api_or_its_health() {
    let mut spec = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    spec.api_extra =
        "connections_max = 24\nconnections_per_source_max = 8\nheader_timeout_ms = 1000\n".into();
    let a = Node::start(spec);
    wait_until(Duration::from_secs(10), "primary", || {
        a.status()["role"] == "primary"
    });
    create_tenant(&a);
    let api = a.spec.api;

    // One host opens 40 silent connections: 8 are served (and closed at
    // the header deadline), the other 32 are closed at once.
    let host = Ipv4Addr::new(127, 0, 0, 3);
    let conns: Vec<TcpStream> = (0..40).map(|_| connect_from(host, api).unwrap()).collect();
    wait_until(
        Duration::from_secs(5),
        "32 refused for their source",
        || api_conns(&a, "refused_source") >= 32,
    );
    // Two more hosts fill the listener (8 each), the next one is refused
    // for want of room, not for its source.
    let more: Vec<TcpStream> = (4..6u8)
        .flat_map(|h| (0..8).map(move |_| connect_from(Ipv4Addr::new(127, 0, 0, h), api).unwrap()))
        .collect();
    // A slow header: the request line and one field, then nothing.
    let mut slow = connect_from(Ipv4Addr::new(127, 0, 0, 6), api).unwrap();
    slow.write_all(b"POST /v0/deployments HTTP/1.1\r\nHost: esc\r\n")
        .unwrap();
    wait_until(Duration::from_secs(5), "refused for want of room", || {
        api_conns(&a, "refused_full") >= 1
    });
    // Meanwhile the node is healthy: no API check fails, no FAULT.
    let h = a.admin(esc_proto::AdminRequest::Health);
    let code = h.value.as_ref().map(|v| v["status_code"].clone());
    assert_eq!(
        code,
        Some(serde_json::json!(2000)),
        "a full API is not a dead one: {h:?}"
    );
    assert_eq!(a.status()["role"], "primary");

    // The deadline frees every slot: silent ones and the slow header alike
    // (1 s deadline; 4 s allowed for a loaded machine).
    let closes: Vec<_> = conns
        .into_iter()
        .chain(more)
        .chain(std::iter::once(slow))
        .map(|s| std::thread::spawn(move || time_to_close(s, Duration::from_secs(4))))
        .collect();
    for c in closes {
        assert!(c.join().unwrap().is_some(), "every connection is closed");
    }
    wait_until(Duration::from_secs(5), "the deadlines counted", || {
        api_conns(&a, "header_timeouts") >= 16
    });

    // Once they are gone, writes are served again from every source.
    let rt = rt();
    let status = rt.block_on(async {
        client()
            .post(a.url("/v0/deployments"))
            .basic_auth("admin", Some(PASSWORD))
            .json(&deployment("after-flood", serde_json::json!({})))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    assert_eq!(status.ok(), Some(202));
    // Requests one after the other on a kept-alive connection.
    let c = client();
    for i in 0..3 {
        let r = rt.block_on(async {
            c.get(a.url("/v0/deployments"))
                .basic_auth("admin", Some(PASSWORD))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
        assert_eq!(r.ok(), Some(200), "request {i}");
    }
}

/// A running `escd --witness`, stopped (SIGKILL) when dropped.
struct WitnessProc {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for WitnessProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn silent_hosts_cannot_fill_the_witness() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr("127.0.0.1");
    std::fs::write(
        dir.path().join("esc.toml"),
        format!(
            "node_name = \"witness\"\n[replication]\nsecret = \"{SECRET}\"\n[witness]\nlisten = \"{listen}\"\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_escd"))
        .arg("--witness")
        .arg("--home")
        .arg(dir.path())
        .arg("--log-dir")
        .arg(dir.path().join("log"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn escd --witness");
    let _w = WitnessProc { child, _dir: dir };
    wait_until(Duration::from_secs(10), "the witness listens", || {
        TcpStream::connect(listen).is_ok()
    });
    // One host, ten silent connections: two get a handshake slot and lose
    // it at the hello deadline (1 s), the other eight are closed at once.
    let host = Ipv4Addr::new(127, 0, 0, 3);
    let conns: Vec<TcpStream> = (0..10)
        .map(|_| connect_from(host, listen).unwrap())
        .collect();
    let times = close_times(conns, Duration::from_secs(4));
    assert!(
        times[7] < Duration::from_millis(700),
        "eight of ten are closed at once: {times:?}"
    );
    assert!(
        times[9] < Duration::from_secs(3),
        "the hello deadline ends the others: {times:?}"
    );
    // Another host still gets a handshake slot meanwhile: its connection
    // stays open (waiting for its hello) past the at-once closes.
    let other = connect_from(Ipv4Addr::new(127, 0, 0, 4), listen).unwrap();
    let t = time_to_close(other, Duration::from_secs(4)).expect("closed at the deadline");
    assert!(t > Duration::from_millis(500), "held for its hello: {t:?}");
}
