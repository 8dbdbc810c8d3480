//! [`Client`]: one VIM connector's session. Calls take `&self`; the token is
//! shared and renewed before it expires (or once after a 401, then the
//! call is retried once). Every call is bounded by the connector's timeout.

use crate::error::Error;
use crate::model::{CreateServer, Flavor, Image, InstanceAction, Limits, Network, Server};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::{debug, info};

/// A password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A VIM connector (esc.toml's `[vim]` of issue 11): where and as whom.
#[derive(Debug, Clone)]
pub struct Connector {
    /// Identity v3, e.g. `http://203.0.113.5:5000/identity/v3`.
    pub auth_url: String,
    pub user: String,
    pub password: Secret,
    pub project: String,
    pub user_domain: String,
    pub project_domain: String,
    /// The catalog's region to use (None: the first endpoint of a type).
    pub region: Option<String>,
    /// Deadline of each HTTP call.
    pub timeout: Duration,
}

/// A token and the endpoints of its catalog.
#[derive(Debug, Clone)]
struct Session {
    token: String,
    /// When to get a new one: before the token expires.
    renew_at: Instant,
    compute: String,
    image: String,
    network: String,
}

/// Renew a token once this share of its lifetime is left (at most
/// [`RENEW_BEFORE_MAX`] before it ends).
const RENEW_AT_REMAINING: f64 = 0.1;
pub const RENEW_BEFORE_MAX: Duration = Duration::from_secs(300);

/// What the connector has seen of the VIM: for `escadm status --v`, the
/// health API's `stage` and the northbound's refusal of a deploy while the
/// VIM is unusable. Never the password.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The last call reached the VIM with working credentials (None: no
    /// call yet). A refusal of one request (404, 409, 400) still counts as
    /// usable; an unreachable VIM, a 5xx, refused credentials do not.
    pub usable: Option<bool>,
    pub last_error: Option<String>,
    pub calls_in_flight: u64,
    pub calls: u64,
    pub failures: u64,
}

/// Counts a call in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Client {
    http: reqwest::Client,
    conn: Connector,
    session: Mutex<Option<Session>>,
    health: std::sync::Mutex<Health>,
    in_flight: AtomicU64,
    /// Tokens obtained (the first included).
    tokens_issued: AtomicU64,
    /// Calls answered 401 despite a live token (then re-authenticated).
    unauthorized_retries: AtomicU64,
}

fn endpoint(catalog: &Value, kind: &'static str, region: Option<&str>) -> Result<String, Error> {
    catalog
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["type"] == kind)
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["interface"] == "public")
        .find(|e| region.is_none_or(|r| e["region_id"] == r || e["region"] == r))
        .and_then(|e| e["url"].as_str())
        .map(|u| u.trim_end_matches('/').to_string())
        .ok_or(Error::NoEndpoint(kind))
}

