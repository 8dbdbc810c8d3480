//! The service's model (issue 11, item 1): tenants and deployments holding
//! VM groups, in JSON, strictly validated; every error names the field
//! (`vm_groups[0].scaling.min_active: ...`). The states carry ESC's names;
//! lifecycle operations carry ETSI NFV-SOL 003's.
//!
//! The commands carry it (`Op::CreateTenant`, `Op::StartOperation`,
//! `Op::RecordStep`); `lifecycle` applies the operation records and steps.

use crate::rules::{check_name, InvalidCommand};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;

/// Bounds of a deployment (every list has one; style: a limit on everything).
pub const VM_GROUPS_MAX: usize = 32;
pub const VMS_PER_GROUP_MAX: u32 = 1_000;
pub const INTERFACES_MAX: usize = 16;
pub const CONFIG_FILES_MAX: usize = 16;
pub const CONFIG_FILE_BYTES_MAX: usize = 64 * 1024;
pub const RETRIES_MAX: u32 = 10;
pub const RECOVERY_WAIT_S_MAX: u64 = 3_600;
pub const PROPERTIES_MAX: usize = 64;
/// Names and values of a deployment's properties, in all.
pub const PROPERTIES_BYTES_MAX: usize = 512 * 1024;
/// Longest server name (Nova's `server.name`).
pub const SERVER_NAME_LEN_MAX: usize = 255;
/// Longest callback URL.
pub const CALLBACK_URL_LEN_MAX: usize = 2_048;

/// A tenant (ESC's `tenant`: the owner of deployments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "tenant-a", "description": "the firewall team"}))]
pub struct Tenant {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1024)]
    pub description: String,
}

/// A deployment as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!(DeploymentSpec::example()))]
pub struct DeploymentSpec {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub name: String,
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub tenant: String,
    /// None: a deployment of no VM (it is active at once).
    #[serde(default)]
    #[schema(max_items = 32)]
    pub vm_groups: Vec<VmGroup>,
    /// Name -> value pairs kept with the deployment for its owner (ESC's
    /// deployment properties); the manager does not read them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmGroup {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub name: String,
    /// An image of the VIM, by name.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub image: String,
    /// A flavor of the VIM, by name.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub flavor: String,
    pub scaling: Scaling,
    #[schema(min_items = 1, max_items = 16)]
    pub interfaces: Vec<Interface>,
    /// Day-0 configuration, delivered to each VM at creation.
    #[serde(default)]
    #[schema(max_items = 16)]
    pub config_data: Vec<ConfigFile>,
    #[serde(default)]
    pub recovery_policy: RecoveryPolicy,
    /// What the monitor polls on each VM (`crate::kpi`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kpis: Vec<crate::kpi::Kpi>,
    /// What it does on a KPI's events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<crate::kpi::Rule>,
    /// Seconds a new or recovered VM has to answer its bootup check (the
    /// VM_ALIVE KPI) before it is recovered.
    #[serde(default = "VmGroup::default_bootup_time")]
    pub bootup_time: u64,
}

impl VmGroup {
    fn default_bootup_time() -> u64 {
        300
    }
}

/// How many VMs: the group starts with `min_active`, scaling keeps it
/// between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    #[schema(minimum = 1, maximum = 1000)]
    pub min_active: u32,
    #[schema(minimum = 1, maximum = 1000)]
    pub max_active: u32,
    /// Seconds after a scale operation of the group settles before the
    /// monitor scales it again (its new VM's effect on the load needs
    /// time to show).
    #[serde(default = "Scaling::default_cooldown")]
    #[schema(maximum = 86400)]
    pub cooldown: u64,
}

impl Scaling {
    fn default_cooldown() -> u64 {
        60
    }
}

/// Longest `scaling.cooldown`, seconds.
pub const SCALE_COOLDOWN_S_MAX: u64 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// ESC's `nicid`: the interface's position on the VM, from 0.
    pub nicid: u8,
    /// A network of the VIM, by name.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,255}$")]
    pub network: String,
    /// Fixed addresses, one per VM index (at most `max_active`); none: the
    /// VIM assigns them.
    #[serde(default)]
    #[schema(schema_with = ipv4_list)]
    pub ip_addresses: Vec<std::net::Ipv4Addr>,
}

/// `Interface::ip_addresses` in the API's document: IPv4 addresses.
fn ipv4_list() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Ipv4))),
        )
        .build()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the VM finds it (an absolute path).
    pub file: String,
    pub data: String,
}

/// What a failed VM gets (ESC's recovery policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPolicy {
    #[serde(default = "RecoveryPolicy::default_action")]
    pub action: RecoveryAction,
    #[serde(default = "RecoveryPolicy::default_retries")]
    #[schema(maximum = 10)]
    pub max_retries: u32,
    /// Wait before a recovery, seconds.
    #[serde(default)]
    #[schema(maximum = 3600)]
    pub recovery_wait_time: u64,
}

impl RecoveryPolicy {
    fn default_action() -> RecoveryAction {
        RecoveryAction::RebootThenRedeploy
    }

    fn default_retries() -> u32 {
        3
    }
}

