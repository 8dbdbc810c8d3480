//! The monitoring core's contract (issue 12, items 1 to 3): probes spread
//! over their period, occurrences counted, rules fired once, bootup
//! checks, pauses, a new term keeping the rhythm, decisions proposed again
//! until the records take them up.

use esc_domain::kpi::{Kpi, Rule};
use esc_domain::model::VmKey;
use esc_monitor::{
    recovery_op_id, scale_op_id, Config, GroupScale, Input, Monitor, Output, Phase, Target, Watched,
};
use std::collections::BTreeMap;

fn kpi(event: &str, period_s: u64, falses: u32) -> Kpi {
    serde_json::from_value(serde_json::json!({
        "event_name": event, "metric_value": 1, "metric_cond": "GE",
        "metric_occurrences_true": 1, "metric_occurrences_false": falses,
        "metric_collector": { "type": "ICMPPing", "nicid": 0, "poll_frequency": period_s }
    }))
    .unwrap()
}

fn rule(event: &str, actions: &[&str]) -> Rule {
    serde_json::from_value(serde_json::json!({ "event_name": event, "actions": actions })).unwrap()
}

fn vm(i: u32, phase: Phase) -> Watched {
    Watched {
        key: VmKey {
            deployment_id: "d".into(),
            group: "g".into(),
            index: i,
            generation: 0,
        },
        deployment: "d".into(),
        addresses: BTreeMap::from([(0, format!("203.0.113.{}", i + 1))]),
        kpis: vec![kpi("VM_ALIVE", 1, 3)],
        rules: vec![rule(
            "VM_ALIVE",
            &[
                "ALWAYS log",
                "FALSE recover autohealing",
                "TRUE esc_vm_alive_notification",
            ],
        )],
        phase,
        recoveries: 0,
        scale: Default::default(),
        recovery_wait_ms: 0,
    }
}

fn probes(out: &[Output]) -> Vec<(u64, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Probe { probe, vm, .. } => Some((*probe, vm.clone())),
            _ => None,
        })
        .collect()
}

fn decisions(out: &[Output]) -> Vec<Output> {
    out.iter()
        .filter(|o| !matches!(o, Output::Probe { .. } | Output::Log { .. }))
        .cloned()
        .collect()
}

/// A monitor leading from 1,000,000 ms (no catch-up of slots before it:
/// a first term; `across_a_takeover_*` tests the catch-up).
fn leading(vms: Vec<Watched>) -> Monitor {
    let mut m = Monitor::new(Config {
        catch_up_ms: 0,
        ..Config::default()
    });
    m.handle(
        0,
        Input::Vms {
            upsert: vms,
            gone: vec![],
        },
    );
    m.handle(1_000_000, Input::Lead { epoch: 1 });
    m
}

/// Runs from `from` to `to` in 10 ms ticks, answering every probe at once
/// with `answer(vm)`; every output.
fn run(m: &mut Monitor, from: u64, to: u64, answer: &dyn Fn(&str) -> Option<f64>) -> Vec<Output> {
    let mut all = Vec::new();
    let mut t = from;
    while t < to {
        let mut out = m.handle(t, Input::Tick);
        while let Some(o) = out.pop() {
            if let Output::Probe { probe, vm, .. } = &o {
                out.extend(m.handle(
                    t,
                    Input::Result {
                        probe: *probe,
                        value: answer(vm),
                    },
                ));
            }
            all.push(o);
        }
        t += 10;
    }
    all
}

