//! The monitor's probes (issue 12, item 1): ICMP echo over one raw socket
//! shared by every probe (not a process per ping), TCP connect and HTTP
//! GET, each bounded by its deadline; and the rules' scripts, run without
//! a shell and killed at their timeout.
//!
//! ICMP (RFC 792): an echo request carries this node's identifier and a
//! sequence number; one receive task matches replies (type 0, our
//! identifier, the probed address) to the probe waiting on that sequence
//! number. A reply that matches nothing (late, foreign) is counted and
//! dropped; a malformed packet too.

use esc_monitor::Target;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Largest HTTP body a probe reads (a metrics document).
const BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest ICMP packet read (IP header + ICMP).
const PACKET_BYTES_MAX: usize = 1_500;

/// Replies waiting, by sequence number: the address they must come from.
type Waiting = HashMap<u16, (Ipv4Addr, oneshot::Sender<()>)>;

/// One ICMP socket for every ping.
pub struct Pinger {
    /// The ICMP socket, driven as a datagram socket (`recvfrom` and
    /// `sendto` are the same calls for it).
    sock: tokio::net::UdpSocket,
    /// A raw socket sees the IP header (a datagram "ping" socket does not).
    raw: bool,
    ident: u16,
    seq: AtomicU16,
    waiting: Mutex<Waiting>,
    /// Replies and packets that matched nothing, or did not parse.
    pub stray: AtomicU64,
}