impl Default for RecoveryPolicy {
    fn default() -> RecoveryPolicy {
        RecoveryPolicy {
            action: RecoveryPolicy::default_action(),
            max_retries: RecoveryPolicy::default_retries(),
            recovery_wait_time: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RecoveryAction {
    RebootThenRedeploy,
    RebootOnly,
    RedeployOnly,
}

/// A deployment's state, in ESC's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ServiceState {
    #[serde(rename = "SERVICE_DEPLOYING_STATE")]
    Deploying,
    #[serde(rename = "SERVICE_ACTIVE_STATE")]
    Active,
    #[serde(rename = "SERVICE_UPDATING_STATE")]
    Updating,
    #[serde(rename = "SERVICE_ERROR_STATE")]
    Error,
    #[serde(rename = "SERVICE_UNDEPLOYING_STATE")]
    Undeploying,
}

/// A VM's state, in ESC's words. ALIVE: the VIM reports it running and its
/// bootup check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum VmState {
    #[serde(rename = "VM_DEPLOYING_STATE")]
    Deploying,
    #[serde(rename = "VM_ALIVE_STATE")]
    Alive,
    #[serde(rename = "VM_ERROR_STATE")]
    Error,
    #[serde(rename = "VM_SHUTOFF_STATE")]
    Shutoff,
    #[serde(rename = "VM_REBOOTING_STATE")]
    Rebooting,
    #[serde(rename = "VM_UNDEPLOYING_STATE")]
    Undeploying,
    /// A manual `STOP` in progress.
    #[serde(rename = "VM_STOPPING_STATE")]
    Stopping,
    /// A manual `START` in progress.
    #[serde(rename = "VM_STARTING_STATE")]
    Starting,
}

/// A lifecycle operation occurrence's state (ETSI NFV-SOL 003, "LcmOperationStateType").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationState {
    Starting,
    Processing,
    Completed,
    FailedTemp,
    Failed,
    RollingBack,
    RolledBack,
}

impl OperationState {
    /// No further step will run on its own.
    pub fn settled(self) -> bool {
        matches!(
            self,
            OperationState::Completed
                | OperationState::Failed
                | OperationState::FailedTemp
                | OperationState::RolledBack
        )
    }
}

/// The VIM server of one VM: its name and metadata derive from the
/// deployment, the group, the index and the generation (bumped by each
/// redeploy), so a lookup before a create finds a server an earlier
/// primary made and never makes a second one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct VmKey {
    pub deployment_id: String,
    pub group: String,
    pub index: u32,
    pub generation: u32,
}

impl VmKey {
    /// `esc-<deployment id>-<group>-<index>-g<generation>`.
    pub fn server_name(&self) -> String {
        format!(
            "esc-{}-{}-{}-g{}",
            self.deployment_id, self.group, self.index, self.generation
        )
    }

    /// The metadata every server of this manager carries (how the new
    /// primary finds what the old one made), `op` the operation creating
    /// it (only that operation adopts it).
    pub fn metadata(&self, op: &str) -> Vec<(String, String)> {
        vec![
            ("esc_managed".into(), "true".into()),
            ("esc_op".into(), op.into()),
            ("esc_deployment".into(), self.deployment_id.clone()),
            ("esc_group".into(), self.group.clone()),
            ("esc_index".into(), self.index.to_string()),
            ("esc_generation".into(), self.generation.to_string()),
        ]
    }
}

fn at(path: &str, message: impl Into<String>) -> InvalidField {
    InvalidField {
        path: path.to_string(),
        message: message.into(),
    }
}

/// A model that must not be accepted; `path` names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InvalidField {
    pub path: String,
    pub message: String,
}

impl From<(&str, InvalidCommand)> for InvalidField {
    fn from((path, e): (&str, InvalidCommand)) -> InvalidField {
        at(path, e.message)
    }
}

/// Parses JSON into `T`; an error names the field (its path) and says what
/// was expected.
pub fn parse<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, InvalidField> {
    let de = &mut serde_json::Deserializer::from_slice(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "body".to_string()
        } else {
            path
        };
        at(&path, e.into_inner().to_string())
    })
}

