//! The monitor's runtime (issue 12; architecture section 8): a task of
//! every node that keeps `esc_monitor::Monitor`'s table of watched VMs
//! current from the services' replicated change feed (on the standby too,
//! so a takeover starts probing at once, with no scan of the state), and
//! while the node leads runs its probes (`crate::probe`) and proposes its
//! decisions through the log: a VM alive or failing its bootup check as a
//! lifecycle step, a recovery or a scale as an operation whose id the core
//! derives from the replicated records (one decision, one operation,
//! whichever primary takes it). Leading is `Shared::leading`: the core is
//! told `Lead` and `Unlead` within a turn of its change (a step-down stops
//! every probe decision at once; results of a past term are dropped).
//!
//! ```text
//!   svcchg/<index> (the feed) ──read on each applied index──> esc_monitor::watch::of_service ─┐
//!   probe results (tasks) ───────────────────────────────────────────────────────────────────┼─> Monitor
//!   a 10 ms tick ────────────────────────────────────────────────────────────────────────────┘    │
//!        Probe ─> crate::probe::run (ICMP socket, TCP, HTTP)   Alive / BootupFailed / Recover ─> the log
//! ```

use crate::logging::HA;
use crate::shared::{unix_ms, Shared};
use esc_domain::model::{OperationKind, Step};
use esc_domain::{query, Op};
use esc_monitor::{Input, Monitor, Output, Watched};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How often the core is ticked (a probe is at most this late by it).
const TICK: Duration = Duration::from_millis(10);
/// Feed entries read at once.
const FEED_PAGE: usize = 512;
/// Services read at once by a full scan.
const SCAN_PAGE: usize = 256;

/// The core's `Input::Vms`: VMs new or changed, VMs gone.
type VmsInput = (Vec<Watched>, Vec<String>);

/// The watched VMs per service, as last given to the core (to tell it
/// which went).
#[derive(Default)]
struct Table {
    by_service: BTreeMap<String, BTreeSet<String>>,
    /// The feed's last entry read: its log index and number.
    cursor: (u64, u64),
}

impl Table {
    /// The core's input for `service`'s VMs now (`watched`).
    fn update(&mut self, service: &str, watched: Vec<Watched>, input: &mut VmsInput) {
        let now: BTreeSet<String> = watched.iter().map(Watched::name).collect();
        let before = self.by_service.remove(service).unwrap_or_default();
        input.1.extend(before.difference(&now).cloned());
        input.0.extend(watched);
        if !now.is_empty() {
            self.by_service.insert(service.to_string(), now);
        }
    }
}

/// The VMs of `name` to watch, read now.
fn read_service(r: &esc_store::StateReader, name: &str) -> Result<Vec<Watched>, String> {
    let Some(s) = query::service(r, name).map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    let op = match &s.current_op {
        Some(id) => query::operation(r, id).map_err(|e| e.to_string())?,
        None => None,
    };
    Ok(esc_monitor::watch::of_service(&s, op.as_ref()))
}

/// Every service, page by page (the start of a term, or a reader that fell
/// behind the feed's bound): the core's input, and the feed's position.
fn full_scan(store: &crate::shared::NodeStore, table: &mut Table) -> Result<VmsInput, String> {
    let r = store.reader().map_err(|e| e.to_string())?;
    // The feed's end first: a change after it is read again (harmless).
    let mut cursor = table.cursor;
    loop {
        let page = query::service_changes(&r, cursor.0, FEED_PAGE).map_err(|e| e.to_string())?;
        let Some((i, c)) = page.last() else { break };
        cursor = (*i, c.seq);
        if page.len() < FEED_PAGE {
            break;
        }
    }
    let mut input = (Vec::new(), Vec::new());
    let mut seen = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let page =
            query::deployments(&r, after.as_deref(), SCAN_PAGE).map_err(|e| e.to_string())?;
        for s in &page {
            let op = match &s.current_op {
                Some(id) => query::operation(&r, id).map_err(|e| e.to_string())?,
                None => None,
            };
            seen.insert(s.spec.name.clone());
            table.update(
                &s.spec.name,
                esc_monitor::watch::of_service(s, op.as_ref()),
                &mut input,
            );
        }
        match page.last() {
            Some(s) if page.len() == SCAN_PAGE => after = Some(s.spec.name.clone()),
            _ => break,
        }
    }
    let gone: Vec<String> = table
        .by_service
        .keys()
        .filter(|n| !seen.contains(*n))
        .cloned()
        .collect();
    for name in gone {
        table.update(&name, Vec::new(), &mut input);
    }
    table.cursor = cursor;
    Ok(input)
}

