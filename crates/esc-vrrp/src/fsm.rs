//! The VRRP state machine of RFC 5798 section 6.4, sans-IO and
//! deterministic: time is an input (`now_ms`), timers are deadlines the
//! runtime sleeps until ([`Vrrp::next_deadline_ms`]), and every effect is an
//! [`Action`] the runtime performs (send an advertisement, add or remove
//! the VIP, announce it by gratuitous ARP). Every state change goes through
//! [`Vrrp::change_state`], which says why.
//!
//! Received advertisements reach [`Input::Advert`] only after the checks of
//! RFC 5798 section 7.1 (TTL, version, VRID, checksum, length): those need
//! the IP header and the codec, and are the runtime's job.
//!
//! ```text
//!            Startup                      Master_Down_Timer fires
//! Initialize ───────> Backup ─────────────────────────────────────> Master
//!     ^    (prio 255) ──────────────────────────────────────────────> │
//!     │                  ^   higher priority advert (or equal, higher │
//!     │                  └── address)  ───────────────────────────────┘
//!     └──────────────── Shutdown (Master sends priority 0 first) ─────┘
//! ```

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Priority of the router that owns the addresses (RFC 5798 section 5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority announcing that the master stops (RFC 5798 section 5.2.4).
pub const PRIORITY_STOP: u8 = 0;
/// Longest advertisement interval the v3 field holds (12 bits, centiseconds).
pub const ADVER_INT_CS_MAX: u16 = 4095;

/// RFC 5798 section 6.4 states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

/// Configuration of one virtual router (RFC 5798 section 6.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub vrid: u8,
    /// 1..=254 for a backup-capable router, 255 for the address owner.
    pub priority: u8,
    /// Advertisement_Interval, in centiseconds.
    pub adver_int_cs: u16,
    /// Preempt_Mode: a higher-priority backup takes over from a lower master.
    pub preempt: bool,
    /// This router's primary address (the tie-breaker of section 6.4.3).
    pub primary_ip: Ipv4Addr,
}

/// What the state machine reacts to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// RFC 5798 section 6.4.1: the Startup event.
    Startup,
    /// RFC 5798 section 6.4: the Shutdown event.
    Shutdown,
    /// A valid advertisement of our VRID from another router.
    Advert {
        src: Ipv4Addr,
        priority: u8,
        adver_int_cs: u16,
    },
    /// Time passed; timers that are due fire.
    Tick,
    /// The role authority changes the priority we advertise (not 0 or 255).
    SetPriority(u8),
    /// The role authority turns Preempt_Mode on (the primary) or off.
    SetPreempt(bool),
}

/// What the runtime must do, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Send an advertisement with this priority and our interval.
    SendAdvert { priority: u8 },
    /// Add the virtual addresses to the interface.
    AddVip,
    /// Remove the virtual addresses from the interface.
    RemoveVip,
    /// Announce the virtual addresses (gratuitous ARP).
    AnnounceVip,
    /// The state changed (log it; tell the role authority).
    StateChanged {
        from: State,
        to: State,
        reason: String,
    },
}

/// Counters of what the machine saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub adverts_received: u64,
    pub adverts_sent: u64,
    pub priority_zero_received: u64,
    pub became_master: u64,
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Vrrp {
    cfg: Config,
    state: State,
    /// Master_Adver_Interval (cs): learned from the master's adverts.
    master_adver_int_cs: u16,
    adver_deadline_ms: Option<u64>,
    master_down_deadline_ms: Option<u64>,
    /// The current master's address, when known (Backup).
    master_ip: Option<Ipv4Addr>,
    now_ms: u64,
    stats: Stats,
}

fn cs_to_ms(cs: u64) -> u64 {
    cs * 10
}