/// A callback URL: `http://` or `https://`, a host, no space or control
/// character, at most [`CALLBACK_URL_LEN_MAX`] characters.
pub fn check_callback(url: &str) -> Result<(), InvalidField> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| at("callback", "must be an http:// or https:// URL"))?;
    if url.len() > CALLBACK_URL_LEN_MAX {
        return Err(at(
            "callback",
            format!("at most {CALLBACK_URL_LEN_MAX} characters"),
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(at(
            "callback",
            "must not contain spaces or control characters",
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(at("callback", "must name a host (no user information)"));
    }
    Ok(())
}

fn name(path: &str, v: &str) -> Result<(), InvalidField> {
    check_name(v).map_err(|e| (path, e).into())
}

impl Tenant {
    pub fn validate(&self) -> Result<(), InvalidField> {
        name("name", &self.name)?;
        if self.description.len() > 1024 {
            return Err(at("description", "must be at most 1024 characters"));
        }
        Ok(())
    }
}

impl DeploymentSpec {
    /// The API document's example (a test checks that it is valid): one
    /// group of two to four VMs on one network, with day-0 data, the bootup
    /// check and healing.
    pub fn example() -> serde_json::Value {
        serde_json::json!({
            "name": "vnf-a",
            "tenant": "tenant-a",
            "vm_groups": [{
                "name": "fw",
                "image": "fw-image-1.2",
                "flavor": "m1.small",
                "scaling": { "min_active": 2, "max_active": 4 },
                "interfaces": [{ "nicid": 0, "network": "mgmt" }],
                "config_data": [{ "file": "/etc/fw/day0.conf", "data": "hostname fw\n" }],
                "recovery_policy": { "action": "REBOOT_THEN_REDEPLOY", "max_retries": 3 },
                "kpis": [{
                    "event_name": "VM_ALIVE", "metric_value": 1, "metric_cond": "GE",
                    "metric_occurrences_true": 1, "metric_occurrences_false": 3,
                    "metric_collector": { "type": "ICMPPing", "nicid": 0, "poll_frequency": 3 },
                }],
                "rules": [{
                    "event_name": "VM_ALIVE",
                    "actions": ["ALWAYS log", "FALSE recover autohealing", "TRUE esc_vm_alive_notification"],
                }],
                "bootup_time": 120,
            }],
            "properties": { "owner": "team-a" },
        })
    }

    /// The rules across fields that the types do not say.
    pub fn validate(&self) -> Result<(), InvalidField> {
        name("name", &self.name)?;
        name("tenant", &self.tenant)?;
        if self.properties.len() > PROPERTIES_MAX {
            return Err(at(
                "properties",
                format!("at most {PROPERTIES_MAX} properties"),
            ));
        }
        let mut bytes = 0;
        for (k, v) in &self.properties {
            name(&format!("properties.{k}"), k)?;
            bytes += k.len() + v.len();
        }
        if bytes > PROPERTIES_BYTES_MAX {
            return Err(at(
                "properties",
                format!("at most {PROPERTIES_BYTES_MAX} bytes of names and values"),
            ));
        }
        if self.vm_groups.len() > VM_GROUPS_MAX {
            return Err(at("vm_groups", format!("at most {VM_GROUPS_MAX} groups")));
        }
        let mut groups = BTreeSet::new();
        for (g, group) in self.vm_groups.iter().enumerate() {
            let p = |f: &str| format!("vm_groups[{g}].{f}");
            name(&p("name"), &group.name)?;
            if !groups.insert(group.name.as_str()) {
                return Err(at(
                    &p("name"),
                    format!("{:?} is used by another group", group.name),
                ));
            }
            name(&p("image"), &group.image)?;
            name(&p("flavor"), &group.flavor)?;
            let s = group.scaling;
            if s.min_active == 0 {
                return Err(at(&p("scaling.min_active"), "must be at least 1"));
            }
            if s.max_active < s.min_active {
                return Err(at(
                    &p("scaling.max_active"),
                    format!("must be at least min_active ({})", s.min_active),
                ));
            }
            if s.max_active > VMS_PER_GROUP_MAX {
                return Err(at(
                    &p("scaling.max_active"),
                    format!("at most {VMS_PER_GROUP_MAX}"),
                ));
            }
            if s.cooldown > SCALE_COOLDOWN_S_MAX {
                return Err(at(
                    &p("scaling.cooldown"),
                    format!("at most {SCALE_COOLDOWN_S_MAX} seconds"),
                ));
            }
            if group.interfaces.is_empty() || group.interfaces.len() > INTERFACES_MAX {
                return Err(at(
                    &p("interfaces"),
                    format!("1 to {INTERFACES_MAX} interfaces"),
                ));
            }
            let mut nics = BTreeSet::new();
            for (i, nic) in group.interfaces.iter().enumerate() {
                let pi = |f: &str| p(&format!("interfaces[{i}].{f}"));
                if !nics.insert(nic.nicid) {
                    return Err(at(
                        &pi("nicid"),
                        format!("{} is used by another interface", nic.nicid),
                    ));
                }
                name(&pi("network"), &nic.network)?;
                if nic.ip_addresses.len() > s.max_active as usize {
                    return Err(at(
                        &pi("ip_addresses"),
                        format!("one address per VM: at most max_active ({})", s.max_active),
                    ));
                }
                let distinct: BTreeSet<_> = nic.ip_addresses.iter().collect();
                if distinct.len() != nic.ip_addresses.len() {
                    return Err(at(&pi("ip_addresses"), "an address is given twice"));
                }
            }
            if group.config_data.len() > CONFIG_FILES_MAX {
                return Err(at(
                    &p("config_data"),
                    format!("at most {CONFIG_FILES_MAX} files"),
                ));
            }
            for (c, f) in group.config_data.iter().enumerate() {
                let pc = |x: &str| p(&format!("config_data[{c}].{x}"));
                if !f.file.starts_with('/') || f.file.len() > 255 || f.file.contains("..") {
                    return Err(at(
                        &pc("file"),
                        "must be an absolute path without `..`, at most 255 characters",
                    ));
                }
                if f.data.len() > CONFIG_FILE_BYTES_MAX {
                    return Err(at(
                        &pc("data"),
                        format!("at most {CONFIG_FILE_BYTES_MAX} bytes"),
                    ));
                }
            }
            crate::kpi::validate(
                &group.kpis,
                &group.rules,
                group.bootup_time,
                &nics,
                &|f: &str| p(f),
            )
            .map_err(|(path, m)| at(&path, m))?;
            let r = group.recovery_policy;
            if r.max_retries > RETRIES_MAX {
                return Err(at(
                    &p("recovery_policy.max_retries"),
                    format!("at most {RETRIES_MAX}"),
                ));
            }
            if r.recovery_wait_time > RECOVERY_WAIT_S_MAX {
                return Err(at(
                    &p("recovery_policy.recovery_wait_time"),
                    format!("at most {RECOVERY_WAIT_S_MAX} seconds"),
                ));
            }
        }
        Ok(())
    }

    /// Parses and validates a client's JSON.
    pub fn from_json(json: &[u8]) -> Result<DeploymentSpec, InvalidField> {
        let d: DeploymentSpec = parse(json)?;
        d.validate()?;
        Ok(d)
    }

    /// The VMs the deployment starts with, in order.
    pub fn initial_vms(&self, deployment_id: &str) -> Vec<VmKey> {
        self.vm_groups
            .iter()
            .flat_map(|g| {
                (0..g.scaling.min_active).map(move |index| VmKey {
                    deployment_id: deployment_id.to_string(),
                    group: g.name.clone(),
                    index,
                    generation: 0,
                })
            })
            .collect()
    }

    /// What an update may not change (issue 11, item 2): the tenant, and a
    /// kept group's image, flavor and networks (those need a new server:
    /// undeploy and deploy). Counts, day-0 data, fixed addresses, recovery
    /// policies and groups added or removed are what an update is for.
    pub fn check_update_of(&self, old: &DeploymentSpec) -> Result<(), InvalidField> {
        if self.tenant != old.tenant {
            return Err(at(
                "tenant",
                format!(
                    "{:?} cannot change on an update (it was {:?})",
                    self.tenant, old.tenant
                ),
            ));
        }
        for (g, group) in self.vm_groups.iter().enumerate() {
            let Some(was) = old.vm_groups.iter().find(|o| o.name == group.name) else {
                continue;
            };
            let p = |f: &str| format!("vm_groups[{g}].{f}");
            let keep = "cannot change on an update of a kept group: undeploy and deploy again, or give the group a new name";
            if group.image != was.image {
                return Err(at(&p("image"), keep));
            }
            if group.flavor != was.flavor {
                return Err(at(&p("flavor"), keep));
            }
            let nets = |x: &VmGroup| -> Vec<(u8, String)> {
                x.interfaces
                    .iter()
                    .map(|i| (i.nicid, i.network.clone()))
                    .collect()
            };
            if nets(group) != nets(was) {
                return Err(at(&p("interfaces"), keep));
            }
        }
        Ok(())
    }

    /// The VMs of an update from the VMs the service has now (`current`):
    /// each kept group keeps its VMs up to the new count (the current one
    /// clamped to the new bounds), lowest indexes first; VMs past it, and
    /// every VM of a removed group, are to be undeployed; the new ones take
    /// the lowest free indexes. In order: the new spec's groups, then the
    /// removed groups' VMs.
    pub fn update_vms(&self, deployment_id: &str, current: &[VmRecord]) -> Vec<VmRecord> {
        self.vms_to(deployment_id, current, |g, have| {
            have.clamp(g.scaling.min_active, g.scaling.max_active)
        })
    }

    /// The VMs of a scale of `group` by one (`out`: one more) from the
    /// VMs the service has now, clamped to the group's bounds; the other
    /// groups keep theirs.
    pub fn scale_vms(
        &self,
        deployment_id: &str,
        current: &[VmRecord],
        group: &str,
        out: bool,
    ) -> Vec<VmRecord> {
        self.vms_to(deployment_id, current, |g, have| {
            if g.name != group {
                have
            } else if out {
                (have + 1).min(g.scaling.max_active)
            } else {
                have.saturating_sub(1).max(g.scaling.min_active)
            }
        })
    }

    /// The VMs with each group at `target(group, its count now)`: VMs
    /// kept lowest index first, those past the target to be undeployed,
    /// new ones at the lowest free indexes; a removed group's VMs last,
    /// to be undeployed.
    fn vms_to(
        &self,
        deployment_id: &str,
        current: &[VmRecord],
        target: impl Fn(&VmGroup, u32) -> u32,
    ) -> Vec<VmRecord> {
        let mut vms = Vec::new();
        for g in &self.vm_groups {
            let mut have: Vec<&VmRecord> =
                current.iter().filter(|v| v.key.group == g.name).collect();
            have.sort_by_key(|v| v.key.index);
            let target = target(g, have.len() as u32);
            for (n, v) in have.iter().enumerate() {
                let mut v = (*v).clone();
                if n as u32 >= target {
                    v.state = VmState::Undeploying;
                }
                vms.push(v);
            }
            let used: BTreeSet<u32> = have.iter().map(|v| v.key.index).collect();
            let free = (0..).filter(|i| !used.contains(i));
            for index in free.take(target.saturating_sub(have.len() as u32) as usize) {
                vms.push(VmRecord::new(VmKey {
                    deployment_id: deployment_id.to_string(),
                    group: g.name.clone(),
                    index,
                    generation: 0,
                }));
            }
        }
        for v in current {
            if !self.vm_groups.iter().any(|g| g.name == v.key.group) {
                let mut v = v.clone();
                v.state = VmState::Undeploying;
                vms.push(v);
            }
        }
        vms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documents_example_is_a_valid_deployment() {
        let json = serde_json::to_vec(&DeploymentSpec::example()).unwrap();
        let spec = DeploymentSpec::from_json(&json).unwrap();
        assert_eq!(spec.vm_groups[0].scaling.min_active, 2);
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "name": "dep1",
            "tenant": "t1",
            "vm_groups": [{
                "name": "g1", "image": "vnf-image", "flavor": "m1.small",
                "scaling": { "min_active": 2, "max_active": 3 },
                "interfaces": [{ "nicid": 0, "network": "vnf-net", "ip_addresses": ["203.0.113.20", "203.0.113.21"] }],
                "config_data": [{ "file": "/etc/vnf.conf", "data": "mode=fast\n" }],
                "recovery_policy": { "action": "REBOOT_ONLY", "max_retries": 2 }
            }]
        })
    }

    fn error_of(v: serde_json::Value) -> String {
        DeploymentSpec::from_json(&serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_valid_deployment_parses_with_its_defaults_and_vms() {
        let d = DeploymentSpec::from_json(&serde_json::to_vec(&valid()).unwrap()).unwrap();
        assert_eq!(
            d.vm_groups[0].recovery_policy.action,
            RecoveryAction::RebootOnly
        );
        let vms = d.initial_vms("abc");
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[1].server_name(), "esc-abc-g1-1-g0");
        let none = DeploymentSpec::from_json(br#"{"name": "d", "tenant": "t"}"#).unwrap();
        assert!(none.vm_groups.is_empty() && none.initial_vms("x").is_empty());
    }

    #[test]
    fn every_error_names_its_field() {
        let mut v = valid();
        v["vm_groups"][0]["scaling"]["min_active"] = 0.into();
        assert_eq!(
            error_of(v),
            "vm_groups[0].scaling.min_active: must be at least 1"
        );
        let mut v = valid();
        v["vm_groups"][0]["scaling"]["max_active"] = 5000.into();
        assert!(error_of(v).starts_with("vm_groups[0].scaling.max_active: at most"));
        let mut v = valid();
        v["vm_groups"][0]["interfaces"][0]["nicid"] = "zero".into();
        assert!(
            error_of(v).starts_with("vm_groups[0].interfaces[0].nicid: invalid type"),
            ""
        );
        let mut v = valid();
        v["vm_groups"][0]["colour"] = "red".into();
        let e = error_of(v);
        assert!(
            e.starts_with("vm_groups[0]") && e.contains("unknown field `colour`"),
            "{e}"
        );
        let mut v = valid();
        v.as_object_mut().unwrap().remove("tenant");
        assert!(error_of(v).contains("missing field `tenant`"));
        let mut v = valid();
        v["vm_groups"][0]["interfaces"][0]["ip_addresses"] =
            serde_json::json!(["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]);
        assert!(
            error_of(v).starts_with("vm_groups[0].interfaces[0].ip_addresses: one address per VM")
        );
        let mut v = valid();
        v["vm_groups"][0]["config_data"][0]["file"] = "../etc/passwd".into();
        assert!(error_of(v).starts_with("vm_groups[0].config_data[0].file:"));
        let mut v = valid();
        v["vm_groups"][0]["recovery_policy"]["action"] = "PRAY".into();
        assert!(error_of(v).starts_with("vm_groups[0].recovery_policy.action: unknown variant"));
        let mut v = valid();
        let g = v["vm_groups"][0].clone();
        v["vm_groups"].as_array_mut().unwrap().push(g);
        assert_eq!(
            error_of(v),
            "vm_groups[1].name: \"g1\" is used by another group"
        );
        assert_eq!(
            DeploymentSpec::from_json(b"42").unwrap_err().path,
            "body",
            "a body of the wrong shape is the body's error"
        );
    }

    #[test]
    fn an_update_clamps_each_group_adds_removes_and_keeps_what_it_must() {
        let mut old = DeploymentSpec::from_json(&serde_json::to_vec(&valid()).unwrap()).unwrap();
        old.vm_groups[0].interfaces[0].ip_addresses.clear();
        let mut current: Vec<VmRecord> = old
            .initial_vms("d")
            .into_iter()
            .map(|k| VmRecord {
                state: VmState::Alive,
                server_id: Some(format!("s{}", k.index)),
                ..VmRecord::new(k)
            })
            .collect();
        // A hole at index 0 (a VM replaced on a retry keeps its index; one
        // removed leaves its index free).
        current.remove(0);
        let mut new = old.clone();
        new.vm_groups[0].scaling = Scaling {
            min_active: 3,
            max_active: 4,
            cooldown: 60,
        };
        new.vm_groups[0].config_data[0].data = "mode=slow\n".into();
        assert_eq!(new.check_update_of(&old), Ok(()));
        let vms = new.update_vms("d", &current);
        let got: Vec<(u32, VmState)> = vms.iter().map(|v| (v.key.index, v.state)).collect();
        assert_eq!(
            got,
            [
                (1, VmState::Alive),
                (0, VmState::Deploying),
                (2, VmState::Deploying)
            ]
        );
        // Down to one, and a new group; then the group removed.
        let mut down = old.clone();
        down.vm_groups[0].scaling = Scaling {
            min_active: 1,
            max_active: 1,
            cooldown: 60,
        };
        let mut g2 = down.vm_groups[0].clone();
        g2.name = "g2".into();
        down.vm_groups.push(g2);
        let all = old.initial_vms("d");
        let current: Vec<VmRecord> = all
            .into_iter()
            .map(|k| VmRecord {
                state: VmState::Alive,
                ..VmRecord::new(k)
            })
            .collect();
        let vms = down.update_vms("d", &current);
        let got: Vec<(&str, u32, VmState)> = vms
            .iter()
            .map(|v| (v.key.group.as_str(), v.key.index, v.state))
            .collect();
        assert_eq!(
            got,
            [
                ("g1", 0, VmState::Alive),
                ("g1", 1, VmState::Undeploying),
                ("g2", 0, VmState::Deploying)
            ]
        );
        let mut gone = old.clone();
        gone.vm_groups.clear();
        assert!(gone
            .update_vms("d", &current)
            .iter()
            .all(|v| v.state == VmState::Undeploying));
        // What an update cannot change names its field.
        let mut bad = old.clone();
        bad.vm_groups[0].flavor = "m1.large".into();
        assert!(bad
            .check_update_of(&old)
            .unwrap_err()
            .to_string()
            .starts_with("vm_groups[0].flavor: cannot change"));
        let mut bad = old.clone();
        bad.tenant = "other".into();
        assert!(bad
            .check_update_of(&old)
            .unwrap_err()
            .to_string()
            .starts_with("tenant:"));
    }

    #[test]
    fn states_carry_escs_and_sol003s_names() {
        assert_eq!(
            serde_json::to_string(&ServiceState::Active).unwrap(),
            "\"SERVICE_ACTIVE_STATE\""
        );
        assert_eq!(
            serde_json::to_string(&VmState::Alive).unwrap(),
            "\"VM_ALIVE_STATE\""
        );
        assert_eq!(
            serde_json::to_string(&OperationState::FailedTemp).unwrap(),
            "\"FAILED_TEMP\""
        );
        assert!(OperationState::FailedTemp.settled() && !OperationState::Processing.settled());
    }
}

/// A service (a deployment with VM groups) as replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceRecord {
    pub spec: DeploymentSpec,
    pub state: ServiceState,
    /// The operation in progress, if any (one at a time).
    pub current_op: Option<String>,
    /// The VMs as the last operation left them.
    pub vms: Vec<VmRecord>,
    /// When the deploy was accepted (the proposer's clock).
    #[serde(default)]
    pub created_at_ms: u64,
    /// The last operation that settled on it.
    #[serde(default)]
    pub last_op: Option<String>,
    /// Per group, its scale operations (what the next one's id and the
    /// cooldown derive from).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scaling: BTreeMap<String, ScaleState>,
    /// ESC's `DISABLE_MONITOR`: its VMs are not probed until
    /// `ENABLE_MONITOR`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monitor_disabled: bool,
}

/// A group's scale operations, replicated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScaleState {
    /// Scale operations started (the next one is number `started`).
    pub started: u32,
    /// When the last one settled (its step's proposal time).
    #[serde(default)]
    pub settled_at_ms: Option<u64>,
}

/// A result owed to a client's callback URL (the replicated outbox of
/// callbacks: the primary's notifier POSTs it, at least once, and then
/// proposes `Op::CallbacksDelivered`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    pub op_id: String,
    pub tid: String,
    pub url: String,
    pub deployment: String,
    pub state: OperationState,
    pub message: Option<String>,
    pub settled_at_ms: u64,
}

/// What a lifecycle operation does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OperationKind {
    /// Create every VM of the deployment's groups (`min_active` each).
    Deploy { spec: DeploymentSpec },
    /// Remove every server of the deployment, leftovers included.
    Undeploy,
    /// Change the deployment to `spec` (same name and tenant; each kept
    /// group's image, flavor and networks unchanged): a group's count
    /// becomes its current count clamped to the new `min_active ..=
    /// max_active` (VMs added or removed, the highest indexes first);
    /// groups may be added or removed; day-0 data and fixed addresses apply
    /// to VMs created afterwards. New VMs are created before any is removed.
    Update { spec: DeploymentSpec },
    /// A manual action on one VM (ESC's `REBOOT`, `STOP`, `START`), by its
    /// server name. Carried out exactly once across a takeover: the VM's
    /// newest instance action on the VIM is committed first (the mark), and
    /// the action is asked for only while that has not moved.
    VmAction { vm: String, action: VmAction },
    /// The recovery of one VM by its group's policy (issue 12: what the
    /// monitor starts when a VM stops answering, or an operator asks):
    /// attempts of a hard reboot (exactly once, as a VM action) or a
    /// redeploy (the old server deleted, one of the next generation
    /// created), each followed by the bootup check, up to `max_retries`.
    Recover { vm: String, reason: String },
    /// One VM more (`out`) or one less in `group` (issue 12: what the
    /// monitor starts on `scale_out` / `scale_in`), within its
    /// `min_active ..= max_active`: a new VM at the lowest free index, or
    /// the highest index removed. Its id derives from the group's scale
    /// count, so two primaries that decide the same step propose one
    /// operation.
    Scale {
        group: String,
        out: bool,
        reason: String,
    },
    /// ESC's service actions `STOP`, `START`, `REBOOT` of a deployment: the
    /// action on every VM, each exactly once across a takeover (each VM's
    /// own mark, as a manual VM action); COMPLETED when every VM is done.
    ServiceAction { action: VmAction },
}

impl OperationKind {
    /// The deployment as the operation builds it (a deploy or an update).
    pub fn spec(&self) -> Option<&DeploymentSpec> {
        match self {
            OperationKind::Deploy { spec } | OperationKind::Update { spec } => Some(spec),
            OperationKind::Undeploy
            | OperationKind::VmAction { .. }
            | OperationKind::Recover { .. }
            | OperationKind::Scale { .. }
            | OperationKind::ServiceAction { .. } => None,
        }
    }

    /// As the logs and `escadm ip_trans` say it.
    pub fn word(&self) -> &'static str {
        match self {
            OperationKind::Deploy { .. } => "deploy",
            OperationKind::Undeploy => "undeploy",
            OperationKind::Update { .. } => "update",
            OperationKind::VmAction { action, .. } => action.word(),
            OperationKind::Recover { .. } => "recover",
            OperationKind::Scale { out: true, .. } => "scale-out",
            OperationKind::Scale { out: false, .. } => "scale-in",
            OperationKind::ServiceAction { action } => action.word(),
        }
    }
}

/// A manual VM action (esc-facts: the service actions `REBOOT`, `STOP`,
/// `START`), each one Nova server action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VmAction {
    Reboot,
    Stop,
    Start,
}

