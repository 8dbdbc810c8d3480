//! Monitoring definitions of a VM group (issue 12, items 1 and 2), in ESC's
//! vocabulary (esc-facts, "The service in detail"): KPIs (`kpi_data/kpi`:
//! what to poll and the condition on the value) and rules (`rules/
//! admin_rules/rule`: what to do when a KPI's condition turns true or
//! false). Validated with the deployment, every error naming its field;
//! what only a node's file system can tell (a script is executable) is
//! checked where the deployment is accepted.
//!
//! ```json
//! "kpis": [{ "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
//!            "metric_occurrences_true": 1, "metric_occurrences_false": 3,
//!            "metric_collector": { "type": "ICMPPing", "nicid": 0,
//!                                  "poll_frequency": 3, "polling_unit": "seconds" } }],
//! "rules": [{ "event_name": "VM_ALIVE",
//!             "actions": ["ALWAYS log", "FALSE recover autohealing",
//!                         "TRUE esc_vm_alive_notification"] }]
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// Bounds (style: a limit on everything).
pub const KPIS_MAX: usize = 16;
pub const RULES_MAX: usize = 16;
pub const ACTIONS_PER_RULE_MAX: usize = 8;
/// Longest poll period, seconds (a day).
pub const POLL_S_MAX: u64 = 86_400;
pub const OCCURRENCES_MAX: u32 = 1_000;
pub const SCRIPT_ARGS_MAX: usize = 16;
pub const SCRIPT_TIMEOUT_S_MAX: u64 = 600;
/// Longest a VM may take to answer its bootup check, seconds.
pub const BOOTUP_S_MAX: u64 = 3_600;
/// The event name of the bootup check.
pub const VM_ALIVE: &str = "VM_ALIVE";

/// One KPI: a metric polled on every VM of the group, and the condition on
/// it that the rules act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kpi {
    /// What the rules call it (`VM_ALIVE`, `VM_OVERLOADED`, ...).
    pub event_name: String,
    pub metric_value: f64,
    pub metric_cond: Cond,
    #[serde(default)]
    pub metric_type: MetricType,
    /// Polls in a row whose condition holds before the KPI turns TRUE...
    #[serde(default = "one")]
    pub metric_occurrences_true: u32,
    /// ...and does not hold before it turns FALSE.
    #[serde(default = "one")]
    pub metric_occurrences_false: u32,
    pub metric_collector: Collector,
}

// JSON has no NaN and validation refuses infinities: equality is total.
impl Eq for Kpi {}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Cond {
    GT,
    LT,
    GE,
    LE,
    EQ,
}

impl Cond {
    /// `value <cond> threshold`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Cond::GT => value > threshold,
            Cond::LT => value < threshold,
            Cond::GE => value >= threshold,
            Cond::LE => value <= threshold,
            Cond::EQ => value == threshold,
        }
    }
}

/// ESC's `metric_type` (the value's type; a value outside it is no sample).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum MetricType {
    #[default]
    UINT32,
    INT32,
    UINT64,
    INT64,
    FLOAT,
    DOUBLE,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Collector {
    #[serde(rename = "type")]
    pub kind: CollectorType,
    /// The interface whose address is probed.
    #[serde(default)]
    pub nicid: u8,
    pub poll_frequency: u64,
    #[serde(default)]
    pub polling_unit: PollingUnit,
    /// Act on every poll while the condition stays, not only when it turns.
    #[serde(default)]
    pub continuous_alarm: bool,
    /// TCP and HTTP: the port (HTTP: 80 if not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: the path (`/` if not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: the status that counts as an answer (200 if not given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// HTTP: the value is this number in the JSON body (a key, or keys
    /// joined by `.`); without it, the value is 1 for the expected status
    /// and 0 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
}

/// How a metric is collected. ICMP: echo requests on the VM's address, the
/// value the number of replies of [`ICMP_ECHOES`]; TCP: 1 if a connection
/// opens, else 0; HTTP: a GET (see [`Collector::metric`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum CollectorType {
    ICMPPing,
    TCPConnect,
    HTTPGet,
}

/// Echo requests per ICMP poll.
pub const ICMP_ECHOES: u32 = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PollingUnit {
    #[default]
    Seconds,
    Minutes,
}

impl Collector {
    /// The poll period in milliseconds.
    pub fn period_ms(&self) -> u64 {
        let unit = match self.polling_unit {
            PollingUnit::Seconds => 1_000,
            PollingUnit::Minutes => 60_000,
        };
        self.poll_frequency.saturating_mul(unit)
    }
}

