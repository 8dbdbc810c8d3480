//! The VRRP speaker's I/O (RFC 5798): a raw IP socket for protocol 112
//! (multicast 224.0.0.18 on the configured interface, or unicast to
//! configured peers), the VIP added and removed through netlink, gratuitous
//! ARP, all driving the sans-IO [`esc_vrrp::fsm::Vrrp`].
//!
//! It runs on its own OS thread with its own single-threaded runtime
//! (architecture section 1: a saturated service must not delay
//! advertisements), and reports its state through a watch channel.
//!
//! ```text
//!   raw socket (proto 112) ──recv──> validate (7.1) ──Advert──┐
//!   deadline timer ─────────────────────────────────Tick──────┤
//!   shutdown ──────────────────────────────────────Shutdown───┤
//!                                                             v
//!                                                  esc_vrrp::fsm::Vrrp
//!                                                             │ actions
//!           SendAdvert ─> raw socket    AddVip/RemoveVip ─> netlink
//!           AnnounceVip ─> AF_PACKET gratuitous ARP (sys.rs)
//! ```

use crate::logging::HA;
use esc_config::VrrpConfig;
use esc_proto::status::VrrpStatus;
use esc_vrrp::fsm::{Action, Config as FsmConfig, Input, State, Vrrp};
use esc_vrrp::packet::{self, Packet, Version};
use futures::TryStreamExt;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The VRRP multicast group (RFC 5798 section 5.1.1.2).
pub const VRRP_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IP protocol number of VRRP (RFC 5798 section 5.1.1.4).
pub const VRRP_PROTO: i32 = 112;
/// Largest datagram read (IP header + VRRP with the most addresses).
pub(crate) const RECV_BYTES_MAX: usize = 2048;

/// A gratuitous ARP more than this late is not sent (the process was
/// stalled; see `Speaker::announce`).
const GARP_LATE_MAX: Duration = Duration::from_millis(200);

/// The VRRP speaker: the sans-IO state machine plus its socket, the VIP
/// and gratuitous ARP. Driven by the HA agent (`agent.rs`) on its thread.
pub(crate) struct Speaker {
    cfg: VrrpConfig,
    fsm: Vrrp,
    /// The raw socket, driven through tokio's UDP type: recvfrom and sendto
    /// are the same system calls, and it needs no unsafe registration.
    sock: tokio::net::UdpSocket,
    src: Ipv4Addr,
    vip: (Ipv4Addr, u8),
    ifindex: u32,
    mac: [u8; 6],
    netlink: rtnetlink::Handle,
    start: Instant,
    dropped: u64,
    /// Standalone node (no replication peer): the VIP follows the VRRP
    /// election, as keepalived does. In a pair the role authority moves it.
    vip_follows_vrrp: bool,
    /// Priority of the last advert heard from the current master.
    master_priority: Option<u8>,
    /// Adverts heard with the primary's priority (another node claims the
    /// primary role: two-node mode's contest, see esc-authority).
    primary_adverts: u64,
    /// Bumped at every announcement and every removal of the VIP: a
    /// delayed gratuitous ARP goes out only if nothing changed since.
    vip_gen: Arc<AtomicU64>,
    /// Removes the VIP when this process is gone ([`super::vip_guard`]).
    guard: Option<super::vip_guard::Guard>,
}

/// Checks at start-up that VRRP can run here (interface, raw socket).
pub(crate) fn preflight(cfg: &VrrpConfig) -> crate::Result<()> {
    cfg.check_host().map_err(|(f, m)| crate::Error::Invalid {
        field: f.to_string(),
        message: m,
    })?;
    // Fail at start, not later on the agent's thread: without a raw
    // socket the node would run without VRRP (half-configured).
    Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(VRRP_PROTO)))
        .map_err(crate::Error::RawSocket)?;
    Ok(())
}