impl VmAction {
    pub fn word(self) -> &'static str {
        match self {
            VmAction::Reboot => "reboot",
            VmAction::Stop => "stop",
            VmAction::Start => "start",
        }
    }

    /// The VM's state while the action runs.
    pub fn running_state(self) -> VmState {
        match self {
            VmAction::Reboot => VmState::Rebooting,
            VmAction::Stop => VmState::Stopping,
            VmAction::Start => VmState::Starting,
        }
    }

    /// The VM's state once the action is done.
    pub fn done_state(self) -> VmState {
        match self {
            VmAction::Reboot | VmAction::Start => VmState::Alive,
            VmAction::Stop => VmState::Shutoff,
        }
    }
}

/// One VM's progress inside an operation (replicated: each change is a
/// committed [`Step`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmRecord {
    pub key: VmKey,
    /// The VIM server, once created or found.
    pub server_id: Option<String>,
    pub state: VmState,
    pub error: Option<String>,
    /// A manual action's mark: the request id of the server's newest
    /// instance action before the action was asked for (empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_mark: Option<String>,
    /// Its addresses by `nicid`, as the VIM gave them (what the monitor
    /// probes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<u8, String>,
    /// When the VIM first reported its server running (the proposer's
    /// clock): its bootup check has `bootup_time` from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_at_ms: Option<u64>,
    /// Recoveries it went through (the monitor derives the next one's
    /// operation id from it: one recovery, one operation).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recoveries: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl VmRecord {
    /// A VM to create.
    pub fn new(key: VmKey) -> VmRecord {
        VmRecord {
            key,
            server_id: None,
            state: VmState::Deploying,
            error: None,
            action_mark: None,
            addresses: BTreeMap::new(),
            up_at_ms: None,
            recoveries: 0,
        }
    }

    /// Starts a recovery attempt: a hard reboot (the action's mark read
    /// anew), or a redeploy (its server to delete first, a server of the
    /// next generation to create).
    pub fn begin(&mut self, mode: RecoveryMode, cleanup: &mut Vec<String>) {
        self.error = None;
        self.action_mark = None;
        self.up_at_ms = None;
        match mode {
            RecoveryMode::Reboot => self.state = VmState::Rebooting,
            RecoveryMode::Redeploy => {
                if let Some(id) = self.server_id.take() {
                    cleanup.push(id);
                }
                self.addresses.clear();
                self.key.generation += 1;
                self.state = VmState::Deploying;
            }
        }
    }
}

