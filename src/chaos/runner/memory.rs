//! The pods' resident memory as the host's kernel counts it (`VmRSS` in
//! `/proc/PID/status`): evidence the engine cannot write about what a slow
//! consumer costs a pod. A process pod is the runner's child; a container's
//! pod is its init process (the image runs nothing else), found through
//! the Docker API.

use super::Shared;
use crate::chaos::scenario::PlannedFault;
use serde_json::json;
use std::future::Future;
use std::time::Duration;

/// How often the pods' memory is sampled while a client link is hurt.
const EVERY: Duration = Duration::from_millis(250);

/// `VmRSS` of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Run `fault` (a client-link fault in force for its duration) while the
/// memory of `pods` is sampled: a `memory` history line per pod just before
/// (`phase` `baseline`), then every 250 ms until it is over (`fault`). A
/// pod whose memory cannot be read at the baseline makes the runner blind.
pub(super) async fn sampled<T>(
    shared: &Shared,
    f: &PlannedFault,
    pods: &[String],
    fault: impl Future<Output = T>,
) -> T {
    let mut pids = Vec::new();
    for p in pods {
        let pid = shared.cluster.lock().await.host_pid(p).await;
        match pid {
            Ok(Some(pid)) if rss_kib(pid).is_some() => pids.push((p.clone(), pid)),
            Ok(_) => shared.blind(format!("{p}'s resident memory: no process to read")),
            Err(e) => shared.blind(format!("{p}'s resident memory: {e:#}")),
        }
    }
    let record = |phase: &str| {
        for (pod, pid) in &pids {
            if let Some(kib) = rss_kib(*pid) {
                shared.history.record(
                    "memory",
                    json!({ "index": f.index, "pod": pod, "phase": phase, "rss_kib": kib }),
                );
            }
        }
    };
    record("baseline");
    tokio::pin!(fault);
    loop {
        tokio::select! {
            out = &mut fault => return out,
            () = tokio::time::sleep(EVERY) => record("fault"),
        }
    }
}
