//! `escadm ha set`: the seed's HA parameters (`--kad_vip`, `--kad_vif`,
//! `--ha_node_list`, and the installer-era `--kad_vri`,
//! `--kad_unicast_src_ip`, `--kad_unicast_peer`) turned into the
//! `[replication]` and `[vrrp]` sections of esc.toml. Pure: the caller
//! passes what it knows of the host (its addresses, its interfaces) and
//! writes the result; on any error nothing is changed.

use crate::{Config, VrrpConfig};
use std::net::{Ipv4Addr, SocketAddr};

/// Replication port on the `ha_node_list` addresses (architecture section 7).
pub const REPLICATION_PORT: u16 = 7789;
/// Default port of the witness.
pub const WITNESS_PORT: u16 = 7790;

/// The parsed options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HaSet {
    /// `IP`, `IP/prefix` or either followed by `:interface`.
    pub kad_vip: String,
    pub kad_vif: Option<String>,
    pub ha_node_list: Vec<String>,
    pub kad_vri: Option<u8>,
    pub kad_unicast_src_ip: Option<String>,
    pub kad_unicast_peer: Vec<String>,
    /// `IP` or `IP:port` of the witness (architecture section 4).
    pub witness: Option<String>,
}

fn ip(field: &str, s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("--{field}: {s:?} is not an IPv4 address"))
}

