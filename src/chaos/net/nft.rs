//! Packet-level faults the proxy cannot model: the proxy's own kernel keeps
//! acknowledging, so TCP keepalives and retransmission timeouts never fire
//! behind it. Here the kernel itself drops a port's segments (nftables, run
//! through `nft`; it needs root or CAP_NET_ADMIN), so a link goes half-open
//! (no FIN, no RST ever arrives) or lossy the way a real network does.
//!
//! Every rule lives in one table of the runner's own, `inet
//! vigil_chaos_<runner pid>`, so nothing else on the machine is touched and
//! a runner killed with SIGKILL leaves a table [`sweep`] can recognise as
//! orphaned (`vigil chaos clean` does). Each fault is a base chain of its
//! own in that table: removing it deletes its chain, and no rule handle
//! has to be read back from `nft`.
//!
//! The rules hook prerouting at the raw priority (-300): on loopback every
//! segment, either way, passes there, before connection tracking, and
//! dropping it there loses it on the wire, as a network would. Dropping on
//! output instead would hand the sender a local error (EPERM) a network
//! never gives.
//!
//! A pod in a container has a network namespace of its own: [`NetnsFaults`]
//! puts a table of the same name there (`nsenter -t <pid> -n nft ...`,
//! through the container's init process) and drops the segments between
//! the pod and its peer (the runner's proxy on the network's gateway).
//! There the pod's own segments never pass prerouting on their way out,
//! so those are dropped on output, at the same priority: TCP takes that
//! local refusal as a lost transmission (it keeps the segment and
//! retransmits it with the usual backoff; a socket call sees no error),
//! and the peer's segments are dropped at prerouting as they arrive. The
//! table dies with the namespace: a container removed takes it along.

use anyhow::{Context, Result, bail};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const PREFIX: &str = "vigil_chaos_";
const INSTALL: &str = "install nftables: apt-get install nftables";

/// One fault's rules, to remove them with [`NftFaults::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault_{}", self.0)
    }
}

/// Chain names, unique in the process (every [`NftFaults`] of it shares
/// the table).
static NEXT_RULE: AtomicU64 = AtomicU64::new(0);

/// How many [`NftFaults`] of this process are alive: the last one dropped
/// deletes the table, an earlier one only its own chains.
static LIVE: Mutex<usize> = Mutex::new(0);

/// The runner's nftables table and the faults it set there.
#[derive(Debug)]
pub struct NftFaults {
    table: String,
    mine: Mutex<Vec<RuleId>>,
}

fn nft_bin() -> &'static Path {
    // A non-root PATH often lacks the sbin directories; `nft` is there.
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .unwrap_or(Path::new("nft"))
}

