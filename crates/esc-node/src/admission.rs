//! What one listener holds at once (issue 14): at most so many in all and
//! so many from one source address, each admitted one holding a [`Slot`]
//! that gives its place back when dropped. The northbound listeners count
//! their connections here (`northbound::conn`), the replication and
//! witness listeners their handshakes in progress (`net::HandshakeGate`):
//! a flood from one host takes its own share, never every place.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The places of one listener, in all and by source address.
#[derive(Debug)]
pub struct Admission {
    max: usize,
    per_source_max: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its maximum.
    Full,
    /// The source address holds its share.
    Source,
}

/// One admitted place, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    /// At most `max` places in all, `per_source_max` from one address.
    pub fn new(max: usize, per_source_max: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max,
            per_source_max,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for `source`, or why not.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, Refusal> {
        // An IPv4 client on a dual-stack socket is the same host as over IPv4.
        let source = source.to_canonical();
        let mut g = self.lock();
        if g.0 >= self.max {
            return Err(Refusal::Full);
        }
        let n = g.1.entry(source).or_insert(0);
        if *n >= self.per_source_max {
            return Err(Refusal::Source);
        }
        *n += 1;
        g.0 += 1;
        Ok(Slot {
            admission: self.clone(),
            source,
        })
    }

    /// Places held now.
    pub fn open(&self) -> usize {
        self.lock().0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.admission.lock();
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                // The map holds only sources with a place.
                g.1.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_in_all_and_per_source_and_given_back() {
        let a = Admission::new(3, 2);
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let s1 = a.admit(x).unwrap();
        let s2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::Source);
        let s3 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).unwrap_err(), Refusal::Full);
        assert_eq!(a.open(), 3);
        drop(s1);
        let s4 = a.admit(z).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::Full);
        drop((s2, s3, s4));
        assert_eq!(a.open(), 0);
        assert!(
            a.lock().1.is_empty(),
            "no source is remembered without a place"
        );
    }

    #[test]
    fn an_ipv4_peer_over_ipv6_is_the_same_source() {
        let a = Admission::new(10, 1);
        let _s = a.admit("192.0.2.1".parse().unwrap()).unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(a.admit(mapped).unwrap_err(), Refusal::Source);
    }
}