impl Pinger {
    /// A raw ICMP socket (root, or CAP_NET_RAW), else an unprivileged
    /// ping socket (`net.ipv4.ping_group_range`); its receive task runs
    /// until the pinger is dropped.
    pub fn open() -> std::io::Result<Arc<Pinger>> {
        let (sock, raw) = match Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)) {
            Ok(s) => (s, true),
            Err(_) => (
                Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4))?,
                false,
            ),
        };
        sock.set_nonblocking(true)?;
        let _ = sock.set_recv_buffer_size(4 << 20);
        let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock))?;
        let p = Arc::new(Pinger {
            sock,
            raw,
            ident: (std::process::id() & 0xffff) as u16,
            seq: AtomicU16::new(rand::random()),
            waiting: Mutex::new(HashMap::new()),
            stray: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&p);
        tokio::spawn(async move {
            while let Some(p) = weak.upgrade() {
                // Wakes for each readable burst; gives the pinger back
                // between bursts so a drop ends the task.
                if tokio::time::timeout(Duration::from_secs(1), p.receive())
                    .await
                    .is_err()
                {
                    continue;
                }
            }
        });
        info!(raw, "ICMP prober ready");
        Ok(p)
    }

    /// Reads one packet.
    async fn receive(&self) {
        let mut buf = [0u8; PACKET_BYTES_MAX];
        if let Ok((n, from)) = self.sock.recv_from(&mut buf).await {
            let from = match from {
                std::net::SocketAddr::V4(a) => Some(*a.ip()),
                std::net::SocketAddr::V6(_) => None,
            };
            self.on_packet(&buf[..n], from);
        }
    }

    fn on_packet(&self, bytes: &[u8], from: Option<Ipv4Addr>) {
        let icmp = if self.raw {
            // The IPv4 header first (RFC 791: IHL in 32-bit words).
            match bytes.first().map(|b| usize::from(b & 0x0f) * 4) {
                Some(ihl) if ihl >= 20 && bytes.len() >= ihl + 8 => &bytes[ihl..],
                _ => {
                    self.stray.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        } else {
            bytes
        };
        if icmp.len() < 8 || icmp[0] != 0 {
            // Not an echo reply (a raw socket sees every ICMP message).
            return;
        }
        let ident = u16::from_be_bytes([icmp[4], icmp[5]]);
        let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
        // A ping socket rewrites the identifier to its own port.
        if self.raw && ident != self.ident {
            return;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.get(&seq) {
            Some((addr, _)) if Some(*addr) == from => {
                if let Some((_, tx)) = waiting.remove(&seq) {
                    let _ = tx.send(());
                }
            }
            _ => {
                self.stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `count` echo requests to `addr`; the replies received by `deadline`.
    pub async fn ping(&self, addr: Ipv4Addr, count: u32, deadline: tokio::time::Instant) -> u32 {
        let mut replies = Vec::new();
        for _ in 0..count {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(seq, (addr, tx));
            let packet = echo_request(self.ident, seq);
            let to = SocketAddrV4::new(addr, 0);
            let sent = tokio::time::timeout_at(deadline, self.sock.send_to(&packet, to)).await;
            if !matches!(sent, Ok(Ok(_))) {
                self.forget(seq);
                continue;
            }
            replies.push((seq, rx));
        }
        let mut got = 0;
        for (seq, rx) in replies {
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => got += 1,
                _ => self.forget(seq),
            }
        }
        got
    }

    fn forget(&self, seq: u16) {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
    }
}

/// An ICMP echo request (RFC 792): type 8, code 0, checksum, identifier,
/// sequence number, and 8 bytes of data.
fn echo_request(ident: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"esc-mona");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Runs one probe to its value (none: no sample).
pub async fn run(
    pinger: Option<&Pinger>,
    http: &reqwest::Client,
    target: &Target,
    deadline: tokio::time::Instant,
) -> Option<f64> {
    match target {
        Target::Icmp { addr, count } => {
            let addr: Ipv4Addr = addr.parse().ok()?;
            let p = pinger?;
            Some(f64::from(p.ping(addr, *count, deadline).await))
        }
        Target::Tcp { addr, port } => {
            let to = format!("{addr}:{port}");
            let ok = matches!(
                tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(to)).await,
                Ok(Ok(_))
            );
            Some(if ok { 1.0 } else { 0.0 })
        }
        Target::Http {
            addr,
            port,
            path,
            status,
            metric,
        } => {
            let url = format!("http://{addr}:{port}{path}");
            let get = async {
                let r = http.get(&url).send().await.ok()?;
                let code = r.status().as_u16();
                let body = read_capped(r).await?;
                Some((code, body))
            };
            let answer = tokio::time::timeout_at(deadline, get).await.ok().flatten();
            match metric {
                None => Some(match answer {
                    Some((code, _)) if code == *status => 1.0,
                    _ => 0.0,
                }),
                Some(m) => {
                    let (code, body) = answer?;
                    if code != *status {
                        return None;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                    m.split('.').try_fold(&v, |v, k| v.get(k))?.as_f64()
                }
            }
        }
    }
}

async fn read_capped(mut r: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = r.chunk().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > BODY_BYTES_MAX {
            return None;
        }
    }
    Some(body)
}

/// A rule's script: `path args...` without a shell, with the VM and the
/// event in its environment (`ESC_VM`, `ESC_EVENT`), killed at `timeout`.
pub async fn script(path: &str, args: &[String], vm: &str, event: &str, timeout: Duration) {
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(args)
        .env("ESC_VM", vm)
        .env("ESC_EVENT", event)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            warn!(%path, %vm, %event, "script did not start: {e}");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => info!(%path, %vm, %event, %status, "script ran"),
        Ok(Err(e)) => warn!(%path, %vm, %event, "script: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            warn!(%path, %vm, %event, ?timeout, "script killed at its timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "RFC 1071: the sum over a checked packet");
        assert_eq!((p[0], &p[4..8]), (8, &[0x12, 0x34, 0, 7][..]));
    }

    #[tokio::test]
    async fn loopback_answers_pings_and_a_closed_port_refuses() {
        let Ok(p) = Pinger::open() else {
            eprintln!("no ICMP socket here (neither raw nor ping): skipped");
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        assert_eq!(p.ping(Ipv4Addr::LOCALHOST, 3, deadline).await, 3);
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let http = reqwest::Client::new();
        let t = Target::Tcp {
            addr: "127.0.0.1".into(),
            port,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        assert_eq!(run(Some(&p), &http, &t, deadline).await, Some(0.0));
    }
}