impl Speaker {
    /// Opens the socket and netlink handle; removes a VIP a crash left.
    /// Call on the agent's runtime.
    pub(crate) async fn open(
        cfg: VrrpConfig,
        vip_follows_vrrp: bool,
        start: Instant,
    ) -> crate::Result<Speaker> {
        let (ifindex, mac) = super::sys::interface(&cfg.interface)
            .map_err(|e| crate::Error::io(format!("interface {}", cfg.interface), e))?;
        let vip = cfg.vip_net().map_err(|message| crate::Error::Invalid {
            field: "vrrp.vip".into(),
            message,
        })?;
        let (conn, netlink, _) =
            rtnetlink::new_connection().map_err(|e| crate::Error::io("netlink", e))?;
        tokio::spawn(conn);
        let src = match cfg.unicast_src_ip {
            Some(ip) => ip,
            None => primary_address(&netlink, ifindex, vip.0)
                .await?
                .ok_or_else(|| crate::Error::NoAddress(cfg.interface.clone()))?,
        };
        let sock = open_socket(&cfg, ifindex, src)?;
        let fsm = Vrrp::new(FsmConfig {
            vrid: cfg.vrid(),
            priority: cfg.priority,
            adver_int_cs: cfg.advert_interval_cs(),
            preempt: cfg.preempt,
            primary_ip: src,
        });
        let sp = Speaker {
            cfg,
            fsm,
            sock: tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock))?,
            src,
            vip,
            ifindex,
            mac,
            netlink,
            start,
            dropped: 0,
            vip_follows_vrrp,
            master_priority: None,
            primary_adverts: 0,
            vip_gen: Arc::new(AtomicU64::new(0)),
            guard: None,
        };
        // A VIP left behind by a crash is not ours until we are master again.
        if sp.remove_vip().await? {
            warn!(target: HA, vip = %sp.cfg.vip, "removed a stale VIP left by an earlier run");
        }
        let mut sp = sp;
        sp.guard = super::vip_guard::Guard::start(&sp.cfg.interface, sp.vip.0);
        info!(target: HA, interface = %sp.cfg.interface, vrid = sp.cfg.vrid(), priority = sp.cfg.priority,
              version = sp.cfg.version, src = %src, "VRRP speaker starting");
        Ok(sp)
    }

    /// When the state machine next needs a `Tick`.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.fsm
            .next_deadline_ms()
            .map(|d| self.start + Duration::from_millis(d))
    }

    /// Receives one datagram and turns it into an input (None: dropped).
    pub(crate) async fn recv(&mut self, buf: &mut [u8]) -> Option<Input> {
        match self.sock.recv(buf).await {
            Ok(n) => self.validate(&buf[..n]),
            Err(e) => {
                warn!(target: HA, "VRRP receive: {e}");
                None
            }
        }
    }

    /// What the role authority sees.
    pub(crate) fn view(&self) -> esc_authority::VrrpView {
        use esc_authority::authority::VrrpState;
        esc_authority::VrrpView {
            state: match self.fsm.state() {
                State::Initialize => VrrpState::Initialize,
                State::Backup => VrrpState::Backup,
                State::Master => VrrpState::Master,
            },
            master_priority: if self.fsm.state() == State::Backup {
                self.master_priority
            } else {
                None
            },
            primary_adverts: self.primary_adverts,
        }
    }

    /// Adds (and announces) or removes the VIP, on the role authority's word.
    pub(crate) async fn set_vip(&mut self, on: bool) {
        let r = if on {
            let r = self.add_vip().await;
            if r.is_ok() {
                self.announce();
            }
            r
        } else {
            self.remove_vip().await.map(|_| ())
        };
        if let Err(e) = r {
            warn!(target: HA, vip = %self.cfg.vip, on, "cannot change the VIP: {e}");
        }
    }
}

/// The interface's first IPv4 address other than the VIP.
async fn primary_address(
    h: &rtnetlink::Handle,
    ifindex: u32,
    vip: Ipv4Addr,
) -> crate::Result<Option<Ipv4Addr>> {
    use netlink_packet_route::address::AddressAttribute;
    let mut addrs = h.address().get().set_link_index_filter(ifindex).execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                if *ip != vip {
                    return Ok(Some(*ip));
                }
            }
        }
    }
    Ok(None)
}