/// A recovery's progress (`OperationKind::Recover`), replicated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Recovery {
    /// From 1.
    pub attempt: u32,
    pub attempts: u32,
    pub action: RecoveryAction,
    /// The VM's group as it was when the recovery started (a redeploy
    /// creates its server from it).
    pub group: VmGroup,
}

/// What one recovery attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryMode {
    Reboot,
    Redeploy,
}

impl Recovery {
    /// ESC's policies: REBOOT_ONLY and REDEPLOY_ONLY every attempt;
    /// REBOOT_THEN_REDEPLOY a reboot first, then redeploys.
    pub fn mode(&self) -> RecoveryMode {
        match self.action {
            RecoveryAction::RebootOnly => RecoveryMode::Reboot,
            RecoveryAction::RedeployOnly => RecoveryMode::Redeploy,
            RecoveryAction::RebootThenRedeploy if self.attempt <= 1 => RecoveryMode::Reboot,
            RecoveryAction::RebootThenRedeploy => RecoveryMode::Redeploy,
        }
    }
}

/// An operation occurrence (ETSI NFV-SOL 003's `VnfLcmOpOcc`), as
/// replicated: the lifecycle core decides the next VIM call from it alone,
/// so a new primary resumes it from its last committed step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OperationRecord {
    pub id: String,
    pub deployment_id: String,
    pub kind: OperationKind,
    pub state: OperationState,
    /// In order (the deployment's groups, then index).
    pub vms: Vec<VmRecord>,
    pub error: Option<String>,
    /// The transaction id of the request that started it.
    #[serde(default)]
    pub tid: String,
    /// Where the result is POSTed when it settles (the request's `callback`).
    #[serde(default)]
    pub callback: Option<String>,
    /// When it was accepted and when it settled (the proposers' clocks).
    #[serde(default)]
    pub started_at_ms: u64,
    #[serde(default)]
    pub settled_at_ms: Option<u64>,
    /// Servers to delete before the operation can complete (a failed VM's
    /// server, replaced on a retry by one of the next generation).
    #[serde(default)]
    pub cleanup: Vec<String>,
    /// A recovery's attempts (`OperationKind::Recover` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
    /// The group a scale operation creates its VM from (a copy: the
    /// runner reads operation records only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<VmGroup>,
}

