//! The VIM's state and rules, without I/O: time is an argument, ids come
//! from the caller, so a test drives it exactly.
//!
//! Servers follow Nova's states (Compute API reference, "Server status"):
//! `BUILD` until `build_ms` have passed since creation, then `ACTIVE`;
//! `REBOOT`/`HARD_REBOOT` for `reboot_ms`, then `ACTIVE`; `os-stop` makes
//! it `SHUTOFF`, `os-start` `ACTIVE` again. Capacity is accounted as Nova's
//! scheduler does: a server whose flavor does not fit the free vCPUs or RAM
//! is created in `ERROR` with the fault "No valid host was found".

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Image {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub id: String,
    pub name: String,
    /// Its range (`203.0.113.0/24`); servers get addresses from .10 up,
    /// short of the broadcast address.
    pub cidr: String,
    #[serde(skip)]
    base: u32,
    #[serde(skip)]
    size: u32,
}

impl Network {
    /// The offset of `ip` in this network, if it is a host address in it.
    fn offset(&self, ip: &str) -> Option<u32> {
        let a: std::net::Ipv4Addr = ip.parse().ok()?;
        let off = u32::from(a).checked_sub(self.base)?;
        (FIRST_HOST..self.size - 1).contains(&off).then_some(off)
    }

    fn address(&self, offset: u32) -> String {
        std::net::Ipv4Addr::from(self.base + offset).to_string()
    }
}

/// Addresses below this offset are the network's own (gateway, services).
const FIRST_HOST: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub id: String,
    pub network_id: String,
    pub ip: String,
    pub device_id: String,
    pub mac: String,
}

/// Nova's server status words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Build,
    Active,
    Reboot,
    HardReboot,
    Shutoff,
    Error,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Build => "BUILD",
            Status::Active => "ACTIVE",
            Status::Reboot => "REBOOT",
            Status::HardReboot => "HARD_REBOOT",
            Status::Shutoff => "SHUTOFF",
            Status::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub flavor_id: String,
    pub metadata: BTreeMap<String, String>,
    pub user_data: Option<String>,
    /// Ports, by network.
    pub ports: Vec<Port>,
    pub status: Status,
    /// Why it is in ERROR.
    pub fault: Option<String>,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Until when the current transition (build, reboot) lasts.
    busy_until_ms: u64,
    /// It holds capacity (not in ERROR).
    placed: bool,
    /// Its runtime is set up (always, for light servers).
    ready: bool,
}

/// What the VIM can host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: u32,
    pub ram_mb: u64,
    /// How long a new server stays in BUILD.
    pub build_ms: u64,
    /// How long a reboot lasts.
    pub reboot_ms: u64,
}

impl Default for Capacity {
    fn default() -> Capacity {
        Capacity {
            vcpus: 512,
            ram_mb: 1 << 20,
            build_ms: 200,
            reboot_ms: 200,
        }
    }
}

/// A request the VIM refuses, with the HTTP status Nova, Glance or Neutron
/// gives it (the API layer maps it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VimError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
}

/// Where a network's addresses are, and which hosts are taken.
#[derive(Debug, Default)]
struct Pool {
    used: std::collections::BTreeSet<u32>,
    /// Where the next search for a free address starts (allocation stays
    /// O(log n) while addresses are handed out in order).
    next: u32,
}

/// One VIM: its catalogue (flavors, images, networks) and its servers.
#[derive(Debug)]
pub struct Cloud {
    capacity: Capacity,
    flavors: BTreeMap<String, Flavor>,
    images: BTreeMap<String, Image>,
    networks: BTreeMap<String, Network>,
    pools: BTreeMap<String, Pool>,
    servers: BTreeMap<String, Server>,
    /// Servers in a transition (build, reboot), by when it ends.
    transitions: std::collections::BTreeSet<(u64, String)>,
    /// vCPUs and RAM (MiB) held by placed servers.
    used: (u32, u64),
    /// Servers stay in BUILD until their runtime says they are set up
    /// ([`Cloud::server_ready`]; namespace servers).
    pub await_ready: bool,
    /// Every request that changed a server, for tests ("one reboot, one
    /// redeploy per VM"), oldest first.
    pub history: Vec<Change>,
}

/// One change to a server, as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub at_ms: u64,
    pub server_id: String,
    pub name: String,
    /// `create`, `delete`, `reboot`, `hard-reboot`, `start`, `stop`.
    pub what: String,
    /// Nova's request id of the change (`req-` and a UUID), as
    /// "List Actions For Server" shows it: unique, in order.
    pub request_id: String,
}

