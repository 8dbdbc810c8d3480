//! Issue 2, "Done when": a peer with a wrong secret, a corrupted frame and a
//! truncated frame (and other malformed input) are refused, counted and
//! logged; nothing is applied; the daemon keeps running and serving.

mod common;

use common::follower::authenticate;
use common::*;
use esc_wire::{FrameSeal, Message, HEADER_LEN};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The peer closes the connection: a read returns EOF or an error.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue, // e.g. a heartbeat already in flight
        }
    }
}

fn status_frame(mac: &mut FrameSeal) -> Vec<u8> {
    esc_wire::encode(
        &Message::Status {
            epoch: 99,
            last_index: 1_000_000,
            last_epoch: 99,
            applied_index: 1_000_000,
        },
        Some(mac),
    )
}

#[test]
fn wrong_secret_corrupt_and_truncated_frames_are_refused_and_counted() {
    let mut spec = NodeSpec::new("esc-1", "127.0.0.1", "primary");
    spec.peer = Some(free_addr("127.0.0.2"));
    let mut a = Node::start(spec);
    wait_until(Duration::from_secs(10), "primary", || {
        a.status()["role"] == "primary"
    });
    create_tenant(&a);
    let rt = rt();
    let c = client();
    let url = a.url("/v0/deployments");
    let write = |name: &str| {
        rt.block_on(async {
            c.post(&url)
                .basic_auth("admin", Some(PASSWORD))
                .json(&deployment(name, serde_json::json!({})))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert_eq!(write("before"), 202);
    let before = digest(&a);
    let epoch_before = a.status()["epoch"].clone();
    let repl = a.spec.repl;

    // 1. A real escd with the wrong secret: refused at both ends, logged.
    let mut intruder = NodeSpec::new("intruder", "127.0.0.3", "standby");
    intruder.peer = Some(repl);
    intruder.secret = "a-completely-different-secret-0123456789".into();
    let intruder = Node::start(intruder);
    wait_until(Duration::from_secs(10), "auth failure counted", || {
        counter(&a, "auth_failures") >= 1
    });
    assert!(a
        .log_text("escadm.log")
        .contains("did not prove the shared secret"));
    wait_until(
        Duration::from_secs(10),
        "intruder sees the failure too",
        || counter(&intruder, "auth_failures") >= 1,
    );
    assert_eq!(
        intruder.status()["state"]["applied_index"],
        0,
        "intruder got no data"
    );
    drop(intruder);

    // 2. A corrupted frame after a valid handshake: checksum.
    let (mut s, mut mac) = authenticate(repl, SECRET, "prober");
    let mut f = status_frame(&mut mac);
    let mid = HEADER_LEN + 3;
    f[mid] ^= 0x40;
    s.write_all(&f).unwrap();
    assert!(closed_by_peer(&mut s));
    wait_until(Duration::from_secs(5), "checksum drop counted", || {
        counter(&a, "frames_checksum") >= 1
    });

    // 3. A truncated frame: half of it, then the connection ends.
    let (mut s, mut mac) = authenticate(repl, SECRET, "prober");
    let f = status_frame(&mut mac);
    s.write_all(&f[..f.len() / 2]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_peer(&mut s));
    wait_until(Duration::from_secs(5), "truncation counted", || {
        counter(&a, "frames_truncated") >= 1
    });

    // 4. A frame with a valid checksum but a forged seal.
    let (mut s, _) = authenticate(repl, SECRET, "prober");
    let f = status_frame(&mut FrameSeal::new([9; 32]));
    s.write_all(&f).unwrap();
    assert!(closed_by_peer(&mut s));
    wait_until(Duration::from_secs(5), "bad seal counted", || {
        counter(&a, "frames_mac") >= 1
    });

    // 5. Garbage before any handshake, and an absurd length.
    let mut s = TcpStream::connect(repl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_peer(&mut s));
    let mut s = TcpStream::connect(repl).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[
        b'E',
        b'S',
        esc_wire::frame::VERSION,
        0,
        0xff,
        0xff,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ])
    .unwrap();
    assert!(closed_by_peer(&mut s));
    wait_until(
        Duration::from_secs(5),
        "bad header and oversize counted",
        || counter(&a, "frames_bad_header") >= 1 && counter(&a, "frames_too_large") >= 1,
    );

    // Nothing was applied, the node runs and still serves writes.
    assert_eq!(digest(&a), before, "hostile input changed the state");
    assert!(a.is_running());
    assert_eq!(a.status()["role"], "primary");
    assert_eq!(
        a.status()["epoch"],
        epoch_before,
        "a forged higher epoch was not taken"
    );
    assert_eq!(write("after"), 202);
    assert!(a
        .log_text("escadm.log")
        .contains("dropping replication link"));
}