/// What an operator may do with a FAILED_TEMP operation (ETSI NFV-SOL 003,
/// the `retry` and `fail` tasks of an LCM operation occurrence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LcmControl {
    /// Carry on: every failed VM is replaced (its server deleted, a new
    /// one of the next generation created), the rest resumes.
    Retry,
    /// Give up: the operation is FAILED for good; the deployment stays
    /// in error (undeploy it).
    Fail,
    /// Undo a deploy: every server of the deployment deleted, the
    /// operation ROLLED_BACK, the deployment gone (a deploy only).
    Rollback,
}

/// A step's result, proposed by the lifecycle core and committed through
/// the log before the next step starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// The VM's server exists: created now, or found (made by an earlier
    /// primary whose result was never committed) and adopted.
    ServerBound {
        op: String,
        key: VmKey,
        server_id: String,
        adopted: bool,
    },
    /// The VIM reports the VM's server running, with its addresses by
    /// `nicid`: the VM is alive now if its group has no bootup check, else
    /// once the monitor sees it answer (`VmActive`). Pairs, not a map: a
    /// map with number keys does not survive serde's internally tagged
    /// enums (its keys are strings in JSON).
    ServerUp {
        op: String,
        key: VmKey,
        addresses: Vec<(u8, String)>,
    },
    /// The VM is alive (ESC's VM_ALIVE).
    VmActive { op: String, key: VmKey },
    /// The VM's server is stopped (SHUTOFF), as a `STOP` asked.
    VmStopped { op: String, key: VmKey },
    /// A manual action's mark (the newest instance action's request id on
    /// the VIM, empty if none) before the action is asked for.
    ActionMarked {
        op: String,
        key: VmKey,
        request_id: String,
    },
    VmFailed {
        op: String,
        key: VmKey,
        error: String,
    },
    /// The server is gone (deleted, or already absent).
    ServerGone { op: String, server_id: String },
    /// The operation ends in `state` (COMPLETED, FAILED_TEMP, ...).
    Settled {
        op: String,
        state: OperationState,
        error: Option<String>,
    },
}