impl Change {
    /// The action's name in Nova's instance actions (a hard reboot is a
    /// `reboot` there).
    pub fn nova_action(&self) -> &str {
        match self.what.as_str() {
            "hard-reboot" => "reboot",
            w => w,
        }
    }
}

/// The creation request (Compute API reference, "Create Server").
#[derive(Debug, Clone, Default)]
pub struct NewServer {
    pub name: String,
    pub image: String,
    pub flavor: String,
    /// Networks, each with an optional fixed address.
    pub networks: Vec<(String, Option<String>)>,
    pub metadata: BTreeMap<String, String>,
    pub user_data: Option<String>,
}

fn mac_of(id: &str) -> String {
    let h = id
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        (h >> 16) & 0xff,
        (h >> 8) & 0xff,
        h & 0xff
    )
}

impl Cloud {
    /// A VIM with the lab's catalogue: flavors `m1.tiny`, `m1.small`,
    /// `m1.medium`; image `vnf-image`; networks `vnf-net` (203.0.113.0/24),
    /// `mgmt-net` (198.51.100.0/24) and `scale-net` (127.64.0.0/16, for
    /// light servers).
    pub fn lab(capacity: Capacity) -> Cloud {
        let mut c = Cloud {
            capacity,
            flavors: BTreeMap::new(),
            images: BTreeMap::new(),
            networks: BTreeMap::new(),
            pools: BTreeMap::new(),
            servers: BTreeMap::new(),
            transitions: Default::default(),
            used: (0, 0),
            await_ready: false,
            history: Vec::new(),
        };
        for (id, name, vcpus, ram_mb, disk_gb) in [
            ("1", "m1.tiny", 1, 512, 1),
            ("2", "m1.small", 1, 2048, 20),
            ("3", "m1.medium", 2, 4096, 40),
        ] {
            c.flavors.insert(
                id.into(),
                Flavor {
                    id: id.into(),
                    name: name.into(),
                    vcpus,
                    ram_mb,
                    disk_gb,
                },
            );
        }
        let image = "5b1f6c9e-6a0e-4a8f-9a55-0d3f7c8e2a01";
        c.images.insert(
            image.into(),
            Image {
                id: image.into(),
                name: "vnf-image".into(),
            },
        );
        // scale-net: light servers only (addresses on loopback, never
        // configured anywhere), room for a 10,000-server run.
        for (id, name, base, bits) in [
            (
                "8f0c2f62-2f52-4a53-8f5e-5a3f0c9d1e01",
                "vnf-net",
                [203, 0, 113, 0],
                24,
            ),
            (
                "8f0c2f62-2f52-4a53-8f5e-5a3f0c9d1e02",
                "mgmt-net",
                [198, 51, 100, 0],
                24,
            ),
            (
                "8f0c2f62-2f52-4a53-8f5e-5a3f0c9d1e03",
                "scale-net",
                [127, 64, 0, 0],
                16,
            ),
        ] {
            let a = std::net::Ipv4Addr::from(base);
            c.networks.insert(
                id.into(),
                Network {
                    id: id.into(),
                    name: name.into(),
                    cidr: format!("{a}/{bits}"),
                    base: u32::from(a),
                    size: 1 << (32 - bits),
                },
            );
            c.pools.insert(id.into(), Pool::default());
        }
        c
    }

    pub fn flavors(&self) -> impl Iterator<Item = &Flavor> {
        self.flavors.values()
    }

    /// By id, or else by name (as clients look flavors up).
    pub fn flavor(&self, id_or_name: &str) -> Option<&Flavor> {
        self.flavors
            .get(id_or_name)
            .or_else(|| self.flavors.values().find(|f| f.name == id_or_name))
    }

    pub fn images(&self) -> impl Iterator<Item = &Image> {
        self.images.values()
    }

    pub fn image(&self, id: &str) -> Option<&Image> {
        self.images.get(id)
    }