/// The feed after the table's cursor: the core's input, or none if the
/// reader fell behind the feed's bound (then a full scan).
fn follow(store: &crate::shared::NodeStore, table: &mut Table) -> Result<Option<VmsInput>, String> {
    let r = store.reader().map_err(|e| e.to_string())?;
    let mut input = (Vec::new(), Vec::new());
    loop {
        let page =
            query::service_changes(&r, table.cursor.0, FEED_PAGE).map_err(|e| e.to_string())?;
        let mut names = BTreeSet::new();
        for (i, c) in &page {
            if c.seq != table.cursor.1 + 1 && table.cursor.1 != 0 {
                return Ok(None);
            }
            table.cursor = (*i, c.seq);
            names.extend(c.names.iter().cloned());
        }
        for n in names {
            let w = read_service(&r, &n)?;
            table.update(&n, w, &mut input);
        }
        if page.len() < FEED_PAGE {
            return Ok(Some(input));
        }
    }
}

/// Whether the operation mode is maintenance (the monitor pauses then).
fn maintenance(store: &crate::shared::NodeStore) -> Result<bool, String> {
    let r = store.reader().map_err(|e| e.to_string())?;
    query::op_mode(&r)
        .map(|m| m == esc_domain::OpMode::Maintenance)
        .map_err(|e| e.to_string())
}

/// Reads the feed past the table's cursor (a full scan if the reader fell
/// behind its bound) and the operation mode, off the runtime's threads:
/// the core's input, and whether the node is in maintenance.
async fn catch_up(shared: &Shared, table: &mut Table) -> Option<(VmsInput, bool)> {
    let store = shared.store.clone();
    let mut t = std::mem::take(table);
    let read = tokio::task::spawn_blocking(move || {
        let r = match follow(&store, &mut t) {
            Ok(Some(i)) => Ok(i),
            Ok(None) => full_scan(&store, &mut t),
            Err(e) => Err(e),
        }
        .and_then(|i| maintenance(&store).map(|m| (i, m)));
        (t, r)
    })
    .await;
    match read {
        Ok((t, Ok(input))) => {
            *table = t;
            Some(input)
        }
        Ok((t, Err(e))) => {
            *table = t;
            warn!(target: HA, "monitor cannot read the services: {e}");
            None
        }
        Err(e) => {
            warn!(target: HA, "monitor read task: {e}");
            None
        }
    }
}

/// The monitor of this node, for as long as it runs (on both roles).
pub async fn run(shared: Shared, cfg: esc_monitor::Config) {
    let mut core = Monitor::new(cfg);
    let mut table = Table::default();
    let mut leading = shared.leading.subscribe();
    let pinger = match crate::probe::Pinger::open() {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(target: HA, "no ICMP socket (ICMPPing KPIs will see no answer): {e}");
            None
        }
    };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap_or_default();
    let (results_tx, mut results) = mpsc::unbounded_channel::<(u64, Option<f64>)>();
    // Probes in flight: their VM and KPI (for `Shared::last_probes`).
    let mut sent: BTreeMap<u64, (String, String)> = BTreeMap::new();
    // The table from a full scan once, then from the feed.
    let store = shared.store.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        let mut t = Table::default();
        let i = full_scan(&store, &mut t)?;
        Ok::<_, String>((t, i, maintenance(&store)?))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let mut in_maintenance = false;
    match scanned {
        Ok((t, (upsert, gone), m)) => {
            table = t;
            in_maintenance = m;
            info!(target: HA, vms = upsert.len(), "monitor table built");
            core.handle(unix_ms(), Input::Vms { upsert, gone });
        }
        Err(e) => warn!(target: HA, "monitor cannot read the services: {e}"),
    }
    let mut rate = (std::time::Instant::now(), 0u64, 0u64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut applied = shared.store.meta().applied_index;
    // The epoch this node leads in (none: it does not).
    let mut led: Option<u64> = None;
    let mut out: Vec<Output> = Vec::new();
    loop {
        let now_leading = *leading.borrow_and_update();
        // Maintenance pauses monitoring (ESC's): no probe, no decision,
        // until the mode goes back to operation.
        let probing = now_leading && !in_maintenance;
        let epoch = shared.role.borrow().epoch;
        if led.is_some() && (!probing || led != Some(epoch)) {
            core.handle(unix_ms(), Input::Unlead);
            out.clear();
            sent.clear();
            if now_leading {
                info!(target: HA, "monitor paused: maintenance mode");
            } else {
                info!(target: HA, "monitor standing by");
            }
            led = None;
        }
        if led.is_none() && probing {
            // The table as of now first: what the last term committed.
            let a = shared.store.meta().applied_index;
            if a != applied {
                applied = a;
                if let Some(((upsert, gone), m)) = catch_up(&shared, &mut table).await {
                    in_maintenance = m;
                    core.handle(unix_ms(), Input::Vms { upsert, gone });
                }
            }
            if !in_maintenance {
                out = core.handle(unix_ms(), Input::Lead { epoch });
                info!(target: HA, epoch, vms = core.stats().vms_watched, "monitor probing");
                led = Some(epoch);
            }
        }
        for o in out.drain(..) {
            if let Output::Probe { probe, vm, kpi, .. } = &o {
                sent.insert(*probe, (vm.clone(), kpi.clone()));
            }
            act(&shared, o, pinger.clone(), &http, &results_tx);
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some((probe, value)) = results.recv() => {
                if let Some((vm, kpi)) = sent.remove(&probe) {
                    if let Ok(mut l) = shared.last_probes.lock() {
                        l.insert(vm, crate::shared::LastProbe { at_ms: unix_ms(), kpi, value });
                    }
                }
                out = core.handle(unix_ms(), Input::Result { probe, value });
            }
            _ = tick.tick() => {
                let a = shared.store.meta().applied_index;
                if a != applied {
                    applied = a;
                    if let Some(((upsert, gone), m)) = catch_up(&shared, &mut table).await {
                        in_maintenance = m;
                        if !gone.is_empty() {
                            if let Ok(mut l) = shared.last_probes.lock() {
                                for g in &gone {
                                    l.remove(g);
                                }
                            }
                        }
                        if !upsert.is_empty() || !gone.is_empty() {
                            out = core.handle(unix_ms(), Input::Vms { upsert, gone });
                        }
                    }
                }
                out.extend(core.handle(unix_ms(), Input::Tick));
                let st = core.stats();
                // Probes per second over the last whole second.
                if rate.0.elapsed() >= Duration::from_secs(1) {
                    rate = (std::time::Instant::now(), st.probes_sent, st.probes_sent - rate.1);
                }
                let paused = if led.is_some() {
                    None
                } else if !now_leading {
                    Some("standby: the primary probes".to_string())
                } else {
                    Some("maintenance mode".to_string())
                };
                if let Ok(mut s) = shared.monitor.lock() {
                    *s = Some(esc_proto::status::MonitorStatus {
                        probing: led.is_some(),
                        paused,
                        vms_watched: st.vms_watched as u64,
                        probes_per_s: rate.2,
                        probes_sent: st.probes_sent,
                        probes_in_flight: st.probes_in_flight as u64,
                        probes_late: st.probes_late,
                        lateness_ms_max: st.lateness_ms_max,
                    });
                }
            }
        }
        if led.is_none() {
            // A standby decides nothing (the core says nothing either).
            out.clear();
        }
    }
}