impl OperationRecord {
    /// `retry` of a FAILED_TEMP operation: back to PROCESSING; each VM in
    /// error gets the next generation (a new server name, so the lookup
    /// cannot adopt the failed one), its old server to clean up. A manual
    /// action is asked for again: its mark is read anew.
    pub fn retry(&mut self) {
        if let OperationKind::VmAction { action, .. } = self.kind {
            for v in self.vms.iter_mut().filter(|v| v.state == VmState::Error) {
                v.state = action.running_state();
                v.error = None;
                v.action_mark = None;
            }
            self.state = OperationState::Processing;
            self.error = None;
            self.settled_at_ms = None;
            return;
        }
        let cleanup = &mut self.cleanup;
        for v in self.vms.iter_mut().filter(|v| v.state == VmState::Error) {
            v.begin(RecoveryMode::Redeploy, cleanup);
        }
        self.state = OperationState::Processing;
        self.error = None;
        self.settled_at_ms = None;
    }

    /// A new operation in STARTING: a deploy lists its VMs.
    pub fn new(id: String, deployment_id: String, kind: OperationKind) -> OperationRecord {
        let vms = match &kind {
            OperationKind::Deploy { spec } => spec
                .initial_vms(&deployment_id)
                .into_iter()
                .map(VmRecord::new)
                .collect(),
            // Listed by the domain from the service (`lifecycle::start`).
            OperationKind::Undeploy
            | OperationKind::Update { .. }
            | OperationKind::VmAction { .. }
            | OperationKind::Recover { .. }
            | OperationKind::Scale { .. }
            | OperationKind::ServiceAction { .. } => Vec::new(),
        };
        OperationRecord {
            id,
            deployment_id,
            kind,
            state: OperationState::Starting,
            vms,
            error: None,
            tid: String::new(),
            callback: None,
            started_at_ms: 0,
            settled_at_ms: None,
            cleanup: Vec::new(),
            recovery: None,
            group: None,
        }
    }