/// Whether `nft` is installed at all.
fn installed() -> bool {
    match Command::new(nft_bin())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn nsenter_bin() -> &'static Path {
    ["/usr/bin/nsenter", "/bin/nsenter", "/usr/sbin/nsenter"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .unwrap_or(Path::new("nsenter"))
}

/// Run `nft` with `args`, `script` on its standard input (`-f -`: one
/// batch, applied whole or not at all); its standard output.
fn nft(args: &[&str], script: &str) -> Result<String> {
    nft_in(None, args, script)
}

/// [`nft`] in the network namespace of process `netns` (entered with
/// `nsenter -t PID -n`), or in this process's own.
fn nft_in(netns: Option<u32>, args: &[&str], script: &str) -> Result<String> {
    let mut cmd = match netns {
        None => Command::new(nft_bin()),
        Some(pid) => {
            let mut c = Command::new(nsenter_bin());
            c.args(["-t", &pid.to_string(), "-n"]).arg(nft_bin());
            c
        }
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound && netns.is_some() {
                anyhow::anyhow!("nsenter not found: install util-linux")
            } else if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!("nft not found: {INSTALL}")
            } else {
                anyhow::anyhow!("running nft: {e}")
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .context("writing rules to nft")?;
    }
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if err.contains("Operation not permitted") {
            bail!(
                "nft {}: not permitted (run as root, or with CAP_NET_ADMIN): {err}",
                args.join(" ")
            );
        }
        bail!("nft {} failed: {err}\n{script}", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Apply a batch of commands.
fn apply(script: &str) -> Result<()> {
    apply_in(None, script)
}

fn apply_in(netns: Option<u32>, script: &str) -> Result<()> {
    nft_in(netns, &["-f", "-"], script).map(drop)
}

/// Apply a batch that deletes something: already gone is done.
fn apply_delete(script: &str) -> Result<()> {
    apply_delete_in(None, script)
}

fn apply_delete_in(netns: Option<u32>, script: &str) -> Result<()> {
    match apply_in(netns, script) {
        Err(e) if e.to_string().contains("No such file or directory") => Ok(()),
        r => r,
    }
}

/// What `numgen` must match for `percent` % of packets (nft checks the
/// constant against the range 0-99 of `mod 100`).
fn loss_match(percent: u8) -> Result<String> {
    if percent > 100 {
        bail!("packet loss of {percent} %: at most 100");
    }
    let under = match percent.checked_sub(1) {
        Some(max) => format!("<= {max}"),
        None => "< 0".to_owned(),
    };
    Ok(format!("numgen random mod 100 {under} "))
}

impl NftFaults {
    /// For this process (table `vigil_chaos_<pid>`). Errors clearly if nft
    /// is missing or not permitted.
    pub fn new() -> Result<NftFaults> {
        let table = format!("{PREFIX}{}", std::process::id());
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        apply(&format!("add table inet {table}\n"))
            .with_context(|| format!("creating the nftables table {table}"))?;
        *live += 1;
        Ok(NftFaults {
            table,
            mine: Mutex::new(Vec::new()),
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Drop every TCP packet to or from 127.0.0.1:port (both directions, on
    /// loopback): no FIN, no RST ever gets through: a half-open link for
    /// whoever talks to that port.
    pub fn half_open(&self, port: u16) -> Result<RuleId> {
        self.add(port, "")
            .with_context(|| format!("half-opening 127.0.0.1:{port}"))
    }

    /// Drop `percent` % of TCP packets to or from 127.0.0.1:port at random.
    pub fn loss(&self, port: u16, percent: u8) -> Result<RuleId> {
        self.add(port, &loss_match(percent)?)
            .with_context(|| format!("{percent} % packet loss on 127.0.0.1:{port}"))
    }

    /// A chain of its own for one fault: `matching` (before the verdict)
    /// narrows which of the port's packets are dropped.
    fn add(&self, port: u16, matching: &str) -> Result<RuleId> {
        let id = RuleId(NEXT_RULE.fetch_add(1, Ordering::Relaxed));
        let t = &self.table;
        // The table again, in case clear() deleted it: `add` of what exists
        // is no error.
        apply(&format!(
            "add table inet {t}\n\
             add chain inet {t} {id} {{ type filter hook prerouting priority -300; policy accept; }}\n\
             add rule inet {t} {id} ip daddr 127.0.0.1 tcp dport {port} {matching}drop\n\
             add rule inet {t} {id} ip saddr 127.0.0.1 tcp sport {port} {matching}drop\n"
        ))?;
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        tracing::info!(table = %t, rule = %id, port, "nft fault set");
        Ok(id)
    }

    /// Remove one fault's rules (done already is no error).
    pub fn remove(&self, id: RuleId) -> Result<()> {
        let t = &self.table;
        apply_delete(&format!(
            "flush chain inet {t} {id}\ndelete chain inet {t} {id}\n"
        ))
        .with_context(|| format!("removing nft fault {id}"))?;
        self.mine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| *m != id);
        tracing::info!(table = %t, rule = %id, "nft fault removed");
        Ok(())
    }

    /// Delete the whole table, every fault of this process with it
    /// (idempotent).
    pub fn clear(&self) -> Result<()> {
        apply_delete(&format!("delete table inet {}\n", self.table))
            .with_context(|| format!("deleting the nftables table {}", self.table))?;
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

impl Drop for NftFaults {
    /// Every exit path that unwinds undoes the faults; SIGKILL leaves the
    /// table to [`sweep`].
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        *live = live.saturating_sub(1);
        if *live == 0 {
            let _ = self.clear();
        } else {
            let mine = std::mem::take(&mut *self.mine.lock().unwrap_or_else(|p| p.into_inner()));
            for id in mine {
                let _ = self.remove(id);
            }
        }
    }
}

/// The identity of process `pid`'s network namespace (the inode of
/// `/proc/PID/ns/net`), or None when the process is gone.
fn netns_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Packet faults in the network namespace of another process (a pod
/// container's init): a table named as the runner's own on the host, one
/// chain pair per fault (the peer's segments dropped at prerouting, the
/// pod's at output). Every command first checks that the pid still names
/// the namespace the table was made in: a container that exited took its
/// namespace and the rules with it, and a pid the kernel has handed to
/// another process since is never entered.
#[derive(Debug)]
pub struct NetnsFaults {
    pid: u32,
    ns: u64,
    table: String,
    mine: Mutex<Vec<RuleId>>,
}

impl NetnsFaults {
    /// A table of this process's in the network namespace of `pid`.
    pub fn enter(pid: u32) -> Result<NetnsFaults> {
        let ns = netns_of(pid)
            .with_context(|| format!("process {pid} is gone: no network namespace to enter"))?;
        let f = NetnsFaults {
            pid,
            ns,
            table: format!("{PREFIX}{}", std::process::id()),
            mine: Mutex::new(Vec::new()),
        };
        if netns_of(std::process::id()) == Some(ns) {
            bail!("process {pid} shares the runner's network namespace");
        }
        apply_in(Some(pid), &format!("add table inet {}\n", f.table)).with_context(|| {
            format!(
                "creating the nftables table {} in the network namespace of process {pid}",
                f.table
            )
        })?;
        Ok(f)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the namespace the table was made in is still the pid's.
    fn same_ns(&self) -> bool {
        netns_of(self.pid) == Some(self.ns)
    }

    /// Drop every TCP segment between this namespace and `peer` (both
    /// ways): no FIN, no RST ever gets through.
    pub fn half_open(&self, peer: SocketAddr) -> Result<RuleId> {
        self.add(peer, "")
            .with_context(|| format!("half-opening the link to {peer} (process {})", self.pid))
    }

    /// Drop `percent` % of the TCP segments between this namespace and
    /// `peer` at random, each way.
    pub fn loss(&self, peer: SocketAddr, percent: u8) -> Result<RuleId> {
        self.add(peer, &loss_match(percent)?).with_context(|| {
            format!(
                "{percent} % packet loss on the link to {peer} (process {})",
                self.pid
            )
        })
    }

    fn add(&self, peer: SocketAddr, matching: &str) -> Result<RuleId> {
        if !self.same_ns() {
            bail!("process {} exited: its network namespace is gone", self.pid);
        }
        let id = RuleId(NEXT_RULE.fetch_add(1, Ordering::Relaxed));
        let (t, port, ip) = (&self.table, peer.port(), peer.ip());
        let family = if ip.is_ipv4() { "ip" } else { "ip6" };
        apply_in(
            Some(self.pid),
            &format!(
                "add table inet {t}\n\
                 add chain inet {t} {id}_in {{ type filter hook prerouting priority -300; policy accept; }}\n\
                 add chain inet {t} {id}_out {{ type filter hook output priority -300; policy accept; }}\n\
                 add rule inet {t} {id}_in {family} saddr {ip} tcp sport {port} {matching}drop\n\
                 add rule inet {t} {id}_out {family} daddr {ip} tcp dport {port} {matching}drop\n"
            ),
        )?;
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        tracing::info!(table = %t, rule = %id, pid = self.pid, %peer, "nft fault set in a pod's network namespace");
        Ok(id)
    }

    /// Remove one fault's rules (done already, or the namespace gone, is
    /// no error).
    pub fn remove(&self, id: RuleId) -> Result<()> {
        let t = &self.table;
        if self.same_ns() {
            apply_delete_in(
                Some(self.pid),
                &format!(
                    "flush chain inet {t} {id}_in\ndelete chain inet {t} {id}_in\n\
                     flush chain inet {t} {id}_out\ndelete chain inet {t} {id}_out\n"
                ),
            )
            .with_context(|| format!("removing nft fault {id} (process {})", self.pid))?;
        }
        self.mine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| *m != id);
        tracing::info!(table = %t, rule = %id, pid = self.pid, "nft fault removed");
        Ok(())
    }

    /// Delete the table, every fault in it (idempotent; the namespace
    /// gone is done).
    pub fn clear(&self) -> Result<()> {
        if self.same_ns() {
            apply_delete_in(
                Some(self.pid),
                &format!("delete table inet {}\n", self.table),
            )
            .with_context(|| {
                format!(
                    "deleting the nftables table {} of process {}",
                    self.table, self.pid
                )
            })?;
        }
        self.mine.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

impl Drop for NetnsFaults {
    fn drop(&mut self) {
        let _ = self.clear();
    }
}

/// Whether process `pid` is running (signal 0 reaches it, or exists but is
/// not ours to signal).
fn running(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 0 && !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Delete every `vigil_chaos_<pid>` table whose pid is not a running process
/// (a runner SIGKILLed mid-fault); the table names deleted. `all`: every
/// `vigil_chaos_*` table regardless, this process's too. Without `nft`
/// installed there can be no table: nothing to do.
pub fn sweep(all: bool) -> Result<Vec<String>> {
    if !installed() {
        return Ok(Vec::new());
    }
    let listing = nft(&["list", "tables"], "").context("listing nftables tables")?;
    let mut deleted = Vec::new();
    for line in listing.lines() {
        // "table inet vigil_chaos_1234"
        let mut words = line.split_whitespace();
        let (Some("table"), Some(family), Some(name)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if all || !running(pid) {
            apply_delete(&format!("delete table {family} {name}\n"))
                .with_context(|| format!("deleting the nftables table {name}"))?;
            deleted.push(name.to_owned());
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    /// The tests share this process's table, and one checks that the last
    /// drop deletes it: one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// Whether nft can be used here; without it, a note (a failure under
    /// CI=true).
    fn usable() -> bool {
        let why = if !installed() {
            format!("nft missing ({INSTALL})")
        } else if let Err(e) = nft(&["list", "tables"], "") {
            format!("{e:#}")
        } else {
            return true;
        };
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "CI=true but nft cannot be used: {why}"
        );
        eprintln!("NOTE: nft packet-fault tests NOT run: {why}");
        false
    }

    fn tables() -> String {
        nft(&["list", "tables"], "").unwrap_or_default()
    }

    /// A connected pair on loopback: the client, the server's end, and the
    /// server's port.
    async fn pair() -> (TcpStream, TcpStream, u16) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s, port)
    }

    async fn one_byte(s: &mut TcpStream) -> u8 {
        let mut b = [0u8; 1];
        // Retransmission backs off while the rule holds: allow for it.
        timeout(Duration::from_secs(60), s.read_exact(&mut b))
            .await
            .expect("the byte arrives once the rule is gone")
            .unwrap();
        b[0]
    }

    /// Proves a rule stops delivery both ways with no error on either side:
    /// delivery works first; while the rule holds, writes succeed and reads
    /// see nothing; after removal, what was written meanwhile arrives.
    async fn stalls_then_delivers(set: impl FnOnce(&NftFaults, u16) -> Result<RuleId>) {
        let (mut c, mut s, port) = pair().await;
        c.write_all(b"a").await.unwrap();
        assert_eq!(one_byte(&mut s).await, b'a');
        s.write_all(b"A").await.unwrap();
        assert_eq!(one_byte(&mut c).await, b'A');
        let nft = NftFaults::new().unwrap();
        let id = set(&nft, port).unwrap();
        c.write_all(b"b").await.unwrap();
        s.write_all(b"B").await.unwrap();
        let mut buf = [0u8; 1];
        assert!(
            timeout(Duration::from_millis(500), s.read(&mut buf))
                .await
                .is_err(),
            "the server read something (or an error) through the rule"
        );
        assert!(
            timeout(Duration::from_millis(500), c.read(&mut buf))
                .await
                .is_err(),
            "the client read something (or an error) through the rule"
        );
        nft.remove(id).unwrap();
        assert_eq!(one_byte(&mut s).await, b'b');
        assert_eq!(one_byte(&mut c).await, b'B');
    }

    #[tokio::test]
    async fn half_open_stalls_both_ways_without_an_error_and_heals() {
        let _serial = SERIAL.lock().await;
        if !usable() {
            return;
        }
        stalls_then_delivers(|nft, port| nft.half_open(port)).await;
    }

    #[tokio::test]
    async fn loss_of_100_percent_drops_everything_until_removed() {
        let _serial = SERIAL.lock().await;
        if !usable() {
            return;
        }
        stalls_then_delivers(|nft, port| nft.loss(port, 100)).await;
        let nft = NftFaults::new().unwrap();
        assert!(nft.loss(1, 101).is_err());
    }

    #[tokio::test]
    async fn sweep_deletes_a_dead_runners_table_and_keeps_a_live_one() {
        let _serial = SERIAL.lock().await;
        if !usable() {
            return;
        }
        let dead = 4_194_000;
        assert!(!running(dead), "pid {dead} is running here: pick another");
        let mine = NftFaults::new().unwrap();
        mine.half_open(1).unwrap();
        apply(&format!("add table inet {PREFIX}{dead}\n")).unwrap();
        let swept = sweep(false).unwrap();
        assert!(swept.contains(&format!("{PREFIX}{dead}")), "{swept:?}");
        assert!(!swept.contains(&mine.table().to_owned()), "{swept:?}");
        let left = tables();
        assert!(left.contains(mine.table()), "{left}");
        assert!(!left.contains(&format!("{PREFIX}{dead}")), "{left}");
    }

    #[tokio::test]
    async fn drop_deletes_the_table() {
        let _serial = SERIAL.lock().await;
        if !usable() {
            return;
        }
        let nft = NftFaults::new().unwrap();
        let table = nft.table().to_owned();
        let id = nft.half_open(1).unwrap();
        assert!(tables().contains(&table));
        // Removing twice, or after a clear, is no error.
        nft.remove(id).unwrap();
        nft.remove(id).unwrap();
        nft.half_open(2).unwrap();
        drop(nft);
        assert!(!tables().contains(&table), "{}", tables());
    }

    /// A process of its own network namespace (`unshare -n`), killed on
    /// drop.
    struct Isolated(std::process::Child);

    impl Drop for Isolated {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    async fn isolated() -> Isolated {
        let child = Isolated(
            Command::new("unshare")
                .args(["-n", "sleep", "120"])
                .spawn()
                .expect("unshare -n (util-linux)"),
        );
        let pid = child.0.id();
        let ours = netns_of(std::process::id());
        for _ in 0..200 {
            if netns_of(pid).is_some_and(|n| Some(n) != ours) {
                return child;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("process {pid} never entered a network namespace of its own");
    }

    #[tokio::test]
    async fn a_namespace_gets_its_own_table_and_loses_it_with_its_process() {
        let _serial = SERIAL.lock().await;
        if !usable() {
            return;
        }
        let mut child = isolated().await;
        let pid = child.0.id();
        let listed = |pid| nft_in(Some(pid), &["list", "ruleset"], "").unwrap();
        let peer: SocketAddr = "10.9.8.7:5432".parse().unwrap();
        let ns = NetnsFaults::enter(pid).unwrap();
        let half = ns.half_open(peer).unwrap();
        let rules = listed(pid);
        assert!(rules.contains(&format!("table inet {PREFIX}")), "{rules}");
        assert!(
            rules.contains("ip saddr 10.9.8.7 tcp sport 5432 drop")
                && rules.contains("ip daddr 10.9.8.7 tcp dport 5432 drop"),
            "both ways: {rules}"
        );
        assert!(rules.contains("hook prerouting") && rules.contains("hook output"));
        assert!(
            !nft(&["list", "ruleset"], "").unwrap().contains("10.9.8.7"),
            "nothing in the runner's own namespace"
        );
        let lossy = ns.loss(peer, 20).unwrap();
        assert!(listed(pid).contains("numgen random mod 100"));
        ns.remove(half).unwrap();
        ns.remove(half).unwrap();
        let rules = listed(pid);
        assert!(!rules.contains(&format!("{half}_")), "{rules}");
        assert!(rules.contains(&format!("{lossy}_in")), "{rules}");
        drop(ns);
        assert!(!listed(pid).contains(PREFIX), "drop deletes the table");
        // The process gone, its namespace and rules with it: nothing to
        // remove, no error, and nothing more to enter.
        let ns = NetnsFaults::enter(pid).unwrap();
        let id = ns.half_open(peer).unwrap();
        let _ = child.0.kill();
        let _ = child.0.wait();
        assert!(ns.half_open(peer).is_err());
        ns.remove(id).unwrap();
        ns.clear().unwrap();
        drop(ns);
        assert!(NetnsFaults::enter(pid).is_err());
    }
}