impl Client {
    pub fn new(conn: Connector) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .timeout(conn.timeout)
            .build()
            .map_err(|e| Error::Transport(e.to_string()))?;
        Ok(Client {
            http,
            conn,
            session: Mutex::new(None),
            health: Default::default(),
            in_flight: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
            unauthorized_retries: AtomicU64::new(0),
        })
    }

    pub fn tokens_issued(&self) -> u64 {
        self.tokens_issued.load(Ordering::Relaxed)
    }

    pub fn unauthorized_retries(&self) -> u64 {
        self.unauthorized_retries.load(Ordering::Relaxed)
    }

    /// Identity v3 "Password authentication with scoped authorization":
    /// `POST /v3/auth/tokens`, the token in `X-Subject-Token`.
    async fn authenticate(&self) -> Result<Session, Error> {
        let c = &self.conn;
        let body = json!({ "auth": {
            "identity": { "methods": ["password"], "password": { "user": {
                "name": c.user, "domain": { "name": c.user_domain }, "password": c.password.expose(),
            } } },
            "scope": { "project": { "name": c.project, "domain": { "name": c.project_domain } } },
        } });
        let url = format!("{}/auth/tokens", c.auth_url.trim_end_matches('/'));
        let r = self.http.post(&url).json(&body).send().await?;
        let status = r.status().as_u16();
        let token = r
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = r.text().await?;
        if status != 201 {
            return Err(Error::from_answer(status, &text));
        }
        let token = token
            .ok_or_else(|| Error::Protocol("no X-Subject-Token in the token answer".into()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Protocol(e.to_string()))?;
        let t = &v["token"];
        let (issued, expires) = (
            t["issued_at"].as_str().and_then(crate::time::parse_ms),
            t["expires_at"].as_str().and_then(crate::time::parse_ms),
        );
        let lifetime = match (issued, expires) {
            (Some(i), Some(e)) if e > i => Duration::from_millis(e - i),
            _ => {
                return Err(Error::Protocol(
                    "the token has no valid issued_at/expires_at".into(),
                ))
            }
        };
        let before = lifetime.mul_f64(RENEW_AT_REMAINING).min(RENEW_BEFORE_MAX);
        let region = c.region.as_deref();
        let session = Session {
            token,
            renew_at: Instant::now() + lifetime - before,
            compute: endpoint(&t["catalog"], "compute", region)?,
            image: endpoint(&t["catalog"], "image", region)?,
            network: endpoint(&t["catalog"], "network", region)?,
        };
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        info!(target: "esc::vim", user = %c.user, project = %c.project, lifetime_s = lifetime.as_secs(), "VIM token obtained");
        Ok(session)
    }

    /// The current session, renewed when due.
    async fn session(&self) -> Result<Session, Error> {
        let mut s = self.session.lock().await;
        if let Some(cur) = s.as_ref().filter(|c| Instant::now() < c.renew_at) {
            return Ok(cur.clone());
        }
        let fresh = self.authenticate().await?;
        *s = Some(fresh.clone());
        Ok(fresh)
    }

    async fn forget(&self, token: &str) {
        let mut s = self.session.lock().await;
        if s.as_ref().is_some_and(|c| c.token == token) {
            *s = None;
        }
    }

    /// What the connector has seen of the VIM.
    pub fn health(&self) -> Health {
        let mut h = self.health.lock().map(|h| h.clone()).unwrap_or_default();
        h.calls_in_flight = self.in_flight.load(Ordering::Relaxed);
        h
    }

    /// Where the connector points (for status; no secret in it).
    pub fn connector(&self) -> &Connector {
        &self.conn
    }

    /// A cheap authenticated call (Compute "List Flavors"): whether the VIM
    /// is usable now. Its outcome is in [`Client::health`].
    pub async fn probe(&self) -> Result<(), Error> {
        let _: Value = self.get(|s| &s.compute, "/flavors", "flavors").await?;
        Ok(())
    }

    /// One call: `path` is relative to the service's endpoint; a 401 with a
    /// live token re-authenticates and retries once. The body of a 2xx.
    /// Its outcome goes into [`Client::health`].
    async fn call(
        &self,
        method: reqwest::Method,
        service: fn(&Session) -> &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), Error> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight(&self.in_flight);
        let r = self.call_once(method, service, path, body).await;
        if let Ok(mut h) = self.health.lock() {
            h.calls += 1;
            match &r {
                Ok(_) => h.usable = Some(true),
                Err(e) => {
                    h.failures += 1;
                    h.last_error = Some(e.to_string());
                    let answered = matches!(
                        e,
                        Error::NotFound(_)
                            | Error::Conflict(_)
                            | Error::BadRequest(_)
                            | Error::Forbidden(_)
                    );
                    h.usable = Some(answered);
                }
            }
        }
        r
    }

    async fn call_once(
        &self,
        method: reqwest::Method,
        service: fn(&Session) -> &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), Error> {
        for attempt in 0..2 {
            let s = self.session().await?;
            let url = format!("{}{path}", service(&s));
            debug!(target: "esc::vim", %method, %url, "VIM call");
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", &s.token)
                .header("Accept", "application/json");
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            if status == 401 && attempt == 0 {
                self.unauthorized_retries.fetch_add(1, Ordering::Relaxed);
                self.forget(&s.token).await;
                continue;
            }
            if !(200..300).contains(&status) {
                return Err(Error::from_answer(status, &text));
            }
            return Ok((status, text));
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn get<T: DeserializeOwned>(
        &self,
        service: fn(&Session) -> &str,
        path: &str,
        key: &str,
    ) -> Result<T, Error> {
        let (_, text) = self.call(reqwest::Method::GET, service, path, None).await?;
        let mut v: Value =
            serde_json::from_str(&text).map_err(|e| Error::Protocol(e.to_string()))?;
        serde_json::from_value(v[key].take()).map_err(|e| Error::Protocol(format!("{key}: {e}")))
    }

    /// Compute "List Flavors With Details", found by name.
    pub async fn find_flavor(&self, name: &str) -> Result<Flavor, Error> {
        let all: Vec<Flavor> = self
            .get(|s| &s.compute, "/flavors/detail", "flavors")
            .await?;
        all.into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::NotFound(format!("flavor {name:?}")))
    }

    /// Compute "Show Rate And Absolute Limits": the project's quota and use.
    pub async fn limits(&self) -> Result<Limits, Error> {
        let v: Value = self.get(|s| &s.compute, "/limits", "limits").await?;
        serde_json::from_value(v["absolute"].clone())
            .map_err(|e| Error::Protocol(format!("limits.absolute: {e}")))
    }

    /// Images v2 "List images" with the `name` filter.
    pub async fn find_image(&self, name: &str) -> Result<Image, Error> {
        let all: Vec<Image> = self
            .get(
                |s| &s.image,
                &format!("/v2/images?name={}", encode(name)),
                "images",
            )
            .await?;
        all.into_iter()
            .find(|i| i.name == name)
            .ok_or_else(|| Error::NotFound(format!("image {name:?}")))
    }

    /// Networking v2.0 "List networks" with the `name` filter.
    pub async fn find_network(&self, name: &str) -> Result<Network, Error> {
        let all: Vec<Network> = self
            .get(
                |s| &s.network,
                &format!("/v2.0/networks?name={}", encode(name)),
                "networks",
            )
            .await?;
        all.into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::NotFound(format!("network {name:?}")))
    }

    /// Compute "Create Server" (202): the new server's id.
    pub async fn create_server(&self, req: &CreateServer) -> Result<String, Error> {
        let (_, text) = self
            .call(
                reqwest::Method::POST,
                |s| &s.compute,
                "/servers",
                Some(&req.body()),
            )
            .await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Protocol(e.to_string()))?;
        v["server"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol("no server id in the create answer".into()))
    }

    /// Compute "Show Server Details".
    pub async fn server(&self, id: &str) -> Result<Server, Error> {
        self.get(
            |s| &s.compute,
            &format!("/servers/{}", encode(id)),
            "server",
        )
        .await
    }

    /// Compute "List Servers Detailed" with the `name` filter (a regular
    /// expression in Nova: pass a prefix without special characters).
    ///
    /// Every page of it: Nova answers at most its `max_limit` (1,000 by
    /// default) a request and a `servers_links` `next` link when more may
    /// follow ("Paginated collections"); the next page is asked for by
    /// `marker` (the last id seen) on the same endpoint, never at the link's
    /// host. Bounded by [`SERVER_PAGES_MAX`].
    pub async fn servers(&self, name: Option<&str>) -> Result<Vec<Server>, Error> {
        let mut all: Vec<Server> = Vec::new();
        let mut marker: Option<String> = None;
        for _ in 0..SERVER_PAGES_MAX {
            let mut path = format!("/servers/detail?limit={SERVERS_PAGE}");
            if let Some(n) = name {
                path.push_str(&format!("&name={}", encode(n)));
            }
            if let Some(m) = &marker {
                path.push_str(&format!("&marker={}", encode(m)));
            }
            let (_, text) = self
                .call(reqwest::Method::GET, |s| &s.compute, &path, None)
                .await?;
            let page: ServerPage = serde_json::from_str(&text)
                .map_err(|e| Error::Protocol(format!("servers: {e}")))?;
            let more = page.servers_links.iter().any(|l| l.rel == "next");
            let last = page.servers.last().map(|s| s.id.clone());
            all.extend(page.servers);
            match last {
                Some(l) if more => {
                    if marker.as_deref() == Some(l.as_str()) {
                        return Err(Error::Protocol(format!(
                            "servers: the page after marker {l} starts with it again"
                        )));
                    }
                    marker = Some(l);
                }
                _ => return Ok(all),
            }
        }
        Err(Error::Protocol(format!(
            "servers: more than {SERVER_PAGES_MAX} pages of {SERVERS_PAGE}"
        )))
    }

    /// Compute "Delete Server" (204).
    pub async fn delete_server(&self, id: &str) -> Result<(), Error> {
        self.call(
            reqwest::Method::DELETE,
            |s| &s.compute,
            &format!("/servers/{}", encode(id)),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Compute "Reboot Server" (`reboot`, SOFT or HARD).
    pub async fn reboot(&self, id: &str, hard: bool) -> Result<(), Error> {
        let kind = if hard { "HARD" } else { "SOFT" };
        self.action(id, json!({ "reboot": { "type": kind } })).await
    }

    /// Compute "Start Server" (`os-start`).
    pub async fn start(&self, id: &str) -> Result<(), Error> {
        self.action(id, json!({ "os-start": null })).await
    }

    /// Compute "Stop Server" (`os-stop`).
    pub async fn stop(&self, id: &str) -> Result<(), Error> {
        self.action(id, json!({ "os-stop": null })).await
    }

    /// Compute "List Actions For Server" (`os-instance-actions`), newest
    /// first: the lifecycle's mark that an action it asked for was
    /// carried out (the newest request id moves).
    pub async fn instance_actions(&self, id: &str) -> Result<Vec<InstanceAction>, Error> {
        self.get(
            |s| &s.compute,
            &format!("/servers/{}/os-instance-actions", encode(id)),
            "instanceActions",
        )
        .await
    }

    async fn action(&self, id: &str, body: Value) -> Result<(), Error> {
        self.call(
            reqwest::Method::POST,
            |s| &s.compute,
            &format!("/servers/{}/action", encode(id)),
            Some(&body),
        )
        .await
        .map(|_| ())
    }
}

/// Servers asked for a page (Nova's default `max_limit`: a VIM may answer
/// fewer, and says so with its `next` link).
const SERVERS_PAGE: usize = 1_000;
/// Pages one listing follows at most (a million servers of 1,000).
const SERVER_PAGES_MAX: usize = 1_000;

/// One page of "List Servers Detailed".
#[derive(serde::Deserialize)]
struct ServerPage {
    servers: Vec<Server>,
    #[serde(default)]
    servers_links: Vec<PageLink>,
}

#[derive(serde::Deserialize)]
struct PageLink {
    #[serde(default)]
    rel: String,
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved
/// characters pass).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_printed() {
        let c = Connector {
            auth_url: "http://x/identity/v3".into(),
            user: "admin".into(),
            password: Secret::new("s3cret-value"),
            project: "vnf".into(),
            user_domain: "Default".into(),
            project_domain: "Default".into(),
            region: None,
            timeout: Duration::from_secs(1),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode("vnf-net_1.a~"), "vnf-net_1.a~");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
    }
}