/// What to do on a KPI's event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub event_name: String,
    /// ESC's action lines: `<ALWAYS|TRUE|FALSE> <action>` (see [`Action`]).
    pub actions: Vec<String>,
    /// How long a `script` action may run, seconds.
    #[serde(default = "Rule::default_script_timeout")]
    pub script_timeout: u64,
}

impl Rule {
    fn default_script_timeout() -> u64 {
        30
    }
}

/// When an action runs: on every poll's outcome, or when the KPI turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum When {
    ALWAYS,
    TRUE,
    FALSE,
}

/// One parsed action line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// `log`: a line in the node's log.
    Log,
    /// `esc_vm_alive_notification`: the VM answered its bootup check.
    Alive,
    /// `recover autohealing`: the group's recovery policy.
    Recover,
    /// `scale_out` / `scale_in`: one VM more or less, within the bounds.
    ScaleOut,
    ScaleIn,
    /// `script <path> [args...]`: run without a shell, with a timeout.
    Script {
        path: String,
        args: Vec<String>,
    },
}

impl Action {
    /// Parses `<ALWAYS|TRUE|FALSE> <action>`.
    pub fn parse(line: &str) -> Result<(When, Action), String> {
        let mut words = line.split_whitespace();
        let when = match words.next() {
            Some("ALWAYS") => When::ALWAYS,
            Some("TRUE") => When::TRUE,
            Some("FALSE") => When::FALSE,
            _ => return Err("must start with ALWAYS, TRUE or FALSE".into()),
        };
        let rest: Vec<&str> = words.collect();
        let action = match rest.as_slice() {
            ["log"] => Action::Log,
            ["esc_vm_alive_notification"] => Action::Alive,
            ["recover", "autohealing"] => Action::Recover,
            ["scale_out"] => Action::ScaleOut,
            ["scale_in"] => Action::ScaleIn,
            ["script", path, args @ ..] => {
                if !path.starts_with('/') {
                    return Err("a script is named by its absolute path".into());
                }
                if args.len() > SCRIPT_ARGS_MAX {
                    return Err(format!("at most {SCRIPT_ARGS_MAX} script arguments"));
                }
                Action::Script {
                    path: path.to_string(),
                    args: args.iter().map(|a| a.to_string()).collect(),
                }
            }
            _ => {
                return Err(
                    "the actions are log, esc_vm_alive_notification, recover autohealing, scale_out, scale_in and script <path> [args]"
                        .into(),
                )
            }
        };
        Ok((when, action))
    }
}

impl Rule {
    /// The parsed actions (validated: every line parses).
    pub fn parsed(&self) -> Vec<(When, Action)> {
        self.actions
            .iter()
            .filter_map(|a| Action::parse(a).ok())
            .collect()
    }
}