impl Vrrp {
    pub fn new(cfg: Config) -> Vrrp {
        let master_adver_int_cs = cfg.adver_int_cs;
        Vrrp {
            cfg,
            state: State::Initialize,
            master_adver_int_cs,
            adver_deadline_ms: None,
            master_down_deadline_ms: None,
            master_ip: None,
            now_ms: 0,
            stats: Stats::default(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.cfg.priority
    }

    pub fn master_ip(&self) -> Option<Ipv4Addr> {
        match self.state {
            State::Master => Some(self.cfg.primary_ip),
            _ => self.master_ip,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Skew_Time in ms: ((256 - Priority) * Master_Adver_Interval) / 256
    /// (RFC 5798 section 6.1), so higher priorities take over sooner.
    pub fn skew_time_ms(&self) -> u64 {
        cs_to_ms((256 - self.cfg.priority as u64) * self.master_adver_int_cs as u64) / 256
    }

    /// Master_Down_Interval in ms: 3 * Master_Adver_Interval + Skew_Time
    /// (RFC 5798 section 6.1).
    pub fn master_down_interval_ms(&self) -> u64 {
        3 * cs_to_ms(self.master_adver_int_cs as u64) + self.skew_time_ms()
    }

    /// The earliest time a timer fires; the runtime feeds `Tick` then.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match (self.adver_deadline_ms, self.master_down_deadline_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The one entry point.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Action> {
        self.now_ms = self.now_ms.max(now_ms);
        let mut out = Vec::new();
        match input {
            Input::Startup => self.on_startup(&mut out),
            Input::Shutdown => self.on_shutdown(&mut out),
            Input::Tick => self.on_tick(&mut out),
            Input::Advert {
                src,
                priority,
                adver_int_cs,
            } => self.on_advert(src, priority, adver_int_cs, &mut out),
            Input::SetPriority(p) => {
                // 0 and 255 have protocol meanings; the caller validates.
                if (1..PRIORITY_OWNER).contains(&p) {
                    self.cfg.priority = p;
                }
            }
            Input::SetPreempt(on) => self.cfg.preempt = on,
        }
        out
    }

    /// Every state change goes through here (style principle 3).
    fn change_state(&mut self, to: State, reason: String, out: &mut Vec<Action>) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        match (from, to) {
            (_, State::Master) => {
                self.stats.became_master += 1;
                out.push(Action::AddVip);
                out.push(Action::AnnounceVip);
            }
            (State::Master, _) => out.push(Action::RemoveVip),
            _ => {}
        }
        out.push(Action::StateChanged { from, to, reason });
    }

    fn send_advert(&mut self, priority: u8, out: &mut Vec<Action>) {
        self.stats.adverts_sent += 1;
        out.push(Action::SendAdvert { priority });
    }

    fn reset_adver_timer(&mut self) {
        self.adver_deadline_ms = Some(self.now_ms + cs_to_ms(self.cfg.adver_int_cs as u64));
    }

    fn become_master(&mut self, reason: String, out: &mut Vec<Action>) {
        // RFC 5798 section 6.4.1 / 6.4.2: send an ADVERTISEMENT, broadcast a
        // gratuitous ARP for each address, set the Adver_Timer.
        self.send_advert(self.cfg.priority, out);
        self.reset_adver_timer();
        self.master_down_deadline_ms = None;
        self.master_ip = None;
        self.change_state(State::Master, reason, out);
    }

    fn become_backup(&mut self, reason: String, out: &mut Vec<Action>) {
        self.adver_deadline_ms = None;
        self.master_down_deadline_ms = Some(self.now_ms + self.master_down_interval_ms());
        self.change_state(State::Backup, reason, out);
    }

    // RFC 5798 section 6.4.1.
    fn on_startup(&mut self, out: &mut Vec<Action>) {
        if self.state != State::Initialize {
            return;
        }
        if self.cfg.priority == PRIORITY_OWNER {
            self.become_master("startup as address owner (priority 255)".into(), out);
        } else {
            self.master_adver_int_cs = self.cfg.adver_int_cs;
            self.become_backup("startup".into(), out);
        }
    }

    // RFC 5798 sections 6.4.2 and 6.4.3, "Shutdown event".
    fn on_shutdown(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Master {
            // Priority 0 lets the backup take over after Skew_Time only.
            self.send_advert(PRIORITY_STOP, out);
        }
        self.adver_deadline_ms = None;
        self.master_down_deadline_ms = None;
        self.change_state(State::Initialize, "shutdown".into(), out);
    }

    fn on_tick(&mut self, out: &mut Vec<Action>) {
        let now = self.now_ms;
        match self.state {
            State::Backup => {
                // RFC 5798 section 6.4.2: Master_Down_Timer fires.
                if self.master_down_deadline_ms.is_some_and(|d| now >= d) {
                    let silent = self.master_down_interval_ms();
                    self.become_master(
                        format!("no advertisement from the master for {silent} ms (Master_Down_Interval)"),
                        out,
                    );
                }
            }
            State::Master => {
                // RFC 5798 section 6.4.3: Adver_Timer fires.
                if self.adver_deadline_ms.is_some_and(|d| now >= d) {
                    self.send_advert(self.cfg.priority, out);
                    self.reset_adver_timer();
                }
            }
            State::Initialize => {}
        }
    }

    fn on_advert(&mut self, src: Ipv4Addr, priority: u8, adver_int_cs: u16, out: &mut Vec<Action>) {
        self.stats.adverts_received += 1;
        if priority == PRIORITY_STOP {
            self.stats.priority_zero_received += 1;
        }
        match self.state {
            State::Initialize => {}
            // RFC 5798 section 6.4.2, "ADVERTISEMENT received" in Backup.
            State::Backup => {
                if priority == PRIORITY_STOP {
                    // The master is stopping: take over after Skew_Time.
                    self.master_down_deadline_ms = Some(self.now_ms + self.skew_time_ms());
                } else if !self.cfg.preempt || priority >= self.cfg.priority {
                    self.master_adver_int_cs = adver_int_cs.max(1);
                    self.master_ip = Some(src);
                    self.master_down_deadline_ms =
                        Some(self.now_ms + self.master_down_interval_ms());
                }
                // Otherwise (preempt, lower priority): discard; our
                // Master_Down_Timer will fire and we take over.
            }
            // RFC 5798 section 6.4.3, "ADVERTISEMENT received" in Master.
            State::Master => {
                if priority == PRIORITY_STOP {
                    self.send_advert(self.cfg.priority, out);
                    self.reset_adver_timer();
                } else if priority > self.cfg.priority
                    || (priority == self.cfg.priority && src > self.cfg.primary_ip)
                {
                    self.master_adver_int_cs = adver_int_cs.max(1);
                    self.master_ip = Some(src);
                    self.become_backup(
                        format!(
                            "advertisement from {src} with priority {priority} wins over ours ({})",
                            self.cfg.priority
                        ),
                        out,
                    );
                }
                // Otherwise discard: we stay master and keep advertising.
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(priority: u8, preempt: bool) -> Config {
        Config {
            vrid: 51,
            priority,
            adver_int_cs: 100,
            preempt,
            primary_ip: Ipv4Addr::new(192, 0, 2, 10),
        }
    }

    fn started(priority: u8, preempt: bool) -> Vrrp {
        let mut v = Vrrp::new(cfg(priority, preempt));
        v.handle(0, Input::Startup);
        v
    }

    fn advert(last: u8, priority: u8) -> Input {
        Input::Advert {
            src: Ipv4Addr::new(192, 0, 2, last),
            priority,
            adver_int_cs: 100,
        }
    }

    // RFC 5798 section 6.1: Skew_Time and Master_Down_Interval.
    #[test]
    fn timers_follow_the_rfc_formulas() {
        let v = Vrrp::new(cfg(100, false));
        // ((256 - 100) * 100 cs) / 256 = 60.9 cs = 609 ms
        assert_eq!(v.skew_time_ms(), 609);
        assert_eq!(v.master_down_interval_ms(), 3_000 + 609);
        let fast = Vrrp::new(Config {
            adver_int_cs: 10,
            ..cfg(200, false)
        });
        assert_eq!(fast.master_down_interval_ms(), 300 + 21);
    }

    // RFC 5798 section 6.4.1: startup goes to Backup, or Master for the owner.
    #[test]
    fn startup() {
        let mut v = Vrrp::new(cfg(100, false));
        assert_eq!(
            v.handle(0, Input::Startup),
            vec![Action::StateChanged {
                from: State::Initialize,
                to: State::Backup,
                reason: "startup".into()
            }]
        );
        assert_eq!(v.next_deadline_ms(), Some(3_609));
        let mut owner = Vrrp::new(cfg(255, false));
        let out = owner.handle(0, Input::Startup);
        assert_eq!(out[0], Action::SendAdvert { priority: 255 });
        assert_eq!(out[1], Action::AddVip);
        assert_eq!(owner.state(), State::Master);
    }

    // RFC 5798 section 6.4.2: Master_Down_Timer fires -> Master.
    #[test]
    fn backup_takes_over_after_master_down_interval() {
        let mut v = started(100, false);
        assert_eq!(v.handle(3_608, Input::Tick), vec![]);
        let out = v.handle(3_609, Input::Tick);
        assert_eq!(
            out,
            vec![
                Action::SendAdvert { priority: 100 },
                Action::AddVip,
                Action::AnnounceVip,
                Action::StateChanged {
                    from: State::Backup,
                    to: State::Master,
                    reason: "no advertisement from the master for 3609 ms (Master_Down_Interval)"
                        .into()
                },
            ]
        );
        // RFC 5798 section 6.4.3: Adver_Timer fires -> advertise again.
        assert_eq!(v.next_deadline_ms(), Some(4_609));
        assert_eq!(
            v.handle(4_609, Input::Tick),
            vec![Action::SendAdvert { priority: 100 }]
        );
    }

    // RFC 5798 section 6.4.2: adverts reset the Master_Down_Timer.
    #[test]
    fn adverts_keep_a_backup_backup() {
        let mut v = started(100, false);
        v.handle(3_000, advert(11, 150));
        assert_eq!(v.handle(3_609, Input::Tick), vec![]);
        assert_eq!(v.next_deadline_ms(), Some(6_609));
        assert_eq!(v.master_ip(), Some(Ipv4Addr::new(192, 0, 2, 11)));
    }

    // RFC 5798 section 6.4.2: priority 0 -> take over after Skew_Time only.
    #[test]
    fn priority_zero_shortens_the_wait_to_skew_time() {
        let mut v = started(100, false);
        v.handle(1_000, advert(11, 0));
        assert_eq!(v.next_deadline_ms(), Some(1_609));
        assert_eq!(v.handle(1_609, Input::Tick).len(), 4);
        assert_eq!(v.state(), State::Master);
    }

    // RFC 5798 section 6.4.2: with preemption off (our default), a backup
    // of higher priority does not take over from a live lower master.
    #[test]
    fn no_preempt_keeps_a_lower_master() {
        let mut v = started(200, false);
        for t in (0..20_000).step_by(1_000) {
            v.handle(t, advert(11, 100));
            assert!(v.handle(t, Input::Tick).is_empty());
        }
        assert_eq!(v.state(), State::Backup);
    }

    // RFC 5798 section 6.4.2: with preemption, a lower master's adverts are
    // discarded, so the higher backup takes over.
    #[test]
    fn preempt_takes_over_from_a_lower_master() {
        let mut v = started(200, true);
        v.handle(1_000, advert(11, 100));
        // Master_Down_Interval for priority 200: 3000 + 218 ms from start.
        let out = v.handle(3_218, Input::Tick);
        assert!(out.contains(&Action::AddVip), "{out:?}");
    }

    // RFC 5798 section 6.4.3: a master yields to a higher priority, or to
    // an equal one with a higher address; it answers priority 0 by advertising.
    #[test]
    fn master_yields_only_to_a_better_advert() {
        let mut v = started(100, false);
        v.handle(3_609, Input::Tick);
        assert_eq!(v.state(), State::Master);
        assert_eq!(v.handle(3_700, advert(9, 100)), vec![]);
        assert_eq!(v.handle(3_700, advert(9, 50)), vec![]);
        assert_eq!(
            v.handle(3_700, advert(9, 0)),
            vec![Action::SendAdvert { priority: 100 }]
        );
        let out = v.handle(3_800, advert(11, 100));
        assert_eq!(out[0], Action::RemoveVip);
        assert_eq!(v.state(), State::Backup);
    }

    // RFC 5798 section 6.4.3, Shutdown: a master sends priority 0 and leaves.
    #[test]
    fn shutdown_of_a_master_sends_priority_zero_and_drops_the_vip() {
        let mut v = started(100, false);
        v.handle(3_609, Input::Tick);
        assert_eq!(
            v.handle(4_000, Input::Shutdown),
            vec![
                Action::SendAdvert { priority: 0 },
                Action::RemoveVip,
                Action::StateChanged {
                    from: State::Master,
                    to: State::Initialize,
                    reason: "shutdown".into()
                },
            ]
        );
        assert_eq!(v.next_deadline_ms(), None);
    }
}