/// Applies `set` to `config`. `local` are this host's IPv4 addresses,
/// `iface_exists` says whether an interface exists. Returns what changed.
pub fn apply(
    config: &mut Config,
    set: &HaSet,
    local: &[Ipv4Addr],
    iface_exists: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    // --kad_vip: IP[/prefix][:interface]
    let (vip_part, vip_if) = match set.kad_vip.split_once(':') {
        Some((a, i)) => (a, Some(i.to_string())),
        None => (set.kad_vip.as_str(), None),
    };
    let (vip_ip, prefix) = match vip_part.split_once('/') {
        Some((a, p)) => (
            a,
            p.parse::<u8>()
                .map_err(|_| format!("--kad_vip: bad prefix {p:?}"))?,
        ),
        None => (vip_part, 24),
    };
    let vip = ip("kad_vip", vip_ip)?;
    let interface = set
        .kad_vif
        .clone()
        .or(vip_if)
        .ok_or("--kad_vif is required (or give the interface in --kad_vip=IP:IF)")?;
    if !iface_exists(&interface) {
        return Err(format!(
            "--kad_vif: no interface {interface:?} on this host (see `ip link`)"
        ));
    }
    let nodes: Vec<Ipv4Addr> = set
        .ha_node_list
        .iter()
        .flat_map(|s| {
            s.split(',')
                .filter(|x| !x.trim().is_empty())
                .map(str::to_string)
        })
        .map(|s| ip("ha_node_list", &s))
        .collect::<Result<_, _>>()?;
    if nodes.len() != 2 || nodes[0] == nodes[1] {
        return Err(format!(
            "--ha_node_list needs exactly two different node addresses, got {}",
            nodes.len()
        ));
    }
    let mine: Vec<Ipv4Addr> = nodes
        .iter()
        .copied()
        .filter(|n| local.contains(n))
        .collect();
    let [me] = mine[..] else {
        return Err(format!(
            "--ha_node_list must hold exactly one address of this host (this host has {}), and the peer's",
            local.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        ));
    };
    let peer = *nodes
        .iter()
        .find(|n| **n != me)
        .expect("two different nodes");
    if nodes.contains(&vip) || local.contains(&vip) {
        return Err(format!(
            "--kad_vip {vip} is a node address: the VIP must be a free address"
        ));
    }
    let unicast_src = set
        .kad_unicast_src_ip
        .as_deref()
        .map(|s| ip("kad_unicast_src_ip", s))
        .transpose()?;
    let unicast_peers: Vec<Ipv4Addr> = set
        .kad_unicast_peer
        .iter()
        .flat_map(|s| {
            s.split(',')
                .filter(|x| !x.trim().is_empty())
                .map(str::to_string)
        })
        .map(|s| ip("kad_unicast_peer", &s))
        .collect::<Result<_, _>>()?;
    let witness = match set.witness.as_deref().map(str::trim) {
        None | Some("") | Some("none") => None,
        Some(w) => Some(match w.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => SocketAddr::from((ip("witness", w)?, WITNESS_PORT)),
        }),
    };
    if let Some(w) = witness {
        if nodes.iter().any(|n| std::net::IpAddr::V4(*n) == w.ip())
            || w.ip() == std::net::IpAddr::V4(vip)
        {
            return Err(format!(
                "--witness {w} is a node address or the VIP: the witness runs on a third host"
            ));
        }
    }
    let previous = config.vrrp.clone();
    let mut v = VrrpConfig {
        interface: interface.clone(),
        vip: format!("{vip}/{prefix}"),
        vrid: set.kad_vri,
        unicast_src_ip: unicast_src,
        unicast_peers,
        ..previous.unwrap_or_else(VrrpConfig::defaults)
    };
    if set.kad_vri.is_none() {
        v.vrid = None; // default: the VIP's last byte, as the seed does
    }
    config.vrrp = Some(v);
    config.replication.listen = SocketAddr::from((me, REPLICATION_PORT));
    config.replication.peer = Some(SocketAddr::from((peer, REPLICATION_PORT)));
    let mut changed = vec![
        format!("vrrp: interface {interface}, VIP {vip}/{prefix}"),
        format!("replication: this node {me}:{REPLICATION_PORT}, peer {peer}:{REPLICATION_PORT}"),
    ];
    if set.witness.is_some() {
        config.witness.address = witness;
        changed.push(match witness {
            Some(w) => format!("witness: {w}"),
            None => "witness: none (two-node mode)".into(),
        });
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn base() -> Config {
        Config::parse("node_name = \"esc-1\"\n", Path::new("esc.toml")).unwrap()
    }

    fn set(vip: &str, nodes: &[&str]) -> HaSet {
        HaSet {
            kad_vip: vip.into(),
            kad_vif: Some("eth0".into()),
            ha_node_list: nodes.iter().map(|s| s.to_string()).collect(),
            ..HaSet::default()
        }
    }

    const LOCAL: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 11)];

    #[test]
    fn the_seeds_line_sets_replication_and_vrrp() {
        let mut c = base();
        apply(
            &mut c,
            &set("192.0.2.100", &["192.0.2.11", "192.0.2.12"]),
            &LOCAL,
            |_| true,
        )
        .unwrap();
        let v = c.vrrp.as_ref().unwrap();
        assert_eq!(
            (v.interface.as_str(), v.vip.as_str(), v.vrid()),
            ("eth0", "192.0.2.100/24", 100)
        );
        assert_eq!(c.replication.listen.to_string(), "192.0.2.11:7789");
        assert_eq!(c.replication.peer.unwrap().to_string(), "192.0.2.12:7789");
        assert_eq!(c.witness.address, None);
        let w = HaSet {
            witness: Some("192.0.2.13".into()),
            ..set("192.0.2.100", &["192.0.2.11", "192.0.2.12"])
        };
        apply(&mut c, &w, &LOCAL, |_| true).unwrap();
        assert_eq!(c.witness.address.unwrap().to_string(), "192.0.2.13:7790");
    }

    #[test]
    fn bad_arguments_are_refused_and_change_nothing() {
        let cases: [(HaSet, &str); 6] = [
            (set("192.0.2.100", &["192.0.2.11"]), "exactly two"),
            (
                set("192.0.2.100", &["192.0.2.13", "192.0.2.12"]),
                "one address of this host",
            ),
            (
                set("192.0.2.12", &["192.0.2.11", "192.0.2.12"]),
                "node address",
            ),
            (
                set("192.0.2.300", &["192.0.2.11", "192.0.2.12"]),
                "not an IPv4",
            ),
            (set("192.0.2.100", &["192.0.2.11", "x"]), "not an IPv4"),
            (
                HaSet {
                    witness: Some("192.0.2.12".into()),
                    ..set("192.0.2.100", &["192.0.2.11", "192.0.2.12"])
                },
                "third host",
            ),
        ];
        for (s, needle) in cases {
            let mut c = base();
            let before = c.clone();
            let err = apply(&mut c, &s, &LOCAL, |_| true).unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert_eq!(c, before);
        }
        let mut c = base();
        let err = apply(
            &mut c,
            &set("192.0.2.100", &["192.0.2.11", "192.0.2.12"]),
            &LOCAL,
            |_| false,
        )
        .unwrap_err();
        assert!(err.contains("--kad_vif"), "{err}");
    }
}