/// Carries out one of the core's outputs.
fn act(
    shared: &Shared,
    o: Output,
    pinger: Option<Arc<crate::probe::Pinger>>,
    http: &reqwest::Client,
    results: &mpsc::UnboundedSender<(u64, Option<f64>)>,
) {
    match o {
        Output::Probe {
            probe,
            target,
            deadline_ms,
            ..
        } => {
            let (http, tx) = (http.clone(), results.clone());
            let left = Duration::from_millis(deadline_ms.saturating_sub(unix_ms()));
            let deadline = tokio::time::Instant::now() + left;
            tokio::spawn(async move {
                let v = crate::probe::run(pinger.as_deref(), &http, &target, deadline).await;
                let _ = tx.send((probe, v));
            });
        }
        Output::Alive { op, key } => {
            info!(target: HA, vm = %key.server_name(), %op, "bootup check answered: VM alive");
            crate::services::propose(
                shared,
                Op::RecordStep {
                    step: Step::VmActive { op, key },
                },
                "a VM alive",
            );
        }
        Output::BootupFailed { op, key, error } => {
            warn!(target: HA, vm = %key.server_name(), %op, "{error}");
            crate::services::propose(
                shared,
                Op::RecordStep {
                    step: Step::VmFailed { op, key, error },
                },
                "a failed bootup check",
            );
        }
        Output::Recover {
            op_id,
            deployment,
            vm,
            reason,
        } => {
            warn!(target: HA, %vm, %deployment, op = %op_id, "recovering: {reason}");
            crate::services::propose(
                shared,
                Op::StartOperation {
                    op_id,
                    deployment,
                    kind: OperationKind::Recover { vm, reason },
                    callback: None,
                },
                "a recovery",
            );
        }
        Output::Scale {
            op_id,
            deployment,
            group,
            out,
            reason,
        } => {
            info!(target: HA, %deployment, %group, op = %op_id, out, "scaling: {reason}");
            crate::services::propose(
                shared,
                Op::StartOperation {
                    op_id,
                    deployment,
                    kind: OperationKind::Scale { group, out, reason },
                    callback: None,
                },
                "a scale",
            );
        }
        Output::Log {
            vm,
            event,
            state,
            value,
        } => info!(%vm, %event, state, ?value, "KPI"),
        Output::Script {
            vm,
            event,
            path,
            args,
            timeout_ms,
        } => {
            tokio::spawn(async move {
                crate::probe::script(&path, &args, &vm, &event, Duration::from_millis(timeout_ms))
                    .await;
            });
        }
    }
}