    /// Applies a committed step (deterministic; a step for another
    /// operation, or a repeated one, changes nothing); `at_ms`: the step's
    /// proposal time.
    pub fn apply(&mut self, at_ms: u64, step: &Step) {
        let vm = |vms: &mut Vec<VmRecord>, key: &VmKey| vms.iter_mut().position(|v| &v.key == key);
        match step {
            Step::ServerBound {
                op, key, server_id, ..
            } if *op == self.id => {
                if let Some(i) = vm(&mut self.vms, key) {
                    self.vms[i]
                        .server_id
                        .get_or_insert_with(|| server_id.clone());
                }
                if self.state == OperationState::Starting {
                    self.state = OperationState::Processing;
                }
            }
            Step::VmActive { op, key } if *op == self.id => {
                // A VM being removed stays so: an answer to its last probe
                // (a bootup check decided before the removal) must not
                // bring it back.
                if let Some(i) = vm(&mut self.vms, key) {
                    if self.vms[i].state != VmState::Undeploying {
                        self.vms[i].state = VmState::Alive;
                    }
                }
            }
            Step::ServerUp { op, key, addresses } if *op == self.id => {
                if let Some(i) = vm(&mut self.vms, key) {
                    let v = &mut self.vms[i];
                    if v.up_at_ms.is_none() {
                        v.up_at_ms = Some(at_ms);
                        v.addresses = addresses.iter().cloned().collect();
                    }
                }
            }
            Step::VmStopped { op, key } if *op == self.id => {
                if let Some(i) = vm(&mut self.vms, key) {
                    self.vms[i].state = VmState::Shutoff;
                }
            }
            Step::ActionMarked {
                op,
                key,
                request_id,
            } if *op == self.id => {
                if let Some(i) = vm(&mut self.vms, key) {
                    self.vms[i]
                        .action_mark
                        .get_or_insert_with(|| request_id.clone());
                }
                if self.state == OperationState::Starting {
                    self.state = OperationState::Processing;
                }
            }
            Step::VmFailed { op, key, error } if *op == self.id => {
                if let Some(i) = vm(&mut self.vms, key) {
                    self.vms[i].state = VmState::Error;
                    self.vms[i].error = Some(error.clone());
                }
            }
            Step::ServerGone { op, server_id } if *op == self.id => {
                self.vms
                    .retain(|v| v.server_id.as_deref() != Some(server_id));
                self.cleanup.retain(|c| c != server_id);
                if self.state == OperationState::Starting {
                    self.state = OperationState::Processing;
                }
            }
            Step::Settled { op, state, error } if *op == self.id && !self.state.settled() => {
                self.state = *state;
                self.error.clone_from(error);
            }
            _ => {}
        }
    }
}