    pub fn networks(&self) -> impl Iterator<Item = &Network> {
        self.networks.values()
    }

    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.get(id)
    }

    pub fn ports(&self) -> impl Iterator<Item = &Port> {
        self.servers.values().flat_map(|s| s.ports.iter())
    }

    /// Brings every server whose transition is over to its next state
    /// (only those in a transition are looked at: a tick precedes every
    /// API call).
    pub fn tick(&mut self, now_ms: u64) {
        while let Some((until, id)) = self.transitions.first().cloned() {
            if until > now_ms {
                break;
            }
            self.transitions.pop_first();
            if let Some(s) = self.servers.get_mut(&id) {
                if s.busy_until_ms == until
                    && (s.ready || s.status != Status::Build)
                    && matches!(
                        s.status,
                        Status::Build | Status::Reboot | Status::HardReboot
                    )
                {
                    s.status = Status::Active;
                    s.updated_ms = now_ms;
                }
            }
        }
    }

    /// A server's runtime is set up (Ok), or could not be (the server goes
    /// to ERROR with the reason).
    pub fn server_ready(&mut self, now_ms: u64, id: &str, r: Result<(), String>) {
        let Some(s) = self.servers.get_mut(id) else {
            return;
        };
        match r {
            Ok(()) => {
                s.ready = true;
                if s.status == Status::Build {
                    if now_ms >= s.busy_until_ms {
                        s.status = Status::Active;
                        s.updated_ms = now_ms;
                    } else {
                        // Its build time is not over by this clock, but a
                        // tick may have passed it already (the caller read
                        // its clock before the lock): due again, so it
                        // cannot stay in BUILD forever.
                        let until = s.busy_until_ms;
                        self.transitions.insert((until, id.to_string()));
                    }
                }
            }
            Err(e) => {
                s.status = Status::Error;
                s.fault = Some(e);
                s.updated_ms = now_ms;
            }
        }
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.values()
    }

    pub fn server(&self, id: &str) -> Result<&Server, VimError> {
        self.servers
            .get(id)
            .ok_or_else(|| VimError::NotFound(format!("Instance {id} could not be found.")))
    }

    /// vCPUs and RAM (MiB) held by servers, and the capacity.
    pub fn usage(&self) -> (u32, u64, Capacity) {
        let (c, r) = self.used();
        (c, r, self.capacity)
    }

    fn used(&self) -> (u32, u64) {
        self.used
    }

    /// Creates a server (id chosen by the caller). An unknown image, flavor
    /// or network is refused (400, as Nova does); a server that does not
    /// fit is created in ERROR ("No valid host was found").
    pub fn create_server(
        &mut self,
        now_ms: u64,
        id: String,
        req: NewServer,
    ) -> Result<&Server, VimError> {
        if req.name.is_empty() || req.name.len() > 255 {
            return Err(VimError::BadRequest(
                "Invalid input for field/attribute name.".into(),
            ));
        }
        if !self.images.contains_key(&req.image) {
            return Err(VimError::BadRequest(format!(
                "Image {} could not be found.",
                req.image
            )));
        }
        let flavor = self.flavors.get(&req.flavor).cloned().ok_or_else(|| {
            VimError::BadRequest(format!("Flavor {} could not be found.", req.flavor))
        })?;
        for (net, ip) in &req.networks {
            let n = self.networks.get(net).ok_or_else(|| {
                VimError::BadRequest(format!("Network {net} could not be found."))
            })?;
            if let Some(ip) = ip {
                let host = n.offset(ip).ok_or_else(|| {
                    VimError::BadRequest(format!("Fixed IP {ip} is not in network {net}."))
                })?;
                if self.pools[net].used.contains(&host) {
                    return Err(VimError::Conflict(format!(
                        "Fixed IP address {ip} is already in use on network {net}."
                    )));
                }
            }
        }
        let (cpu, ram) = self.used();
        let fits = cpu + flavor.vcpus <= self.capacity.vcpus
            && ram + flavor.ram_mb <= self.capacity.ram_mb;
        let mut ports = Vec::new();
        if fits {
            for (i, (net, ip)) in req.networks.iter().enumerate() {
                let n = &self.networks[net];
                let pool = self.pools.get_mut(net).expect("a pool per network");
                let host = match ip.as_deref().and_then(|ip| n.offset(ip)) {
                    Some(h) => h,
                    None => {
                        let free = |h: &u32| !pool.used.contains(h);
                        let last = n.size - 1;
                        match (pool.next.max(FIRST_HOST)..last)
                            .chain(FIRST_HOST..pool.next.min(last))
                            .find(free)
                        {
                            Some(h) => h,
                            None => {
                                return Err(VimError::Conflict(format!(
                                    "No more IP addresses available on network {net}."
                                )))
                            }
                        }
                    }
                };
                pool.used.insert(host);
                pool.next = host + 1;
                let address = n.address(host);
                let port_id = format!("{id}-p{i}");
                ports.push(Port {
                    mac: mac_of(&port_id),
                    id: port_id,
                    network_id: net.clone(),
                    ip: address,
                    device_id: id.clone(),
                });
            }
        }
        self.note(now_ms, &id, &req.name, "create");
        let server = Server {
            id: id.clone(),
            name: req.name,
            image_id: req.image,
            flavor_id: flavor.id,
            metadata: req.metadata,
            user_data: req.user_data,
            ports,
            status: if fits { Status::Build } else { Status::Error },
            fault: (!fits)
                .then(|| "No valid host was found. There are not enough hosts available.".into()),
            created_ms: now_ms,
            updated_ms: now_ms,
            busy_until_ms: now_ms + self.capacity.build_ms,
            placed: fits,
            ready: !self.await_ready,
        };
        if fits {
            self.used.0 += flavor.vcpus;
            self.used.1 += flavor.ram_mb;
            self.transitions.insert((server.busy_until_ms, id.clone()));
        }
        Ok(self.servers.entry(id).or_insert(server))
    }

    pub fn delete_server(&mut self, now_ms: u64, id: &str) -> Result<(), VimError> {
        let s = self
            .servers
            .remove(id)
            .ok_or_else(|| VimError::NotFound(format!("Instance {id} could not be found.")))?;
        if s.placed {
            if let Some(f) = self.flavors.get(&s.flavor_id) {
                self.used.0 -= f.vcpus;
                self.used.1 -= f.ram_mb;
            }
        }
        for p in &s.ports {
            let h = self
                .networks
                .get(&p.network_id)
                .and_then(|n| n.offset(&p.ip));
            if let (Some(pool), Some(h)) = (self.pools.get_mut(&p.network_id), h) {
                pool.used.remove(&h);
            }
        }
        let name = s.name.clone();
        self.note(now_ms, id, &name, "delete");
        Ok(())
    }

    /// `reboot` (SOFT or HARD), `os-start`, `os-stop`: refused (409) in a
    /// state that does not allow it, as Nova does.
    pub fn action(&mut self, now_ms: u64, id: &str, action: Action) -> Result<(), VimError> {
        let reboot_ms = self.capacity.reboot_ms;
        let s = self
            .servers
            .get_mut(id)
            .ok_or_else(|| VimError::NotFound(format!("Instance {id} could not be found.")))?;
        let conflict = |what: &str, s: &Server| {
            VimError::Conflict(format!(
                "Cannot '{what}' instance {} while it is in vm_state {}",
                s.id,
                s.status.word().to_lowercase()
            ))
        };
        match action {
            Action::Reboot { hard } => {
                if matches!(s.status, Status::Build | Status::Error) {
                    return Err(conflict("reboot", s));
                }
                s.status = if hard {
                    Status::HardReboot
                } else {
                    Status::Reboot
                };
                s.busy_until_ms = now_ms + reboot_ms;
                self.transitions.insert((s.busy_until_ms, id.to_string()));
            }
            Action::Stop => {
                if s.status != Status::Active {
                    return Err(conflict("stop", s));
                }
                s.status = Status::Shutoff;
            }
            Action::Start => {
                if s.status != Status::Shutoff {
                    return Err(conflict("start", s));
                }
                s.status = Status::Active;
            }
        }
        s.updated_ms = now_ms;
        let name = s.name.clone();
        self.note(now_ms, id, &name, action.word());
        Ok(())
    }

    /// Keeps a change in the history, with the next request id.
    fn note(&mut self, now_ms: u64, server_id: &str, name: &str, what: &str) {
        let request_id = format!(
            "req-00000000-0000-4000-8000-{:012x}",
            self.history.len() + 1
        );
        self.history.push(Change {
            at_ms: now_ms,
            server_id: server_id.to_string(),
            name: name.to_string(),
            what: what.to_string(),
            request_id,
        });
    }

    /// "List Actions For Server": the server's changes, newest first.
    pub fn actions(&self, id: &str) -> Result<Vec<&Change>, VimError> {
        self.server(id)?;
        Ok(self
            .history
            .iter()
            .rev()
            .filter(|c| c.server_id == id)
            .collect())
    }
}