fn open_socket(cfg: &VrrpConfig, ifindex: u32, src: Ipv4Addr) -> crate::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(VRRP_PROTO)))
        .map_err(crate::Error::RawSocket)?;
    s.bind_device(Some(cfg.interface.as_bytes()))?;
    // RFC 5798 section 5.1.1.3: TTL 255, so a receiver can tell the packet
    // did not cross a router.
    s.set_ttl_v4(255)?;
    s.set_multicast_ttl_v4(255)?;
    s.set_multicast_loop_v4(false)?;
    s.set_multicast_if_v4(&src)?;
    if cfg.unicast_peers.is_empty() {
        s.join_multicast_v4_n(
            &VRRP_GROUP,
            &socket2::InterfaceIndexOrAddress::Index(ifindex),
        )?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

impl Speaker {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn version(&self) -> Version {
        if self.cfg.version == 2 {
            Version::V2
        } else {
            Version::V3
        }
    }

    pub(crate) fn status(&self) -> VrrpStatus {
        let st = self.fsm.stats();
        VrrpStatus {
            state: format!("{:?}", self.fsm.state()),
            vrid: self.cfg.vrid(),
            priority: self.fsm.priority(),
            version: self.cfg.version,
            vip: self.cfg.vip.clone(),
            interface: self.cfg.interface.clone(),
            master: self.fsm.master_ip(),
            adverts_received: st.adverts_received,
            adverts_sent: st.adverts_sent,
            dropped: self.dropped,
        }
    }

    fn drop_packet(&mut self, from: Ipv4Addr, why: &str) -> Option<Input> {
        self.dropped += 1;
        // Logged at debug only: a hostile sender must not flood the log.
        tracing::debug!(target: HA, %from, why, "VRRP packet dropped");
        None
    }

    /// RFC 5798 section 7.1: checks before the state machine sees a packet.
    fn validate(&mut self, datagram: &[u8]) -> Option<Input> {
        if datagram.len() < 20 || datagram[0] >> 4 != 4 {
            return self.drop_packet(Ipv4Addr::UNSPECIFIED, "not IPv4");
        }
        let ihl = usize::from(datagram[0] & 0x0f) * 4;
        if ihl < 20 || datagram.len() < ihl {
            return self.drop_packet(Ipv4Addr::UNSPECIFIED, "bad IP header length");
        }
        let ttl = datagram[8];
        let src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
        let dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
        if src == self.src {
            return None; // our own advert, looped back
        }
        if ttl != 255 {
            return self.drop_packet(src, "TTL is not 255");
        }
        if !self.cfg.unicast_peers.is_empty() && !self.cfg.unicast_peers.contains(&src) {
            return self.drop_packet(src, "not a configured unicast peer");
        }
        let p = match packet::decode(&datagram[ihl..], src, dst) {
            Ok(p) => p,
            Err(e) => return self.drop_packet(src, e.reason()),
        };
        if p.version != self.version() {
            return self.drop_packet(src, "other VRRP version");
        }
        if p.vrid != self.cfg.vrid() {
            return self.drop_packet(src, "other VRID");
        }
        if !p.addresses.contains(&self.vip.0) {
            // RFC 5798 7.1: a mismatched address list is logged, the packet still counts.
            tracing::debug!(target: HA, %src, "advert's address list does not hold our VIP");
        }
        // Recorded whatever our state: a master that turns Backup on this
        // advert must know the new master's priority.
        self.master_priority = Some(p.priority);
        if p.priority == esc_authority::authority::PRIMARY_PRIORITY {
            self.primary_adverts += 1;
        }
        Some(Input::Advert {
            src,
            priority: p.priority,
            adver_int_cs: p.adver_int_cs,
        })
    }

    /// Feeds the state machine; true when its state changed.
    pub(crate) async fn input(&mut self, input: Input) -> bool {
        let now = self.now_ms();
        let actions = self.fsm.handle(now, input);
        let mut changed = false;
        for a in actions {
            match a {
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::AddVip if self.vip_follows_vrrp => {
                    if let Err(e) = self.add_vip().await {
                        warn!(target: HA, vip = %self.cfg.vip, "cannot add the VIP: {e}");
                    }
                }
                Action::RemoveVip if self.vip_follows_vrrp => {
                    if let Err(e) = self.remove_vip().await {
                        warn!(target: HA, vip = %self.cfg.vip, "cannot remove the VIP: {e}");
                    }
                }
                Action::AnnounceVip if self.vip_follows_vrrp => self.announce(),
                // In a pair the role authority moves the VIP (architecture 2).
                Action::AddVip | Action::RemoveVip | Action::AnnounceVip => {}
                Action::StateChanged { from, to, reason } => {
                    changed = true;
                    if to != State::Backup {
                        self.master_priority = None;
                    }
                    info!(target: HA, ?from, ?to, %reason, vip = %self.cfg.vip, "VRRP state change");
                }
            }
        }
        changed
    }

    fn send_advert(&mut self, priority: u8) {
        let p = Packet {
            version: self.version(),
            vrid: self.cfg.vrid(),
            priority,
            adver_int_cs: self.cfg.advert_interval_cs(),
            addresses: vec![self.vip.0],
        };
        let targets: Vec<Ipv4Addr> = if self.cfg.unicast_peers.is_empty() {
            vec![VRRP_GROUP]
        } else {
            self.cfg.unicast_peers.clone()
        };
        for dst in targets {
            let bytes = packet::encode(&p, self.src, dst);
            let to = SocketAddrV4::new(dst, 0);
            if let Err(e) = self.sock.try_send_to(&bytes, to.into()) {
                warn!(target: HA, %dst, "VRRP send: {e}");
            }
        }
    }

    pub(crate) async fn add_vip(&mut self) -> crate::Result<()> {
        if let Some(g) = self.guard.as_mut() {
            g.ensure();
        }
        match self
            .netlink
            .address()
            .add(self.ifindex, IpAddr::V4(self.vip.0), self.vip.1)
            .execute()
            .await
        {
            Ok(()) => {
                info!(target: HA, vip = %self.cfg.vip, interface = %self.cfg.interface, "VIP added");
                Ok(())
            }
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps the VIP but cancels every gratuitous ARP still to be sent for it.
    pub(crate) fn quiet(&self) {
        self.vip_gen.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes the VIP if present; says whether it was.
    pub(crate) async fn remove_vip(&self) -> crate::Result<bool> {
        self.quiet();
        let removed =
            super::vip_guard::remove_address(&self.netlink, self.ifindex, self.vip.0).await?;
        if removed {
            info!(target: HA, vip = %self.cfg.vip, "VIP removed");
        }
        Ok(removed)
    }

    /// Gratuitous ARPs, `garp_count` of them `garp_interval_ms` apart, and
    /// the same burst again `garp_repeat_ms` later while this node still
    /// holds the VIP. Why the second burst: Linux ignores a new link-layer
    /// address for a neighbour updated less than `locktime` ago (1 s by
    /// default), so a client or router that saw the VIP move less than a
    /// second before would keep sending to the old holder until its entry
    /// expires, seconds later (the lab's chaos runs saw 2 to 5 s).
    /// keepalived's `garp_master_delay` (5 s) is the same remedy.
    fn announce(&self) {
        let (ifindex, frame) = (self.ifindex, super::sys::garp_frame(self.mac, self.vip.0));
        let (count, gap, repeat) = (
            self.cfg.garp_count,
            Duration::from_millis(self.cfg.garp_interval_ms),
            Duration::from_millis(self.cfg.garp_repeat_ms),
        );
        let gen = self.vip_gen.clone();
        let mine = gen.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for burst in 0..2u32 {
                if burst == 1 && repeat.is_zero() {
                    return;
                }
                for i in 0..count {
                    let due = start + repeat * burst + gap * i;
                    tokio::time::sleep_until(due).await;
                    // Never announce a VIP this node gave up meanwhile, nor
                    // after a stall (SIGSTOP, a hung VM): a frame sent late
                    // may come after a takeover the agent has not yet
                    // noticed, and would pull clients to this node.
                    if gen.load(Ordering::SeqCst) != mine
                        || tokio::time::Instant::now() > due + GARP_LATE_MAX
                    {
                        return;
                    }
                    if let Err(e) = super::sys::send_frame(ifindex, &frame) {
                        warn!(target: HA, "gratuitous ARP: {e}");
                        return;
                    }
                }
            }
        });
    }
}
