//! [`Sweeper`]: the periodic reconciliation with the VIM (docs/architecture.md,
//! "The service": "Exactly one server per VM"). The lifecycle core keeps one
//! server per VM while an operation runs; what it cannot see is a create that
//! lands after its operation settled (a VIM holding a request longer than
//! `create_doubt_ms`, a bug, a hand-made copy). The sweeper lists every
//! server of the VIM project now and then, compares them with the replicated
//! records, and deletes what this manager made and no record holds.
//! Sans-IO and deterministic, like the lifecycle core: the runtime lists,
//! reads the records, deletes, and feeds the answers back.
//!
//! ```text
//!   Tick (pass due) ──> Output::List ──> runtime: every server (all pages), then
//!                                         the records of the deployments they name
//!   Input::Listed { servers, holdings } ──> classify each server:
//!        no esc_managed metadata ............ foreign: never touched
//!        its deployment is unknown here ..... orphan: reported (Notice), never deleted
//!        its deployment has an operation .... busy: the operation's own listing owns it
//!        a VM of the record holds its id .... held (a deployment removed lately,
//!                                             `query::gone`, holds none)
//!        otherwise .......................... stray: deleted once seen stray by two
//!                                             listings at least `hold_ms` apart
//!   Output::Delete ──> runtime: checks the record again right before the call
//!   Input::Deleted ──> Notice::Removed (or the failure, tried again next pass)
//! ```
//!
//! Why an orphan is not deleted: the VIM project may hold servers of an
//! earlier installation or of another manager with the same metadata (a
//! restored backup, a second pair pointed at one project by mistake).
//! Deleting VMs on a guess is the one thing a reconciler must never do; an
//! orphan is named to the operator (log, `escadm status --v`), who decides.
//! A stray is this manager's as far as the metadata can tell: its
//! deployment is in the replicated state, idle, and holds other servers,
//! not this one; or it was removed lately (the state remembers the last
//! `GONE_MAX` removed), so the server is a create that landed after the
//! undeploy. What the metadata cannot tell: a second manager on the same
//! project with a deployment of the same name (its servers would look like
//! ours). The VIM project is the manager's own (README, `[vim]`); an
//! installation id in the metadata would lift that (not built).
//!
//! Why two sightings `hold_ms` apart, by this node's monotonic clock: a
//! server created an instant before the listing may belong to an operation
//! that settles an instant after the records were read; a create in doubt
//! lands within `create_doubt_ms` (the lifecycle core's contract). Soft
//! state: a new primary starts its own clock, so a takeover only delays a
//! deletion by a pass. The first pass comes `interval_ms` after leading:
//! nothing on the takeover's path grows with the servers.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// Time between passes (the first comes this long after leading).
    pub interval_ms: u64,
    /// A stray is deleted only once two listings this far apart both showed
    /// it stray (at least the lifecycle's `create_doubt_ms`).
    pub hold_ms: u64,
    /// Deletes in flight at once.
    pub deletes_in_flight_max: usize,
}

impl Default for SweepConfig {
    fn default() -> SweepConfig {
        SweepConfig {
            interval_ms: 60_000,
            hold_ms: 30_000,
            deletes_in_flight_max: 16,
        }
    }
}

/// One server of the listing, as the sweeper needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweptServer {
    pub id: String,
    pub name: String,
    /// Its `esc_deployment` metadata when it carries `esc_managed=true`
    /// (`VmKey::metadata`); None: not this manager's kind of server.
    pub deployment: Option<String>,
}

/// What the replicated state says of one deployment, read after the
/// listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// An operation is in progress on it.
    pub busy: bool,
    /// The server ids its VMs hold.
    pub servers: BTreeSet<String>,
}

/// What a delete came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteOutcome {
    Deleted,
    /// 404: gone already.
    Gone,
    /// Not asked for: the record moved since the listing (an operation
    /// started, or now holds the server), or this node may no longer act.
    Withheld {
        reason: String,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// This node leads (again): soft state starts afresh.
    Lead,
    Tick,
    Listed {
        servers: Vec<SweptServer>,
        /// By deployment name: those of the listed servers' deployments
        /// this node knows (a record, or removed lately: idle, holding
        /// nothing); a name absent here is unknown.
        holdings: BTreeMap<String, Holding>,
    },
    ListFailed {
        error: String,
    },
    Deleted {
        server_id: String,
        outcome: DeleteOutcome,
    },
}