/// A server action (Compute API reference, "Servers - run an action").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reboot { hard: bool },
    Start,
    Stop,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Action::Reboot { hard: false } => "reboot",
            Action::Reboot { hard: true } => "hard-reboot",
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, flavor: &str) -> NewServer {
        NewServer {
            name: name.into(),
            image: "5b1f6c9e-6a0e-4a8f-9a55-0d3f7c8e2a01".into(),
            flavor: flavor.into(),
            networks: vec![("8f0c2f62-2f52-4a53-8f5e-5a3f0c9d1e01".into(), None)],
            ..NewServer::default()
        }
    }

    #[test]
    fn a_server_ready_late_by_a_stale_clock_still_becomes_active() {
        let mut c = Cloud::lab(Capacity {
            build_ms: 100,
            ..Capacity::default()
        });
        c.await_ready = true;
        let req = NewServer {
            name: "s".into(),
            image: c.images().next().unwrap().id.clone(),
            flavor: c.flavors().next().unwrap().id.clone(),
            ..NewServer::default()
        };
        c.create_server(0, "a".into(), req).unwrap();
        // The build time passes before the runtime is set up...
        c.tick(150);
        // ...which says so with a clock read before that tick.
        c.server_ready(90, "a", Ok(()));
        c.tick(160);
        assert_eq!(c.server("a").unwrap().status, Status::Active);
    }

    #[test]
    fn a_server_builds_then_is_active_and_gets_an_address() {
        let mut c = Cloud::lab(Capacity::default());
        let s = c.create_server(0, "a".into(), new("vm-a", "1")).unwrap();
        assert_eq!(s.status, Status::Build);
        assert_eq!(s.ports[0].ip, "203.0.113.10");
        c.tick(199);
        assert_eq!(c.server("a").unwrap().status, Status::Build);
        c.tick(200);
        assert_eq!(c.server("a").unwrap().status, Status::Active);
    }

    #[test]
    fn what_does_not_fit_is_an_error_server_and_bad_references_are_refused() {
        let mut c = Cloud::lab(Capacity {
            vcpus: 2,
            ..Capacity::default()
        });
        c.create_server(0, "a".into(), new("a", "3")).unwrap();
        let s = c.create_server(0, "b".into(), new("b", "1")).unwrap();
        assert_eq!(s.status, Status::Error);
        assert!(s.fault.as_deref().unwrap().contains("No valid host"));
        assert!(matches!(
            c.create_server(0, "c".into(), new("c", "99")),
            Err(VimError::BadRequest(_))
        ));
        // Deleting frees capacity and the address.
        c.delete_server(1, "a").unwrap();
        let mut d = new("d", "3");
        d.networks[0].1 = Some("203.0.113.10".into());
        let s = c.create_server(2, "d".into(), d).unwrap();
        assert_eq!(s.status, Status::Build);
        assert_eq!(s.ports[0].ip, "203.0.113.10", "the freed address is free");
    }

    #[test]
    fn a_16_holds_ten_thousand_servers_and_addresses_stay_in_their_network() {
        let mut c = Cloud::lab(Capacity {
            vcpus: 100_000,
            ram_mb: 1 << 40,
            ..Capacity::default()
        });
        let net = "8f0c2f62-2f52-4a53-8f5e-5a3f0c9d1e03";
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..10_000 {
            let mut r = new(&format!("s{i}"), "1");
            r.networks = vec![(net.into(), None)];
            let s = c.create_server(0, format!("id{i}"), r).unwrap();
            assert!(s.ports[0].ip.starts_with("127.64."), "{}", s.ports[0].ip);
            assert!(seen.insert(s.ports[0].ip.clone()), "an address twice");
        }
        let mut r = new("x", "1");
        r.networks = vec![(net.into(), Some("127.65.0.1".into()))];
        assert!(matches!(
            c.create_server(0, "x".into(), r),
            Err(VimError::BadRequest(_))
        ));
    }

    #[test]
    fn actions_follow_novas_states() {
        let mut c = Cloud::lab(Capacity::default());
        c.create_server(0, "a".into(), new("a", "1")).unwrap();
        assert!(matches!(
            c.action(1, "a", Action::Reboot { hard: false }),
            Err(VimError::Conflict(_))
        ));
        c.tick(200);
        c.action(300, "a", Action::Stop).unwrap();
        assert_eq!(c.server("a").unwrap().status, Status::Shutoff);
        c.action(301, "a", Action::Start).unwrap();
        c.action(302, "a", Action::Reboot { hard: true }).unwrap();
        assert_eq!(c.server("a").unwrap().status, Status::HardReboot);
        c.tick(502);
        assert_eq!(c.server("a").unwrap().status, Status::Active);
        let words: Vec<&str> = c.history.iter().map(|h| h.what.as_str()).collect();
        assert_eq!(words, ["create", "stop", "start", "hard-reboot"]);
    }
}