#[test]
fn probes_are_spread_over_the_period_once_each() {
    let vms: Vec<Watched> = (0..200).map(|i| vm(i, Phase::Running)).collect();
    let mut m = leading(vms);
    let mut per_tick = Vec::new();
    let mut count: BTreeMap<String, u32> = BTreeMap::new();
    let mut t = 1_000_000;
    while t < 1_010_000 {
        let out = m.handle(t, Input::Tick);
        let p = probes(&out);
        per_tick.push(p.len());
        for (id, name) in p {
            *count.entry(name).or_default() += 1;
            m.handle(
                t,
                Input::Result {
                    probe: id,
                    value: Some(3.0),
                },
            );
        }
        t += 10;
    }
    // 10 periods of 1 s (ticks up to 10 ms short of the end): each VM
    // ten times (nine if its place is in the last 10 ms), never at once.
    assert_eq!(count.len(), 200);
    assert!(count.values().all(|n| (9..=10).contains(n)), "{count:?}");
    assert!(
        count.values().filter(|n| **n == 9).count() <= 4,
        "{count:?}"
    );
    assert!(*per_tick.iter().max().unwrap() < 20, "spread: {per_tick:?}");
    assert_eq!(m.stats().probes_late, 0);
}

#[test]
fn a_vm_that_stops_answering_is_recovered_once_after_its_occurrences() {
    let mut m = leading(vec![vm(0, Phase::Running)]);
    let up = run(&mut m, 1_000_000, 1_003_000, &|_| Some(3.0));
    assert!(decisions(&up).is_empty());
    // Down: the third unanswered poll (one per second) decides.
    let down = run(&mut m, 1_003_000, 1_012_000, &|_| None);
    let name = vm(0, Phase::Running).name();
    let d = decisions(&down);
    assert_eq!(d.len(), 2, "once, then again after repropose_ms: {d:?}");
    match &d[0] {
        Output::Recover {
            op_id, deployment, ..
        } => {
            assert_eq!(*op_id, recovery_op_id(&name, 0));
            assert_eq!(deployment, "d");
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(d[0], d[1], "the same proposal (idempotent)");
    let fails: Vec<usize> = down
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Output::Probe { .. }))
        .map(|(i, _)| i)
        .collect();
    let decided_at = down
        .iter()
        .position(|o| matches!(o, Output::Recover { .. }))
        .unwrap();
    assert!(
        fails.iter().filter(|i| **i < decided_at).count() == 3,
        "decided on the third missed poll"
    );
    // The recovery starts (the VM is paused): no probe, no decision.
    let mut paused = vm(0, Phase::Paused);
    paused.recoveries = 0;
    m.handle(
        1_012_000,
        Input::Vms {
            upsert: vec![paused],
            gone: vec![],
        },
    );
    let quiet = run(&mut m, 1_012_000, 1_020_000, &|_| None);
    assert!(quiet.is_empty(), "{quiet:?}");
    // Back, running, one recovery later: the next failure is a new id.
    let mut back = vm(0, Phase::Running);
    back.recoveries = 1;
    m.handle(
        1_020_000,
        Input::Vms {
            upsert: vec![back],
            gone: vec![],
        },
    );
    let again = decisions(&run(&mut m, 1_020_000, 1_025_000, &|_| None));
    assert!(
        matches!(&again[0], Output::Recover { op_id, .. } if *op_id == recovery_op_id(&name, 1)),
        "{again:?}"
    );
}

#[test]
fn a_booting_vm_is_alive_on_its_first_answer_or_fails_at_its_deadline() {
    let booting = |op: &str| Phase::Booting {
        op: op.into(),
        deadline_ms: 1_005_000,
    };
    let mut a = vm(0, booting("op1"));
    // Only the bootup check runs while booting.
    a.kpis.push(kpi("VM_OVERLOADED", 1, 1));
    let mut m = leading(vec![a, vm(1, booting("op1"))]);
    let out = run(&mut m, 1_000_000, 1_004_000, &|v| {
        v.ends_with("-0-g0").then_some(1.0)
    });
    let d = decisions(&out);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(matches!(&d[0], Output::Alive { op, key } if op == "op1" && key.index == 0));
    let overloaded = out.iter().any(|o| {
        matches!(o, Output::Probe { vm, target: Target::Icmp { .. }, .. } if vm.ends_with("-0-g0"))
    });
    assert!(overloaded);
    assert_eq!(
        probes(&out)
            .iter()
            .filter(|(_, v)| v.ends_with("-0-g0"))
            .count(),
        4,
        "one KPI polled while booting"
    );
    // VM 1 never answers: its deadline.
    let out = run(&mut m, 1_004_000, 1_006_000, &|_| None);
    let d = decisions(&out);
    assert!(
        matches!(&d[0], Output::BootupFailed { op, key, .. } if op == "op1" && key.index == 1),
        "{d:?}"
    );
}