/// What the runtime reports (logs): one per change worth an operator's eye.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notice {
    /// Seen stray for the first time; deleted after `hold_ms` if it stays.
    Stray {
        server_id: String,
        name: String,
        deployment: String,
    },
    /// A server of this manager's kind whose deployment is unknown here:
    /// reported once while it stays, never deleted.
    Orphan {
        server_id: String,
        name: String,
        deployment: String,
    },
    Removed {
        server_id: String,
        name: String,
        deployment: String,
    },
    DeleteFailed {
        server_id: String,
        name: String,
        error: String,
    },
    ListFailed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// List every server of the project, then read the holdings.
    List,
    /// Delete a stray, once the runtime checked its deployment again.
    Delete {
        server_id: String,
        name: String,
        deployment: String,
    },
    Notice(Notice),
}

/// The sweeper's figures (`escadm status --v`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    pub passes: u64,
    /// When the last pass's listing came (the core's clock), and how long
    /// it took from the request (every page, then the records).
    pub last_pass_ms: Option<u64>,
    pub last_pass_took_ms: Option<u64>,
    /// The last listing: its servers, and how many were held, busy,
    /// stray and orphan.
    pub listed: u64,
    pub held: u64,
    pub busy: u64,
    pub strays: u64,
    pub orphans: u64,
    /// Up to [`ORPHANS_SHOWN_MAX`] orphans' names, for the operator.
    pub orphan_names: Vec<String>,
    /// Strays deleted since this node leads.
    pub removed: u64,
    pub last_error: Option<String>,
}

/// Orphans a report names (the count is whole).
pub const ORPHANS_SHOWN_MAX: usize = 10;

/// What the sweeper keeps of a stray between passes.
#[derive(Debug, Clone)]
struct Seen {
    first_ms: u64,
    name: String,
    deployment: String,
}

#[derive(Debug)]
pub struct Sweeper {
    cfg: SweepConfig,
    leading: bool,
    next_pass_ms: Option<u64>,
    /// When the listing in flight was asked for.
    listing: Option<u64>,
    strays: BTreeMap<String, Seen>,
    /// Orphans reported in the last pass (a new one is reported once).
    orphans: BTreeSet<String>,
    deleting: BTreeSet<String>,
    report: SweepReport,
}

impl Sweeper {
    pub fn new(cfg: SweepConfig) -> Sweeper {
        Sweeper {
            cfg,
            leading: false,
            next_pass_ms: None,
            listing: None,
            strays: BTreeMap::new(),
            orphans: BTreeSet::new(),
            deleting: BTreeSet::new(),
            report: SweepReport::default(),
        }
    }

