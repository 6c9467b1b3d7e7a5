//! The links the runner can hurt: each pod reaches PostgreSQL through a
//! fault proxy of the runner's own (its store URL names the proxy's
//! loopback port), so latency, bandwidth, resets, blackholes, a lost
//! COMMIT reply and slow closes hit one pod's link or every pod's; and
//! packets on a pod's link can be dropped by nftables (half-open, loss),
//! which a proxy cannot model (its own kernel keeps ACKing).
//!
//! Every fault is undone on every exit path: `heal` clears the proxies and
//! deletes the runner's nftables table, and dropping [`Links`] does too (a
//! runner SIGKILLed mid-fault leaves a table `vigil chaos clean` sweeps).
//! A pod in a container has a network namespace of its own: its packets are
//! dropped there, in a table of the same name (removed the same ways, and
//! with the container, which `vigil chaos clean` removes).

use crate::chaos::history::History;
use crate::chaos::net::{self, LinkFault, LinkProxy, NetnsFaults, NftFaults, RuleId};
use crate::chaos::scenario::{Action, Direction, LinkSpec, PlannedFault};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One proxy per pod in front of the database, and the packet faults.
pub(super) struct Links {
    /// Pod id -> the proxy its store connections go through.
    proxies: BTreeMap<String, Arc<LinkProxy>>,
    /// Created at the first packet fault (nft is needed only then).
    nft: Mutex<Option<NftFaults>>,
    /// Pod id -> its packet faults in its own network namespace (a
    /// container's), made at its first packet fault.
    netns: Mutex<BTreeMap<String, NetnsFaults>>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("pods", &self.proxies.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Links {
    /// A proxy per pod in front of the database at `store_url`; what the
    /// proxies see (a commit cut, connections reset) goes to `history`.
    pub async fn start(
        pods: &[String],
        store_url: &str,
        listen: std::net::IpAddr,
        seed: u64,
        history: Arc<History>,
    ) -> Result<Links> {
        let url = url::Url::parse(store_url).context("the store URL of the link proxies")?;
        let upstream = format!(
            "{}:{}",
            url.host_str().context("the store URL names no host")?,
            url.port().unwrap_or(5432)
        );
        let mut proxies = BTreeMap::new();
        let mut forwarders = Vec::new();
        for (i, pod) in pods.iter().enumerate() {
            let proxy = LinkProxy::start(
                &format!("store link of {pod}"),
                std::net::SocketAddr::new(listen, 0),
                &upstream,
                seed.wrapping_add(i as u64),
            )
            .await
            .with_context(|| format!("starting the store link proxy of {pod}"))?;
            let mut events = proxy.events();
            let (history, pod_id) = (history.clone(), pod.clone());
            forwarders.push(tokio::spawn(async move {
                while let Ok(ev) = events.recv().await {
                    history.record(
                        "link",
                        json!({ "pod": pod_id, "link": "store", "event": ev }),
                    );
                }
            }));
            proxies.insert(pod.clone(), proxy);
        }
        Ok(Links {
            proxies,
            nft: Mutex::new(None),
            netns: Mutex::default(),
            forwarders,
        })
    }

    /// `store_url` (the URL as the pods reach the store) as pod `pod`
    /// reaches it instead: through its proxy, on the address it listens on
    /// (loopback, or the scenario network's gateway for containers).
    pub fn pod_store_url(&self, pod: &str, store_url: &str) -> Result<String> {
        let proxy = self
            .proxies
            .get(pod)
            .with_context(|| format!("no store link proxy for {pod}"))?;
        let mut url = url::Url::parse(store_url).context("the store URL")?;
        url.set_host(Some(&proxy.addr().ip().to_string()))
            .context("setting the proxy's host")?;
        url.set_port(Some(proxy.addr().port()))
            .map_err(|()| anyhow::anyhow!("the store URL cannot take a port"))?;
        Ok(url.to_string())
    }

    /// Every pod's store URL through its proxy.
    pub fn pod_store_urls(&self, store_url: &str) -> Result<BTreeMap<String, String>> {
        self.proxies
            .keys()
            .map(|p| Ok((p.clone(), self.pod_store_url(p, store_url)?)))
            .collect()
    }

    /// Apply link fault `f` to `pods` for its duration, then heal it.
    /// `netns`: pod -> a process in the pod's own network namespace (a
    /// container's init), where its packets are dropped; a pod not in it
    /// shares the runner's.
    pub async fn apply(
        &self,
        f: &PlannedFault,
        pods: &[String],
        netns: &BTreeMap<String, u32>,
    ) -> Result<()> {
        let spec = f
            .link
            .clone()
            .with_context(|| format!("{} has no link parameters", f.action.as_str()))?;
        let duration = Duration::from_millis(f.duration_ms.unwrap_or(0));
        let targets: Vec<&Arc<LinkProxy>> = pods
            .iter()
            .map(|p| {
                self.proxies
                    .get(p)
                    .with_context(|| format!("no store link proxy for {p}"))
            })
            .collect::<Result<_>>()?;
        if f.action.is_packet_level() {
            let mut rules = Vec::new();
            let set = self.drop_packets(f.action, &spec, pods, &targets, netns, &mut rules);
            if set.is_ok() {
                tokio::time::sleep(duration).await;
            }
            // Undone whether or not every rule could be set.
            let removed = self.undrop_packets(rules);
            return set.and(removed);
        }
        let fault = proxy_fault(f.action, &spec)?;
        for proxy in &targets {
            proxy.set(fault.clone());
        }
        tokio::time::sleep(duration).await;
        for proxy in &targets {
            proxy.heal();
        }
        Ok(())
    }

    /// Set packet fault `action` on each of `pods`' links (`targets`, their
    /// proxies): in the pod's own network namespace when `netns` names a
    /// process in it, else on its proxy's port on the runner's loopback.
    /// Each rule set goes to `rules` (with the pod whose namespace holds
    /// it), so a failure part way is undone too.
    fn drop_packets(
        &self,
        action: Action,
        spec: &LinkSpec,
        pods: &[String],
        targets: &[&Arc<LinkProxy>],
        netns: &BTreeMap<String, u32>,
        rules: &mut Vec<(Option<String>, RuleId)>,
    ) -> Result<()> {
        for (pod, proxy) in pods.iter().zip(targets) {
            if let Some(&pid) = netns.get(pod) {
                let mut all = lock(&self.netns);
                // A restarted container has a new init, in a new namespace.
                if all.get(pod).is_none_or(|n| n.pid() != pid) {
                    all.remove(pod);
                    all.insert(pod.clone(), NetnsFaults::enter(pid)?);
                }
                let ns = all.get(pod).context("nftables in the pod's namespace")?;
                let peer = proxy.addr();
                rules.push((
                    Some(pod.clone()),
                    match action {
                        Action::HalfOpen => ns.half_open(peer)?,
                        Action::Loss => ns.loss(peer, spec.percent)?,
                        other => bail!("{} is not a packet fault", other.as_str()),
                    },
                ));
                continue;
            }
            let mut nft = lock(&self.nft);
            if nft.is_none() {
                *nft = Some(NftFaults::new()?);
            }
            let nft = nft.as_ref().context("nftables")?;
            let port = proxy.addr().port();
            rules.push((
                None,
                match action {
                    Action::HalfOpen => nft.half_open(port)?,
                    Action::Loss => nft.loss(port, spec.percent)?,
                    other => bail!("{} is not a packet fault", other.as_str()),
                },
            ));
        }
        Ok(())
    }

    /// Remove the rules [`Links::drop_packets`] set: every one, the first
    /// error returned.
    fn undrop_packets(&self, rules: Vec<(Option<String>, RuleId)>) -> Result<()> {
        let mut result = Ok(());
        for (pod, rule) in rules {
            let removed = match pod {
                Some(pod) => lock(&self.netns)
                    .get(&pod)
                    .map_or(Ok(()), |n| n.remove(rule)),
                None => lock(&self.nft).as_ref().map_or(Ok(()), |n| n.remove(rule)),
            };
            if result.is_ok() {
                result = removed;
            }
        }
        result
    }

    /// Undo every link fault still in place (the scenario's heal, and
    /// every exit path through Drop).
    pub fn heal(&self) {
        for proxy in self.proxies.values() {
            proxy.heal();
        }
        if let Some(nft) = lock(&self.nft).as_ref()
            && let Err(e) = nft.clear()
        {
            tracing::warn!(error = %e, "could not delete the runner's nftables table");
        }
        for (pod, ns) in std::mem::take(&mut *lock(&self.netns)) {
            if let Err(e) = ns.clear() {
                tracing::warn!(pod, error = %e, "could not delete the runner's nftables table in the pod's network namespace");
            }
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.heal();
        for proxy in self.proxies.values() {
            proxy.shutdown();
        }
        for f in &self.forwarders {
            f.abort();
        }
    }
}

fn direction(d: Direction) -> net::Direction {
    match d {
        Direction::Up => net::Direction::Up,
        Direction::Down => net::Direction::Down,
        Direction::Both => net::Direction::Both,
    }
}

/// The proxy's fault for a scenario's link fault.
pub(super) fn proxy_fault(action: Action, spec: &LinkSpec) -> Result<LinkFault> {
    Ok(match action {
        Action::Latency => LinkFault::Latency {
            direction: direction(spec.direction),
            ms: spec.ms,
            jitter_ms: spec.jitter_ms,
        },
        Action::Bandwidth => LinkFault::Bandwidth {
            direction: direction(spec.direction),
            bytes_per_sec: spec.bytes_per_sec,
        },
        Action::Reset => LinkFault::Reset,
        Action::Blackhole => LinkFault::Blackhole {
            direction: direction(spec.direction),
        },
        Action::CutAfterCommit => LinkFault::CutAfterCommit {
            pattern: spec.pattern.clone(),
            times: spec.times,
            hang: spec.hang,
        },
        Action::SlowClose => LinkFault::SlowClose { ms: spec.ms },
        other => bail!("{} is not a proxy fault", other.as_str()),
    })
}