#[test]
fn a_new_term_keeps_the_rhythm_and_a_standby_probes_nothing() {
    let vms: Vec<Watched> = (0..50).map(|i| vm(i, Phase::Running)).collect();
    // The slots alone (the catch-up of a takeover's blackout aside).
    let mut standby = Monitor::new(Config {
        catch_up_ms: 0,
        ..Config::default()
    });
    standby.handle(
        0,
        Input::Vms {
            upsert: vms.clone(),
            gone: vec![],
        },
    );
    assert!(run(&mut standby, 1_000_000, 1_002_000, &|_| Some(3.0)).is_empty());
    let mut primary = leading(vms);
    let first = |m: &mut Monitor, from: u64| -> BTreeMap<String, u64> {
        let mut at = BTreeMap::new();
        let mut t = from;
        while t < from + 1_000 {
            for (_, name) in probes(&m.handle(t, Input::Tick)) {
                at.entry(name).or_insert(t % 1_000);
            }
            t += 10;
        }
        at
    };
    let old = first(&mut primary, 1_000_000);
    standby.handle(1_500_000, Input::Lead { epoch: 2 });
    let new = first(&mut standby, 1_500_000);
    assert_eq!(old, new, "each VM keeps its place in the period");
    // Unlead: nothing more.
    standby.handle(1_501_000, Input::Unlead);
    assert!(run(&mut standby, 1_501_000, 1_503_000, &|_| None).is_empty());
}

#[test]
fn a_metric_read_from_a_body_counts_only_when_there_is_one() {
    let mut w = vm(0, Phase::Running);
    w.kpis = vec![serde_json::from_value(serde_json::json!({
        "event_name": "VM_OVERLOADED", "metric_value": 80, "metric_cond": "GT",
        "metric_occurrences_true": 2, "metric_occurrences_false": 2,
        "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": 1,
                              "port": 8080, "path": "/metrics", "metric": "cpu" }
    }))
    .unwrap()];
    w.rules = vec![rule("VM_OVERLOADED", &["TRUE log"])];
    let mut m = leading(vec![w]);
    // No body: no sample, no log.
    let out = run(&mut m, 1_000_000, 1_003_000, &|_| None);
    assert!(!out.iter().any(|o| matches!(o, Output::Log { .. })));
    assert!(out.iter().any(|o| matches!(o,
        Output::Probe { target: Target::Http { port: 8080, path, metric: Some(m), .. }, .. }
        if path == "/metrics" && m == "cpu")));
    // Two polls over the threshold: the KPI turns TRUE once.
    let out = run(&mut m, 1_003_000, 1_008_000, &|_| Some(95.0));
    let logs = out
        .iter()
        .filter(|o| matches!(o, Output::Log { .. }))
        .count();
    assert_eq!(logs, 1);
}

/// A VM of a group scaled by its load (an HTTP metric): out above 80,
/// in below 20, each after two samples.
fn loaded_vm(i: u32, scale: GroupScale) -> Watched {
    let k = |event: &str, cond: &str, value: u32| -> Kpi {
        serde_json::from_value(serde_json::json!({
            "event_name": event, "metric_value": value, "metric_cond": cond,
            "metric_occurrences_true": 2, "metric_occurrences_false": 1,
            "metric_collector": { "type": "HTTPGet", "nicid": 0, "poll_frequency": 1,
                                  "port": 8080, "path": "/metrics", "metric": "load" }
        }))
        .unwrap()
    };
    Watched {
        kpis: vec![k("VM_OVERLOADED", "GT", 80), k("VM_UNDERLOADED", "LT", 20)],
        rules: vec![
            rule("VM_OVERLOADED", &["TRUE scale_out"]),
            rule("VM_UNDERLOADED", &["TRUE scale_in"]),
        ],
        scale,
        ..vm(i, Phase::Running)
    }
}