/// Validates a group's KPIs and rules (`p` prefixes each field's path);
/// `nicids`: the group's interfaces.
pub fn validate(
    kpis: &[Kpi],
    rules: &[Rule],
    bootup_time: u64,
    nicids: &BTreeSet<u8>,
    p: &dyn Fn(&str) -> String,
) -> Result<(), (String, String)> {
    let err = |path: String, m: &str| Err((path, m.to_string()));
    if kpis.len() > KPIS_MAX {
        return err(p("kpis"), &format!("at most {KPIS_MAX} KPIs"));
    }
    if rules.len() > RULES_MAX {
        return err(p("rules"), &format!("at most {RULES_MAX} rules"));
    }
    if bootup_time == 0 || bootup_time > BOOTUP_S_MAX {
        return err(p("bootup_time"), &format!("1 to {BOOTUP_S_MAX} seconds"));
    }
    let mut events = BTreeSet::new();
    for (k, kpi) in kpis.iter().enumerate() {
        let pk = |f: &str| p(&format!("kpis[{k}].{f}"));
        crate::rules::check_name(&kpi.event_name).map_err(|e| (pk("event_name"), e.message))?;
        if !events.insert(kpi.event_name.as_str()) {
            return err(pk("event_name"), "is used by another KPI of the group");
        }
        if !kpi.metric_value.is_finite() {
            return err(pk("metric_value"), "must be a finite number");
        }
        for (f, n) in [
            ("metric_occurrences_true", kpi.metric_occurrences_true),
            ("metric_occurrences_false", kpi.metric_occurrences_false),
        ] {
            if n == 0 || n > OCCURRENCES_MAX {
                return err(pk(f), &format!("1 to {OCCURRENCES_MAX}"));
            }
        }
        let c = &kpi.metric_collector;
        let pc = |f: &str| pk(&format!("metric_collector.{f}"));
        if c.poll_frequency == 0 || c.period_ms() > POLL_S_MAX * 1_000 {
            return err(
                pc("poll_frequency"),
                &format!("must be at least 1, and the period at most {POLL_S_MAX} seconds"),
            );
        }
        if !nicids.contains(&c.nicid) {
            return err(pc("nicid"), "the group has no interface of this nicid");
        }
        let http = c.kind == CollectorType::HTTPGet;
        match c.kind {
            CollectorType::TCPConnect if c.port.is_none() => {
                return err(pc("port"), "a TCPConnect collector needs a port")
            }
            _ => {}
        }
        if c.port == Some(0) {
            return err(pc("port"), "must be 1 to 65535");
        }
        for (f, set) in [
            ("path", c.path.is_some()),
            ("status", c.status.is_some()),
            ("metric", c.metric.is_some()),
        ] {
            if set && !http {
                return err(pc(f), "only an HTTPGet collector takes it");
            }
        }
        if let Some(path) = &c.path {
            if !path.starts_with('/')
                || path.len() > 1_024
                || !path.bytes().all(|b| b.is_ascii_graphic())
            {
                return err(
                    pc("path"),
                    "an absolute URL path of visible ASCII, at most 1024 characters",
                );
            }
        }
        if let Some(m) = &c.metric {
            if m.is_empty() || m.len() > 255 || m.split('.').any(str::is_empty) {
                return err(
                    pc("metric"),
                    "a key of the JSON body, or keys joined by `.`",
                );
            }
        }
        if let Some(s) = c.status {
            if !(100..=599).contains(&s) {
                return err(pc("status"), "an HTTP status, 100 to 599");
            }
        }
    }
    for (r, rule) in rules.iter().enumerate() {
        let pr = |f: &str| p(&format!("rules[{r}].{f}"));
        let Some(kpi) = kpis.iter().find(|k| k.event_name == rule.event_name) else {
            return err(
                pr("event_name"),
                &format!(
                    "no KPI of the group has the event {:?}: a rule acts on a KPI's metric",
                    rule.event_name
                ),
            );
        };
        if rule.actions.is_empty() || rule.actions.len() > ACTIONS_PER_RULE_MAX {
            return err(
                pr("actions"),
                &format!("1 to {ACTIONS_PER_RULE_MAX} actions"),
            );
        }
        if rule.script_timeout == 0 || rule.script_timeout > SCRIPT_TIMEOUT_S_MAX {
            return err(
                pr("script_timeout"),
                &format!("1 to {SCRIPT_TIMEOUT_S_MAX} seconds"),
            );
        }
        for (a, line) in rule.actions.iter().enumerate() {
            let (when, action) =
                Action::parse(line).map_err(|m| (pr(&format!("actions[{a}]")), m))?;
            let pa = pr(&format!("actions[{a}]"));
            if action == Action::Alive && kpi.event_name != VM_ALIVE {
                return err(
                    pa,
                    "esc_vm_alive_notification acts on the VM_ALIVE KPI only",
                );
            }
            if matches!(action, Action::Recover | Action::ScaleOut | Action::ScaleIn)
                && when == When::ALWAYS
            {
                return err(
                    pa,
                    "a recovery or a scaling runs on TRUE or FALSE, not ALWAYS",
                );
            }
        }
    }
    Ok(())
}

/// The group's bootup check: its VM_ALIVE KPI, if a rule marks VMs alive
/// from it.
pub fn bootup_kpi<'a>(kpis: &'a [Kpi], rules: &[Rule]) -> Option<&'a Kpi> {
    let kpi = kpis.iter().find(|k| k.event_name == VM_ALIVE)?;
    rules
        .iter()
        .filter(|r| r.event_name == VM_ALIVE)
        .flat_map(|r| r.parsed())
        .any(|(_, a)| a == Action::Alive)
        .then_some(kpi)
}

/// Every script the rules run (checked executable where a deploy is
/// accepted), with the path of its action.
pub fn scripts(rules: &[Rule]) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        for (a, line) in rule.actions.iter().enumerate() {
            if let Ok((_, Action::Script { path, .. })) = Action::parse(line) {
                out.push((r, a, path));
            }
        }
    }
    out
}
