//! One of the two places with `unsafe` (the other: esc-vim's death signal
//! for its VNF children): sending a raw Ethernet frame (gratuitous
//! ARP) through an `AF_PACKET` socket, which needs a `sockaddr_ll` that no
//! safe wrapper builds (socket2 and nix only take it from raw memory), and
//! the HA agent thread's real-time scheduling (nix has no
//! `sched_setscheduler`).
//! Everything else about the interface is read from `/sys/class/net`.

#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;

/// The interface's index and MAC address, from sysfs.
pub fn interface(name: &str) -> io::Result<(u32, [u8; 6])> {
    let base = std::path::Path::new("/sys/class/net").join(name);
    let index: u32 = std::fs::read_to_string(base.join("ifindex"))?
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("ifindex: {e}")))?;
    let text = std::fs::read_to_string(base.join("address"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.trim().split(':').collect();
    if parts.len() != 6 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "MAC address"));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("MAC: {e}")))?;
    }
    Ok((index, mac))
}

/// A gratuitous ARP request for `ip` from `mac` (RFC 5227 section 3 / RFC
/// 5798 section 6.4.1: "broadcast a gratuitous ARP request").
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // destination: broadcast
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac); // sender MAC
    f[28..32].copy_from_slice(&ip.octets()); // sender IP = VIP
                                             // target MAC zero, target IP = VIP
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one frame on interface `ifindex` to the Ethernet broadcast address.
pub fn send_frame(ifindex: u32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked and
    // owned by `OwnedFd`, which closes it.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ARP.to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: `frame` and `addr` are valid for the lengths given, for the
    // duration of the call; the kernel copies them.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the calling thread under `SCHED_RR` at `priority` (1..=99), with
/// `SCHED_RESET_ON_FORK`: threads and processes it starts (the runtime's
/// blocking pool, the VIP guard) run at normal priority (sched(7)).
/// keepalived's `vrrp_rt_priority` does the same for its VRRP process.
pub fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    let r =
        unsafe { libc::sched_setscheduler(0, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_runs_at_real_time_priority_where_allowed() {
        std::thread::spawn(|| match set_realtime(1) {
            Ok(()) => {
                // SAFETY: no arguments but the calling thread.
                let policy = unsafe { libc::sched_getscheduler(0) };
                assert_eq!(policy & !libc::SCHED_RESET_ON_FORK, libc::SCHED_RR);
                assert!(policy & libc::SCHED_RESET_ON_FORK != 0);
            }
            // Not root and no RLIMIT_RTPRIO: the daemon warns and goes on.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}"),
        })
        .join()
        .unwrap();
    }

    #[test]
    fn garp_frame_layout() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[192, 0, 2, 100]);
        assert_eq!(&f[38..42], &[192, 0, 2, 100]);
    }

    #[test]
    fn loopback_interface_is_found() {
        let (index, _) = interface("lo").unwrap();
        assert!(index >= 1);
    }
}
