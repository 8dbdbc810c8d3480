//! A VM group's KPIs and rules (issue 12, items 1, 2 and "Done when": bad
//! definitions refused at deploy time, each with its field).

use esc_domain::model::DeploymentSpec;

fn group(kpis: serde_json::Value, rules: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": "d", "tenant": "t",
        "vm_groups": [{
            "name": "g", "image": "i", "flavor": "f",
            "scaling": { "min_active": 1, "max_active": 2 },
            "interfaces": [{ "nicid": 0, "network": "n" }],
            "kpis": kpis, "rules": rules
        }]
    })
}

fn alive_kpi() -> serde_json::Value {
    serde_json::json!({
        "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
        "metric_occurrences_true": 1, "metric_occurrences_false": 3,
        "metric_collector": { "type": "ICMPPing", "nicid": 0, "poll_frequency": 3,
                              "polling_unit": "seconds" }
    })
}

fn alive_rule() -> serde_json::Value {
    serde_json::json!({ "event_name": "VM_ALIVE",
        "actions": ["ALWAYS log", "FALSE recover autohealing", "TRUE esc_vm_alive_notification"] })
}

fn error_of(v: serde_json::Value) -> String {
    DeploymentSpec::from_json(&serde_json::to_vec(&v).unwrap())
        .unwrap_err()
        .to_string()
}

#[test]
fn escs_bootup_check_parses_and_is_found() {
    let v = group(
        serde_json::json!([alive_kpi()]),
        serde_json::json!([alive_rule()]),
    );
    let d = DeploymentSpec::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
    let g = &d.vm_groups[0];
    assert_eq!(g.bootup_time, 300, "ESC's default");
    let k = esc_domain::kpi::bootup_kpi(&g.kpis, &g.rules).unwrap();
    assert_eq!(k.metric_collector.period_ms(), 3_000);
    assert_eq!(
        g.rules[0].parsed()[1],
        (
            esc_domain::kpi::When::FALSE,
            esc_domain::kpi::Action::Recover
        )
    );
    assert!(
        esc_domain::kpi::Cond::GE.holds(1.0, 1.0) && !esc_domain::kpi::Cond::GT.holds(1.0, 1.0)
    );
}

/// The refusals the issue names (an unknown collector, a poll of 0, a
/// condition on a missing metric) and their neighbours, each with its
/// field.
#[test]
fn bad_kpis_and_rules_are_refused_with_their_field() {
    let rules = serde_json::json!([alive_rule()]);
    let mut k = alive_kpi();
    k["metric_collector"]["type"] = "SNMPWalk".into();
    let e = error_of(group(serde_json::json!([k]), rules.clone()));
    assert!(
        e.starts_with("vm_groups[0].kpis[0].metric_collector.type: unknown variant `SNMPWalk`"),
        "{e}"
    );
    let mut k = alive_kpi();
    k["metric_collector"]["poll_frequency"] = 0.into();
    assert!(error_of(group(serde_json::json!([k]), rules.clone()))
        .starts_with("vm_groups[0].kpis[0].metric_collector.poll_frequency: must be at least 1"));
    // A rule on a metric no KPI collects.
    let r = serde_json::json!([{ "event_name": "VM_OVERLOADED", "actions": ["TRUE scale_out"] }]);
    let e = error_of(group(serde_json::json!([alive_kpi()]), r));
    assert!(
        e.starts_with(
            "vm_groups[0].rules[0].event_name: no KPI of the group has the event \"VM_OVERLOADED\""
        ),
        "{e}"
    );
    let mut k = alive_kpi();
    k["metric_collector"]["nicid"] = 3.into();
    assert!(error_of(group(serde_json::json!([k]), rules.clone()))
        .starts_with("vm_groups[0].kpis[0].metric_collector.nicid:"));
    let mut k = alive_kpi();
    k["metric_collector"]["metric"] = "cpu".into();
    assert!(error_of(group(serde_json::json!([k]), rules.clone()))
        .starts_with("vm_groups[0].kpis[0].metric_collector.metric: only an HTTPGet"));
    let mut k = alive_kpi();
    k["metric_collector"]["type"] = "TCPConnect".into();
    assert!(
        error_of(group(serde_json::json!([k]), rules.clone())).starts_with(
            "vm_groups[0].kpis[0].metric_collector.port: a TCPConnect collector needs a port"
        )
    );
    let mut k = alive_kpi();
    k["metric_cond"] = "ABOUT".into();
    assert!(error_of(group(serde_json::json!([k]), rules.clone()))
        .starts_with("vm_groups[0].kpis[0].metric_cond: unknown variant"));
    let bad = serde_json::json!([{ "event_name": "VM_ALIVE", "actions": ["SOMETIMES log"] }]);
    assert!(error_of(group(serde_json::json!([alive_kpi()]), bad))
        .starts_with("vm_groups[0].rules[0].actions[0]: must start with ALWAYS, TRUE or FALSE"));
    let bad = serde_json::json!([{ "event_name": "VM_ALIVE", "actions": ["TRUE script run.sh"] }]);
    assert!(error_of(group(serde_json::json!([alive_kpi()]), bad))
        .starts_with("vm_groups[0].rules[0].actions[0]: a script is named by its absolute path"));
    let bad = serde_json::json!([{ "event_name": "VM_ALIVE", "actions": ["ALWAYS recover autohealing"] }]);
    assert!(
        error_of(group(serde_json::json!([alive_kpi()]), bad)).starts_with(
            "vm_groups[0].rules[0].actions[0]: a recovery or a scaling runs on TRUE or FALSE"
        )
    );
    let mut v = group(serde_json::json!([alive_kpi()]), rules);
    v["vm_groups"][0]["bootup_time"] = 0.into();
    assert!(error_of(v).starts_with("vm_groups[0].bootup_time:"));
}
