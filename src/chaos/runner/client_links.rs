//! The links between a run's clients and the pods: a slow consumer. For
//! every run a client-link fault names (`link = { on = "client", ... }`),
//! the runner's attachers of that run reach each pod through a fault proxy
//! of the runner's own (one [`LinkProxy`] per run and pod, on loopback,
//! forwarding to the pod's API address: a local process, or a container's
//! port published on 127.0.0.1), so latency, bandwidth, resets and
//! blackholes hit that run's stream and no other client's. Works on either
//! store: nothing here touches the database.
//!
//! Proxies are made when an attacher first needs one (a pod restarted on a
//! new port gets a new one), and take every client-link fault in force.

use super::links::proxy_fault;
use crate::chaos::history::History;
use crate::chaos::net::{LinkFault, LinkProxy};
use crate::chaos::scenario::{Plan, PlannedFault, Scenario};
use anyhow::{Context, Result};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A fault in force on a run's client link: (fault index, run name, the
/// pod it hits or every pod, the proxy's fault).
type Active = (usize, String, Option<String>, LinkFault);

/// The receive buffer of a client link's proxy toward the pod (bytes).
const WINDOW: u32 = 16 * 1024;

pub(super) struct ClientLinks {
    /// The runs whose clients go through proxies (by name).
    runs: BTreeSet<String>,
    seed: u64,
    history: Arc<History>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (run, pod) -> the pod address it forwards to, and the proxy.
    proxies: BTreeMap<(String, String), (String, Arc<LinkProxy>)>,
    active: Vec<Active>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for ClientLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLinks")
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClientLinks {
    /// The client links of the runs `plan`'s client-link faults name; None
    /// when there are none.
    pub fn new(scn: &Scenario, plan: &Plan, history: Arc<History>) -> Option<ClientLinks> {
        let runs: BTreeSet<String> = plan
            .faults
            .iter()
            .filter(|f| f.on_client_link())
            .filter_map(|f| scn.fault_run(f.index))
            .collect();
        (!runs.is_empty()).then(|| ClientLinks {
            runs,
            seed: plan.seed,
            history,
            state: Mutex::new(State::default()),
        })
    }

    /// Whether a client-link fault names run `run`.
    pub fn names(&self, run: &str) -> bool {
        self.runs.contains(run)
    }

    /// The URL run `run`'s client uses to reach pod `pod`, whose API is at
    /// `pod_url`: through the run's proxy to that pod when a client-link
    /// fault names the run, else `pod_url` itself.
    /// `direct`: where the runner reaches the pod with no relay in between
    /// when that is not `pod_url`'s address (see `Driver::direct_addr`).
    pub async fn url(
        &self,
        run: &str,
        pod: &str,
        pod_url: &str,
        direct: Option<String>,
    ) -> Result<String> {
        if !self.runs.contains(run) {
            return Ok(pod_url.to_owned());
        }
        let key = (run.to_owned(), pod.to_owned());
        let proxied = |p: &LinkProxy| format!("http://{}/", p.addr());
        if let Some((to, p)) = lock(&self.state).proxies.get(&key)
            && to == pod_url
        {
            return Ok(proxied(p));
        }
        let parsed = url::Url::parse(pod_url).with_context(|| format!("{pod}'s URL {pod_url}"))?;
        let upstream = match direct {
            Some(d) => d,
            None => format!(
                "{}:{}",
                parsed.host_str().context("a pod URL names no host")?,
                parsed.port_or_known_default().unwrap_or(80)
            ),
        };
        let salt = self
            .runs
            .iter()
            .position(|r| r == run)
            .unwrap_or_default()
            .wrapping_mul(31)
            .wrapping_add(pod.len());
        // A thin link: a slow client's backlog must reach the pod, as it
        // would across a real network, not sit in megabytes of loopback
        // buffers.
        let proxy = LinkProxy::start_thin(
            &format!("client link of {run} to {pod}"),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            &upstream,
            self.seed.wrapping_add(1000 + salt as u64),
            WINDOW,
        )
        .await
        .with_context(|| format!("starting the client link proxy of {run} to {pod}"))?;
        let mut events = proxy.events();
        let (history, run_name, pod_id) = (self.history.clone(), run.to_owned(), pod.to_owned());
        let forwarder = tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
                history.record(
                    "link",
                    json!({ "pod": pod_id, "link": "client", "run": run_name, "event": ev }),
                );
            }
        });
        let mut st = lock(&self.state);
        // Another attacher of the run may have made one meanwhile: keep it.
        if let Some((to, p)) = st.proxies.get(&key)
            && to == pod_url
        {
            forwarder.abort();
            return Ok(proxied(p));
        }
        for (_, r, on, fault) in &st.active {
            if r == run && on.as_deref().is_none_or(|p| p == pod) {
                proxy.set(fault.clone());
            }
        }
        let url = proxied(&proxy);
        st.forwarders.push(forwarder);
        st.proxies.insert(key, (pod_url.to_owned(), proxy));
        Ok(url)
    }

    /// Client-link fault `f` on run `run`'s link to `pod` (None: to every
    /// pod) for its duration, then healed.
    pub async fn apply(&self, f: &PlannedFault, run: &str, pod: Option<&str>) -> Result<()> {
        let spec = f
            .link
            .as_ref()
            .with_context(|| format!("{} has no link parameters", f.action.as_str()))?;
        let fault = proxy_fault(f.action, spec)?;
        {
            let mut st = lock(&self.state);
            st.active.push((
                f.index,
                run.to_owned(),
                pod.map(str::to_owned),
                fault.clone(),
            ));
            for p in self.hit(&st, run, pod) {
                p.set(fault.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(f.duration_ms.unwrap_or(0))).await;
        let mut st = lock(&self.state);
        st.active.retain(|a| a.0 != f.index);
        for p in self.hit(&st, run, pod) {
            p.heal();
        }
        // Whatever else is still in force on those proxies stays.
        for ((r, on), (_, p)) in &st.proxies {
            for (_, ar, apod, fault) in &st.active {
                if ar == r && apod.as_deref().is_none_or(|x| x == on) {
                    p.set(fault.clone());
                }
            }
        }
        Ok(())
    }

    /// The proxies of `run` to `pod` (every pod when None).
    fn hit(&self, st: &State, run: &str, pod: Option<&str>) -> Vec<Arc<LinkProxy>> {
        st.proxies
            .iter()
            .filter(|((r, p), _)| r == run && pod.is_none_or(|x| x == p))
            .map(|(_, (_, proxy))| proxy.clone())
            .collect()
    }

    /// Undo every client-link fault (the scenario's heal, and Drop).
    pub fn heal(&self) {
        let mut st = lock(&self.state);
        st.active.clear();
        for (_, p) in st.proxies.values() {
            p.heal();
        }
    }
}

impl Drop for ClientLinks {
    fn drop(&mut self) {
        let st = lock(&self.state);
        for (_, p) in st.proxies.values() {
            p.heal();
            p.shutdown();
        }
        for f in &st.forwarders {
            f.abort();
        }
    }
}
