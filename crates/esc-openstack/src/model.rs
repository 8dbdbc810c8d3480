//! The resources as the manager sees them, parsed from the API reference's
//! JSON (unknown fields ignored: services add fields across versions).

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// GiB.
    pub disk: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Network {
    pub id: String,
    pub name: String,
}

/// One address of a server (Compute API reference, "addresses").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Address {
    pub addr: String,
    #[serde(default)]
    pub version: u8,
}

/// A server's fault (why it is in ERROR).
/// One entry of "List Actions For Server" (Compute API reference).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceAction {
    /// `create`, `reboot`, `stop`, `start`, `delete`, ...
    pub action: String,
    pub request_id: String,
    #[serde(default)]
    pub start_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Server {
    pub id: String,
    pub name: String,
    /// `BUILD`, `ACTIVE`, `REBOOT`, `HARD_REBOOT`, `SHUTOFF`, `ERROR`, ...
    pub status: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// By network name.
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<Address>>,
    #[serde(default)]
    pub fault: Option<Fault>,
}

/// What "Create Server" takes (Compute API reference): names are resolved
/// to ids by the caller (`find_*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateServer {
    pub name: String,
    pub image_id: String,
    pub flavor_id: String,
    /// Network ids, each with an optional fixed address.
    pub networks: Vec<(String, Option<String>)>,
    pub metadata: BTreeMap<String, String>,
    /// Base64 (the API takes it encoded).
    pub user_data: Option<String>,
}

impl CreateServer {
    pub fn body(&self) -> serde_json::Value {
        let networks: Vec<serde_json::Value> = self
            .networks
            .iter()
            .map(|(id, ip)| match ip {
                Some(ip) => serde_json::json!({ "uuid": id, "fixed_ip": ip }),
                None => serde_json::json!({ "uuid": id }),
            })
            .collect();
        let mut s = serde_json::json!({
            "name": self.name,
            "imageRef": self.image_id,
            "flavorRef": self.flavor_id,
            "networks": networks,
            "metadata": self.metadata,
        });
        if let Some(u) = &self.user_data {
            s["user_data"] = serde_json::Value::String(u.clone());
        }
        serde_json::json!({ "server": s })
    }
}

/// Compute's absolute limits (quota) and their use, as "Show Rate And
/// Absolute Limits" answers them (`-1`: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub max_total_cores: i64,
    pub total_cores_used: i64,
    #[serde(rename = "maxTotalRAMSize")]
    pub max_total_ram_size: i64,
    #[serde(rename = "totalRAMUsed")]
    pub total_ram_used: i64,
}

impl Limits {
    /// vCPUs and MiB still free (None: unlimited).
    pub fn free(&self) -> (Option<i64>, Option<i64>) {
        let left = |max: i64, used: i64| (max >= 0).then(|| (max - used).max(0));
        (
            left(self.max_total_cores, self.total_cores_used),
            left(self.max_total_ram_size, self.total_ram_used),
        )
    }
}