    pub fn report(&self) -> &SweepReport {
        &self.report
    }

    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Lead => {
                *self = Sweeper::new(self.cfg.clone());
                self.leading = true;
                self.next_pass_ms = Some(now_ms + self.cfg.interval_ms);
            }
            Input::Tick => {
                let due = self.next_pass_ms.is_some_and(|t| now_ms >= t);
                if self.leading && due && self.listing.is_none() {
                    self.listing = Some(now_ms);
                    out.push(Output::List);
                }
            }
            Input::Listed { servers, holdings } => {
                if let Some(asked) = self.listing {
                    self.on_listed(now_ms, asked, servers, &holdings, &mut out);
                }
            }
            Input::ListFailed { error } => {
                if self.listing.is_some() {
                    self.pass_done(now_ms);
                    self.report.last_error = Some(error.clone());
                    out.push(Output::Notice(Notice::ListFailed { error }));
                }
            }
            Input::Deleted { server_id, outcome } => {
                self.on_deleted(server_id, outcome, &mut out);
            }
        }
        out
    }

    fn pass_done(&mut self, now_ms: u64) {
        self.listing = None;
        self.next_pass_ms = Some(now_ms + self.cfg.interval_ms);
    }

    fn on_listed(
        &mut self,
        now_ms: u64,
        asked_ms: u64,
        servers: Vec<SweptServer>,
        holdings: &BTreeMap<String, Holding>,
        out: &mut Vec<Output>,
    ) {
        self.pass_done(now_ms);
        let mut r = SweepReport {
            passes: self.report.passes + 1,
            last_pass_ms: Some(now_ms),
            last_pass_took_ms: Some(now_ms.saturating_sub(asked_ms)),
            listed: servers.len() as u64,
            removed: self.report.removed,
            ..SweepReport::default()
        };
        let mut strays = BTreeMap::new();
        let mut orphans = BTreeSet::new();
        for s in servers {
            let Some(dep) = s.deployment else {
                continue;
            };
            let Some(h) = holdings.get(&dep) else {
                r.orphans += 1;
                if r.orphan_names.len() < ORPHANS_SHOWN_MAX {
                    r.orphan_names.push(s.name.clone());
                }
                if !self.orphans.contains(&s.id) {
                    out.push(Output::Notice(Notice::Orphan {
                        server_id: s.id.clone(),
                        name: s.name,
                        deployment: dep,
                    }));
                }
                orphans.insert(s.id);
                continue;
            };
            if h.busy {
                r.busy += 1;
                continue;
            }
            if h.servers.contains(&s.id) {
                r.held += 1;
                continue;
            }
            r.strays += 1;
            let seen = match self.strays.remove(&s.id) {
                Some(seen) => seen,
                None => {
                    out.push(Output::Notice(Notice::Stray {
                        server_id: s.id.clone(),
                        name: s.name.clone(),
                        deployment: dep.clone(),
                    }));
                    Seen {
                        first_ms: now_ms,
                        name: s.name,
                        deployment: dep,
                    }
                }
            };
            strays.insert(s.id, seen);
        }
        // A stray no longer listed (deleted by hand, adopted) is forgotten:
        // only what this listing shows carries over.
        self.strays = strays;
        self.orphans = orphans;
        self.report = r;
        self.delete_due(now_ms, out);
    }

    fn delete_due(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        for (id, seen) in &self.strays {
            if self.deleting.len() >= self.cfg.deletes_in_flight_max {
                return;
            }
            if now_ms.saturating_sub(seen.first_ms) < self.cfg.hold_ms || self.deleting.contains(id)
            {
                continue;
            }
            self.deleting.insert(id.clone());
            out.push(Output::Delete {
                server_id: id.clone(),
                name: seen.name.clone(),
                deployment: seen.deployment.clone(),
            });
        }
    }

    fn on_deleted(&mut self, server_id: String, outcome: DeleteOutcome, out: &mut Vec<Output>) {
        if !self.deleting.remove(&server_id) {
            return;
        }
        match outcome {
            DeleteOutcome::Deleted | DeleteOutcome::Gone => {
                if let Some(seen) = self.strays.remove(&server_id) {
                    self.report.removed += 1;
                    out.push(Output::Notice(Notice::Removed {
                        server_id,
                        name: seen.name,
                        deployment: seen.deployment,
                    }));
                }
            }
            // The record moved: whether it is still a stray is for the
            // next listing to say, from its first sighting again.
            DeleteOutcome::Withheld { .. } => {
                self.strays.remove(&server_id);
            }
            // Tried again at the next pass (still stray, still held long
            // enough).
            DeleteOutcome::Failed { error } => {
                let name = self
                    .strays
                    .get(&server_id)
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                self.report.last_error = Some(error.clone());
                out.push(Output::Notice(Notice::DeleteFailed {
                    server_id,
                    name,
                    error,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SweepConfig {
        SweepConfig {
            interval_ms: 1_000,
            hold_ms: 1_500,
            deletes_in_flight_max: 2,
        }
    }

    fn server(id: &str, deployment: Option<&str>) -> SweptServer {
        SweptServer {
            id: id.into(),
            name: format!("name-{id}"),
            deployment: deployment.map(str::to_string),
        }
    }

    fn holding(busy: bool, ids: &[&str]) -> Holding {
        Holding {
            busy,
            servers: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn deletes(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Delete { server_id, .. } => Some(server_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Runs a pass at `now`: the tick must ask for a listing.
    fn pass(
        s: &mut Sweeper,
        now: u64,
        servers: Vec<SweptServer>,
        holdings: &BTreeMap<String, Holding>,
    ) -> Vec<Output> {
        assert_eq!(s.handle(now, Input::Tick), vec![Output::List], "at {now}");
        s.handle(
            now,
            Input::Listed {
                servers,
                holdings: holdings.clone(),
            },
        )
    }

    #[test]
    fn the_first_pass_comes_an_interval_after_leading_and_one_at_a_time() {
        let mut s = Sweeper::new(cfg());
        assert!(s.handle(5_000, Input::Tick).is_empty(), "not leading");
        s.handle(0, Input::Lead);
        assert!(s.handle(999, Input::Tick).is_empty());
        assert_eq!(s.handle(1_000, Input::Tick), vec![Output::List]);
        assert!(
            s.handle(1_500, Input::Tick).is_empty(),
            "one listing at a time"
        );
        let out = s.handle(
            1_600,
            Input::ListFailed {
                error: "503".into(),
            },
        );
        assert!(matches!(
            out[..],
            [Output::Notice(Notice::ListFailed { .. })]
        ));
        assert!(s.handle(2_599, Input::Tick).is_empty());
        assert_eq!(s.handle(2_600, Input::Tick), vec![Output::List]);
        s.handle(
            2_900,
            Input::Listed {
                servers: vec![],
                holdings: BTreeMap::new(),
            },
        );
        let r = s.report();
        assert_eq!(
            (r.last_pass_ms, r.last_pass_took_ms),
            (Some(2_900), Some(300))
        );
        assert_eq!(r.last_error, None, "a pass that worked clears the error");
    }

    /// Only a stray of a known, idle deployment is deleted, and only once
    /// two listings `hold_ms` apart showed it; held, busy, foreign and
    /// orphan servers never are.
    #[test]
    fn only_a_stray_seen_twice_hold_ms_apart_is_deleted() {
        let mut s = Sweeper::new(cfg());
        s.handle(0, Input::Lead);
        let servers = vec![
            server("held", Some("a")),
            server("stray", Some("a")),
            server("busy", Some("b")),
            server("orphan", Some("gone")),
            server("foreign", None),
        ];
        let holdings = BTreeMap::from([
            ("a".to_string(), holding(false, &["held"])),
            ("b".to_string(), holding(true, &[])),
        ]);
        let out = pass(&mut s, 1_000, servers.clone(), &holdings);
        assert!(deletes(&out).is_empty(), "{out:?}");
        assert!(out.contains(&Output::Notice(Notice::Stray {
            server_id: "stray".into(),
            name: "name-stray".into(),
            deployment: "a".into()
        })));
        assert!(out.contains(&Output::Notice(Notice::Orphan {
            server_id: "orphan".into(),
            name: "name-orphan".into(),
            deployment: "gone".into()
        })));
        let r = s.report();
        assert_eq!(
            (r.listed, r.held, r.busy, r.strays, r.orphans),
            (5, 1, 1, 1, 1)
        );
        assert_eq!(r.orphan_names, vec!["name-orphan".to_string()]);
        // 1,000 ms later: not yet hold_ms since the first sighting; the
        // orphan is not reported again.
        let out = pass(&mut s, 2_000, servers.clone(), &holdings);
        assert!(out.is_empty(), "{out:?}");
        let out = pass(&mut s, 3_000, servers.clone(), &holdings);
        assert_eq!(deletes(&out), vec!["stray".to_string()]);
        let out = s.handle(
            3_100,
            Input::Deleted {
                server_id: "stray".into(),
                outcome: DeleteOutcome::Deleted,
            },
        );
        assert!(matches!(out[..], [Output::Notice(Notice::Removed { .. })]));
        assert_eq!(s.report().removed, 1);
        // A delete answered twice, or of something never asked: nothing.
        assert!(s
            .handle(
                3_200,
                Input::Deleted {
                    server_id: "stray".into(),
                    outcome: DeleteOutcome::Deleted
                }
            )
            .is_empty());
    }

    /// A stray that becomes held (adopted), or whose deployment starts an
    /// operation, or that vanishes, starts its hold again if it is ever a
    /// stray again.
    #[test]
    fn the_hold_restarts_whenever_a_server_stops_being_stray() {
        let mut s = Sweeper::new(cfg());
        s.handle(0, Input::Lead);
        let one = vec![server("x", Some("a"))];
        let idle = BTreeMap::from([("a".to_string(), holding(false, &[]))]);
        let busy = BTreeMap::from([("a".to_string(), holding(true, &[]))]);
        assert!(deletes(&pass(&mut s, 1_000, one.clone(), &idle)).is_empty());
        assert!(deletes(&pass(&mut s, 2_000, one.clone(), &busy)).is_empty());
        assert!(deletes(&pass(&mut s, 3_000, one.clone(), &idle)).is_empty());
        assert!(deletes(&pass(&mut s, 4_000, vec![], &idle)).is_empty());
        assert!(deletes(&pass(&mut s, 5_000, one.clone(), &idle)).is_empty());
        assert!(deletes(&pass(&mut s, 6_000, one.clone(), &idle)).is_empty());
        assert_eq!(
            deletes(&pass(&mut s, 7_000, one.clone(), &idle)),
            vec!["x".to_string()]
        );
        // Withheld (the record moved between the listing and the call):
        // the hold starts over.
        s.handle(
            7_100,
            Input::Deleted {
                server_id: "x".into(),
                outcome: DeleteOutcome::Withheld {
                    reason: "an operation started".into(),
                },
            },
        );
        assert!(deletes(&pass(&mut s, 8_000, one.clone(), &idle)).is_empty());
        assert!(deletes(&pass(&mut s, 9_000, one.clone(), &idle)).is_empty());
        assert_eq!(
            deletes(&pass(&mut s, 10_000, one, &idle)),
            vec!["x".to_string()]
        );
    }

    /// Deletes in flight are bounded; a failed one is asked again at the
    /// next pass; a new term forgets every sighting.
    #[test]
    fn deletes_are_bounded_retried_and_a_new_term_starts_over() {
        let mut s = Sweeper::new(cfg());
        s.handle(0, Input::Lead);
        let three = vec![
            server("p", Some("a")),
            server("q", Some("a")),
            server("r", Some("a")),
        ];
        let idle = BTreeMap::from([("a".to_string(), holding(false, &[]))]);
        pass(&mut s, 1_000, three.clone(), &idle);
        pass(&mut s, 2_000, three.clone(), &idle);
        let out = pass(&mut s, 3_000, three.clone(), &idle);
        assert_eq!(deletes(&out), vec!["p".to_string(), "q".to_string()]);
        s.handle(
            3_100,
            Input::Deleted {
                server_id: "p".into(),
                outcome: DeleteOutcome::Failed {
                    error: "503".into(),
                },
            },
        );
        s.handle(
            3_100,
            Input::Deleted {
                server_id: "q".into(),
                outcome: DeleteOutcome::Gone,
            },
        );
        assert_eq!(s.report().last_error.as_deref(), Some("503"));
        let left = vec![server("p", Some("a")), server("r", Some("a"))];
        let out = pass(&mut s, 4_000, left.clone(), &idle);
        assert_eq!(deletes(&out), vec!["p".to_string(), "r".to_string()]);
        s.handle(5_000, Input::Lead);
        assert_eq!(s.report(), &SweepReport::default());
        assert!(deletes(&pass(&mut s, 6_000, left, &idle)).is_empty());
    }

    #[test]
    fn inputs_and_outputs_are_serde() {
        let i = Input::Listed {
            servers: vec![server("x", Some("a"))],
            holdings: BTreeMap::from([("a".to_string(), holding(false, &["y"]))]),
        };
        let json = serde_json::to_string(&i).unwrap();
        assert_eq!(serde_json::from_str::<Input>(&json).unwrap(), i);
        let o = Output::Delete {
            server_id: "x".into(),
            name: "n".into(),
            deployment: "a".into(),
        };
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Output>(&json).unwrap(), o);
    }
}