fn scales(out: &[Output]) -> Vec<(String, bool)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Scale { op_id, out, .. } => Some((op_id.clone(), *out)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_load_scales_its_group_within_bounds_after_the_cooldown() {
    let group = |vms: u32, settled_at_ms: Option<u64>| GroupScale {
        vms,
        min_active: 1,
        max_active: 3,
        cooldown_ms: 60_000,
        started: 4,
        settled_at_ms,
        busy: false,
    };
    let id = scale_op_id("d", "g", 4);
    // Overloaded: one step out, the same operation whichever VM decides
    // it (and whichever node: the id is the group's scale count).
    let mut m = leading(vec![
        loaded_vm(0, group(2, None)),
        loaded_vm(1, group(2, None)),
    ]);
    let got = scales(&run(&mut m, 1_000_000, 1_003_000, &|_| Some(90.0)));
    assert!(!got.is_empty());
    assert!(got.iter().all(|s| *s == (id.clone(), true)), "{got:?}");
    // Underloaded: one step in.
    let mut m = leading(vec![loaded_vm(0, group(2, None))]);
    let got = scales(&run(&mut m, 1_000_000, 1_003_000, &|_| Some(10.0)));
    assert_eq!(got, [(id.clone(), false)]);
    // Neither past the bounds...
    let mut m = leading(vec![loaded_vm(0, group(3, None))]);
    assert_eq!(
        scales(&run(&mut m, 1_000_000, 1_005_000, &|_| Some(90.0))),
        []
    );
    let mut m = leading(vec![loaded_vm(0, group(1, None))]);
    assert_eq!(
        scales(&run(&mut m, 1_000_000, 1_005_000, &|_| Some(10.0))),
        []
    );
    // ...nor within the cooldown of the last scale (settled 50 s before):
    // held back, then taken once it passed, the load still high.
    let mut m = leading(vec![loaded_vm(0, group(2, Some(950_000)))]);
    assert_eq!(
        scales(&run(&mut m, 1_000_000, 1_009_000, &|_| Some(90.0))),
        []
    );
    let got = scales(&run(&mut m, 1_009_000, 1_012_000, &|_| Some(90.0)));
    assert_eq!(got, [(id.clone(), true)]);
    // Nor while the deployment has an operation in progress.
    let mut busy = group(2, None);
    busy.busy = true;
    let mut m = leading(vec![loaded_vm(0, busy)]);
    assert_eq!(
        scales(&run(&mut m, 1_000_000, 1_005_000, &|_| Some(90.0))),
        []
    );
    // No sample (a body without the metric): no count, no step.
    let mut m = leading(vec![loaded_vm(0, group(2, None))]);
    assert_eq!(scales(&run(&mut m, 1_000_000, 1_005_000, &|_| None)), []);
}

/// Every probe time per VM while `m` runs from `from` to `to`.
fn probe_times(m: &mut Monitor, from: u64, to: u64, times: &mut BTreeMap<String, Vec<u64>>) {
    let mut t = from;
    while t < to {
        let out = m.handle(t, Input::Tick);
        for (probe, name) in probes(&out) {
            times.entry(name).or_default().push(t);
            m.handle(
                t,
                Input::Result {
                    probe,
                    value: Some(3.0),
                },
            );
        }
        t += 10;
    }
}

/// A takeover 800 ms long: the new primary probes at once (within 250 ms)
/// each VM whose slot the blackout swallowed, so no VM goes more than its
/// period plus the blackout and that spread without a probe (and without
/// the catch-up, some wait two periods).
#[test]
fn across_a_takeover_no_vm_waits_much_more_than_its_period() {
    let vms = || -> Vec<Watched> {
        (0..500)
            .map(|i| Watched {
                kpis: vec![kpi("VM_ALIVE", 10, 3)],
                ..vm(i, Phase::Running)
            })
            .collect()
    };
    let longest = |catch_up_ms: u64| {
        let mut times = BTreeMap::new();
        let mut old = leading(vms());
        let fault = 1_050_000;
        probe_times(&mut old, 1_000_000, fault, &mut times);
        let mut new = Monitor::new(Config {
            catch_up_ms,
            ..Config::default()
        });
        new.handle(
            0,
            Input::Vms {
                upsert: vms(),
                gone: vec![],
            },
        );
        let lead = fault + 800;
        let first = new.handle(lead, Input::Lead { epoch: 2 });
        for (probe, name) in probes(&first) {
            times.entry(name).or_default().push(lead);
            new.handle(
                lead,
                Input::Result {
                    probe,
                    value: Some(3.0),
                },
            );
        }
        probe_times(&mut new, lead + 10, fault + 40_000, &mut times);
        times
            .values()
            .flat_map(|t| t.windows(2).map(|w| w[1] - w[0]))
            .max()
            .unwrap()
    };
    let with = longest(Config::default().catch_up_ms);
    // The period, the blackout, the spread of the caught-up probes (250
    // ms) and a tick.
    assert!(with <= 10_000 + 800 + 250 + 10, "{with} ms");
    let without = longest(0);
    assert!(without > 15_000, "{without} ms");
}

/// A VM that comes up while the node leads is asked at once whether it is
/// alive (its slot may be most of a period away), then at its slots.
#[test]
fn a_vm_just_up_is_probed_at_once() {
    let mut m = leading(vec![]);
    let w = Watched {
        kpis: vec![kpi("VM_ALIVE", 10, 3)],
        ..vm(
            0,
            Phase::Booting {
                op: "op".into(),
                deadline_ms: 2_000_000,
            },
        )
    };
    m.handle(
        1_000_000,
        Input::Vms {
            upsert: vec![w],
            gone: vec![],
        },
    );
    let out = run(&mut m, 1_000_000, 1_000_260, &|_| None);
    assert_eq!(probes(&out).len(), 1, "within 250 ms of coming up");
    // Then at its slots: one per period.
    let out = run(&mut m, 1_000_260, 1_030_260, &|_| None);
    assert_eq!(probes(&out).len(), 3);
}

/// ESC's `recovery_wait_time`: a VM whose recovery rule fired gets that
/// long to come back by itself; the recovery starts only if it has not.
#[test]
fn a_recovery_waits_out_the_recovery_wait_time() {
    let waiting = |i: u32| Watched {
        recovery_wait_ms: 5_000,
        ..vm(i, Phase::Running)
    };
    // Down for good: three misses (by 1,003,000), then 5 s more.
    let mut m = leading(vec![waiting(0)]);
    let early = run(&mut m, 1_000_000, 1_007_000, &|_| None);
    assert!(decisions(&early).is_empty(), "{:?}", decisions(&early));
    let late = run(&mut m, 1_007_000, 1_010_000, &|_| None);
    assert!(
        matches!(decisions(&late).as_slice(), [Output::Recover { .. }]),
        "{:?}",
        decisions(&late)
    );
    // Back within the wait: no recovery at all.
    let mut m = leading(vec![waiting(1)]);
    run(&mut m, 1_000_000, 1_004_500, &|_| None);
    let back = run(&mut m, 1_004_500, 1_020_000, &|_| Some(3.0));
    assert!(
        !back.iter().any(|o| matches!(o, Output::Recover { .. })),
        "{:?}",
        decisions(&back)
    );
}
