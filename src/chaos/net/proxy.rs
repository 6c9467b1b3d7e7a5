//! A TCP fault proxy, like Toxiproxy (which cannot be installed here). One
//! [`LinkProxy`] is one link: a listener whose every accepted connection is
//! forwarded to one upstream address. The chaos runner puts one in front of
//! PostgreSQL per pod (each pod's store URL names its own proxy port), so a
//! fault on a link hits one pod's view of the database and no other's.
//!
//! Each connection is four small tasks: per direction a reader, which reads
//! a chunk, applies the faults that decide *whether* bytes go on (blackhole,
//! the PostgreSQL cut), and queues it stamped with the time it was read; and
//! a writer, which decides *when* it goes (latency, bandwidth, a slow
//! close) and writes it. A writer handles chunks one at a time, so order is
//! kept whatever the delays. Both sockets are shared by the tasks (`Arc`)
//! and read and written through readiness, so the connection's supervisor
//! can reset both at any moment: it sets a zero linger and drops the last
//! references, and the peers see RST, never a FIN first.

use super::link::Way;
pub use super::link::{Direction, LinkEvent, LinkFault, LinkStats};
use super::pgwire::{Pass, Session};
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io;
use std::mem::discriminant;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The most one read takes from a socket, and the most a writer writes at
/// once when it throttles.
const CHUNK: usize = 16 * 1024;

/// Chunks read but not yet written, per direction: enough that latency does
/// not throttle a busy link (64 chunks per round of delay), few enough that
/// a stalled peer pushes back on the sender as a real link would.
const QUEUE: usize = 64;

/// The faults in force, in the shape the stages read them (Reset acts
/// when set and at accept, not in the stages).
#[derive(Debug, Default)]
struct Faults {
    latency: [Option<(u64, u64)>; 2],
    bandwidth: [Option<u64>; 2],
    blackhole: [bool; 2],
    cut: Option<Arc<Cut>>,
    slow_close: Option<u64>,
}

impl Faults {
    fn of(set: &[LinkFault], cut: Option<Arc<Cut>>) -> Faults {
        let mut f = Faults {
            cut,
            ..Faults::default()
        };
        for fault in set {
            for way in [Way::Up, Way::Down] {
                let i = way.index();
                match fault {
                    LinkFault::Latency {
                        direction,
                        ms,
                        jitter_ms,
                    } if direction.covers(way) => f.latency[i] = Some((*ms, *jitter_ms)),
                    LinkFault::Bandwidth {
                        direction,
                        bytes_per_sec,
                    } if direction.covers(way) => f.bandwidth[i] = Some((*bytes_per_sec).max(1)),
                    LinkFault::Blackhole { direction } if direction.covers(way) => {
                        f.blackhole[i] = true
                    }
                    LinkFault::SlowClose { ms } => f.slow_close = Some(*ms),
                    _ => {}
                }
            }
        }
        f
    }
}

/// A CutAfterCommit's pattern and how many cuts it has left. The count
/// lives apart from the fault list, so setting another fault does not
/// refill it.
#[derive(Debug)]
struct Cut {
    /// Lower case: matching ignores case.
    pattern: String,
    remaining: AtomicU32,
    hang: bool,
}

impl Cut {
    fn matches(&self, statement: &str) -> bool {
        statement.to_lowercase().contains(&self.pattern)
    }

    fn claim(&self) -> bool {
        self.remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    open: AtomicU64,
    bytes: [AtomicU64; 2],
    bytes_dropped: AtomicU64,
    resets: AtomicU64,
    commits_cut: AtomicU64,
}

/// What a connection's supervisor is told from outside.
#[derive(Debug)]
enum Ctl {
    Reset,
    Cut(String),
    Close,
}

struct ConnEntry {
    ctl: mpsc::UnboundedSender<Ctl>,
    /// A blackhole dropped some of its bytes: reset it at heal.
    dropped: Arc<AtomicBool>,
}

struct State {
    set: Vec<LinkFault>,
    cut: Option<Arc<Cut>>,
    conns: HashMap<u64, ConnEntry>,
    next_id: u64,
    shut: bool,
}

struct Inner {
    name: String,
    upstream: String,
    state: Mutex<State>,
    faults: watch::Sender<Arc<Faults>>,
    counters: Counters,
    events: broadcast::Sender<LinkEvent>,
    rng: Mutex<StdRng>,
    /// Per direction, when the throttled wire is next free.
    wire_free: [Mutex<Instant>; 2],
    stop: CancellationToken,
    /// A thin link's receive buffer on the upstream socket (None: the
    /// kernel's, autotuned to megabytes on loopback).
    window: Option<u32>,
}

/// A poisoned lock only means another task panicked while holding it; the
/// state inside is still whole (every update is one assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn publish(&self, st: &State) {
        self.faults
            .send_replace(Arc::new(Faults::of(&st.set, st.cut.clone())));
    }

    fn count_resets(&self, connections: usize) {
        self.counters
            .resets
            .fetch_add(connections as u64, Ordering::Relaxed);
        let _ = self.events.send(LinkEvent::Reset { connections });
        tracing::info!(link = %self.name, connections, "connections reset");
    }

    fn delay(&self, ms: u64, jitter_ms: u64) -> Duration {
        if jitter_ms == 0 {
            return Duration::from_millis(ms);
        }
        let (lo, hi) = (ms.saturating_sub(jitter_ms), ms.saturating_add(jitter_ms));
        Duration::from_millis(lock(&self.rng).random_range(lo..=hi))
    }

    /// Book `n` bytes on the throttled wire of `way`: when they will have
    /// been sent at `rate` bytes a second, after whatever was booked before.
    /// Idle time is not saved up, so a burst never exceeds the rate.
    fn reserve(&self, way: Way, n: usize, rate: u64) -> Instant {
        let mut free = lock(&self.wire_free[way.index()]);
        let start = (*free).max(Instant::now());
        let nanos = n as u128 * 1_000_000_000 / u128::from(rate);
        let done = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        *free = done;
        done
    }
}

pub struct LinkProxy {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl LinkProxy {
    /// Listen on `listen` (e.g. 127.0.0.1:0) and forward to `upstream`
    /// ("host:port"). `seed` seeds the jitter RNG (replayable).
    pub async fn start(
        name: &str,
        listen: SocketAddr,
        upstream: &str,
        seed: u64,
    ) -> Result<Arc<LinkProxy>> {
        Self::start_with(name, listen, upstream, seed, None).await
    }

    /// [`LinkProxy::start`] for a thin link, one that buffers about as
    /// little as a real one between distant hosts: the upstream socket's
    /// receive buffer is `window` bytes (on loopback the kernel would grow
    /// it to megabytes) and each direction queues four chunks, so a slow
    /// reader downstream pushes back on the upstream sender within tens
    /// of kilobytes. `upstream` must be an IP address and port.
    pub async fn start_thin(
        name: &str,
        listen: SocketAddr,
        upstream: &str,
        seed: u64,
        window: u32,
    ) -> Result<Arc<LinkProxy>> {
        upstream
            .parse::<SocketAddr>()
            .with_context(|| format!("link {name}: a thin link's upstream {upstream}"))?;
        Self::start_with(name, listen, upstream, seed, Some(window)).await
    }

    async fn start_with(
        name: &str,
        listen: SocketAddr,
        upstream: &str,
        seed: u64,
        window: Option<u32>,
    ) -> Result<Arc<LinkProxy>> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("link {name}: listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let (faults, _) = watch::channel(Arc::new(Faults::default()));
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            upstream: upstream.to_owned(),
            state: Mutex::new(State {
                set: Vec::new(),
                cut: None,
                conns: HashMap::new(),
                next_id: 0,
                shut: false,
            }),
            faults,
            counters: Counters::default(),
            events: broadcast::channel(1024).0,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            wire_free: [Mutex::new(Instant::now()), Mutex::new(Instant::now())],
            stop: CancellationToken::new(),
            window,
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        tracing::debug!(link = name, %addr, upstream, "link proxy listening");
        Ok(Arc::new(LinkProxy { inner, addr }))
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Add a fault (a second one of the same kind, whatever its direction,
    /// replaces the first). Applies to open connections too, at once.
    pub fn set(&self, fault: LinkFault) {
        let mut st = lock(&self.inner.state);
        if let LinkFault::CutAfterCommit {
            pattern,
            times,
            hang,
        } = &fault
        {
            st.cut = Some(Arc::new(Cut {
                pattern: pattern.to_lowercase(),
                remaining: AtomicU32::new(*times),
                hang: *hang,
            }));
        }
        let reset = fault == LinkFault::Reset;
        st.set.retain(|f| discriminant(f) != discriminant(&fault));
        st.set.push(fault);
        self.inner.publish(&st);
        if reset {
            let n = st
                .conns
                .values()
                .filter(|c| c.ctl.send(Ctl::Reset).is_ok())
                .count();
            drop(st);
            self.inner.count_resets(n);
        }
    }

    /// Remove every fault; connections a blackhole dropped bytes of are
    /// reset (their streams cannot resume).
    pub fn heal(&self) {
        let mut st = lock(&self.inner.state);
        st.set.clear();
        st.cut = None;
        self.inner.publish(&st);
        let n = st
            .conns
            .values()
            .filter(|c| c.dropped.load(Ordering::SeqCst) && c.ctl.send(Ctl::Reset).is_ok())
            .count();
        drop(st);
        if n > 0 {
            self.inner.count_resets(n);
        }
    }

    pub fn stats(&self) -> LinkStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            accepted: get(&c.accepted),
            open: get(&c.open),
            bytes_up: get(&c.bytes[Way::Up.index()]),
            bytes_down: get(&c.bytes[Way::Down.index()]),
            bytes_dropped: get(&c.bytes_dropped),
            resets: get(&c.resets),
            commits_cut: get(&c.commits_cut),
        }
    }

    /// Events for the chaos history: subscribe before setting a fault.
    pub fn events(&self) -> broadcast::Receiver<LinkEvent> {
        self.inner.events.subscribe()
    }

    /// Stop listening and close every connection.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        let mut st = lock(&self.inner.state);
        st.shut = true;
        for c in st.conns.values() {
            let _ = c.ctl.send(Ctl::Close);
        }
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Close a socket so its peer gets RST: nothing it sent is acknowledged
/// as read, no FIN. Takes effect when the last reference is dropped.
fn abort(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// What becomes of a connection just accepted.
enum Admit {
    /// The proxy is shutting down.
    Shut,
    /// A Reset fault is set.
    Reset,
    /// Registered: its id, its supervisor's commands, its blackhole flag.
    Serve(
        u64,
        mpsc::UnboundedSender<Ctl>,
        mpsc::UnboundedReceiver<Ctl>,
        Arc<AtomicBool>,
    ),
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = inner.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: let some close.
                tracing::warn!(link = %inner.name, "accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        // Registered under the same lock `set` resets under: a connection
        // is either reset here or registered before a Reset looks.
        let admit = {
            let mut st = lock(&inner.state);
            if st.shut {
                Admit::Shut
            } else if st.set.contains(&LinkFault::Reset) {
                Admit::Reset
            } else {
                let id = st.next_id;
                st.next_id += 1;
                let (ctl, rx) = mpsc::unbounded_channel();
                let dropped = Arc::new(AtomicBool::new(false));
                st.conns.insert(
                    id,
                    ConnEntry {
                        ctl: ctl.clone(),
                        dropped: dropped.clone(),
                    },
                );
                Admit::Serve(id, ctl, rx, dropped)
            }
        };
        match admit {
            Admit::Shut => return,
            Admit::Reset => {
                abort(&client);
                drop(client);
                inner.count_resets(1);
            }
            Admit::Serve(id, ctl, rx, dropped) => {
                inner.counters.open.fetch_add(1, Ordering::Relaxed);
                let conn = Arc::new(Conn {
                    inner: inner.clone(),
                    id,
                    ctl,
                    dropped,
                    hang: AtomicBool::new(false),
                    pg: Mutex::new(Session::default()),
                });
                tokio::spawn(conn.run(client, rx));
            }
        }
    }
}

/// A chunk read, with the time it was read (latency counts from there).
enum Item {
    Data(Vec<u8>, Instant),
    Eof(Instant),
}

struct Conn {
    inner: Arc<Inner>,
    id: u64,
    ctl: mpsc::UnboundedSender<Ctl>,
    dropped: Arc<AtomicBool>,
    /// The cut claimed on this connection leaves the client hanging.
    hang: AtomicBool,
    pg: Mutex<Session>,
}

/// How a connection ended.
enum End {
    /// Both directions closed in order.
    Finished,
    /// Shut down with the proxy.
    Close,
    /// A Reset fault, a blackhole's heal, or an I/O error on one side
    /// (mirrored: the other side is reset too).
    Reset,
    Cut(String),
}

/// Connect to `upstream`; with a window, through a socket whose receive
/// buffer is that size (set before connecting, so the window it offers
/// is small from the first byte).
async fn connect(upstream: &str, window: Option<u32>) -> io::Result<TcpStream> {
    let Some(window) = window else {
        return TcpStream::connect(upstream).await;
    };
    let addr: SocketAddr = upstream
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_recv_buffer_size(window)?;
    sock.connect(addr).await
}

impl Conn {
    async fn run(self: Arc<Self>, client: TcpStream, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
        let upstream = tokio::select! {
            r = connect(&self.inner.upstream, self.inner.window) => r,
            c = ctl.recv() => {
                if !matches!(c, Some(Ctl::Close) | None) {
                    abort(&client);
                }
                self.done();
                return;
            }
        };
        let upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                // What the client would have seen connecting directly is a
                // refusal; a reset is the closest the proxy can say.
                tracing::warn!(link = %self.inner.name, upstream = %self.inner.upstream,
                    "connecting upstream: {e}");
                abort(&client);
                self.done();
                return;
            }
        };
        // The proxy must not add Nagle's delay to what the faults add.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let client = Arc::new(client);
        let upstream = Arc::new(upstream);
        let mut stages = JoinSet::new();
        for (way, src, dst) in [
            (Way::Up, &client, &upstream),
            (Way::Down, &upstream, &client),
        ] {
            let (tx, rx) = mpsc::channel(if self.inner.window.is_some() {
                4
            } else {
                QUEUE
            });
            stages.spawn(self.clone().reader(way, src.clone(), tx));
            stages.spawn(self.clone().writer(way, dst.clone(), rx));
        }
        let end = loop {
            tokio::select! {
                c = ctl.recv() => break match c {
                    Some(Ctl::Reset) => End::Reset,
                    Some(Ctl::Cut(s)) => End::Cut(s),
                    Some(Ctl::Close) | None => End::Close,
                },
                j = stages.join_next() => match j {
                    None => break End::Finished,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => {
                        tracing::debug!(link = %self.inner.name, conn = self.id, "connection broke: {e}");
                        break End::Reset;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(link = %self.inner.name, conn = self.id, "a proxy stage failed: {e}");
                        break End::Reset;
                    }
                },
            }
        };
        match &end {
            End::Reset => {
                abort(&client);
                abort(&upstream);
            }
            // The upstream is closed plainly: the server ends the session
            // as for any client gone.
            End::Cut(_) if !self.hang.load(Ordering::SeqCst) => abort(&client),
            End::Cut(_) => {}
            End::Finished | End::Close => {}
        }
        // Every stage holds the sockets: only when all are gone and these
        // last references dropped do the sockets close.
        stages.shutdown().await;
        drop(upstream);
        if let End::Cut(statement) = end {
            self.inner
                .counters
                .commits_cut
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(link = %self.inner.name, statement, "commit cut");
            let hung = self.hang.load(Ordering::SeqCst);
            let _ = self
                .inner
                .events
                .send(LinkEvent::CommitCut { statement, hung });
            if hung {
                // Open and silent until the proxy shuts down: whatever the
                // client sends (its FIN included) sits unread.
                self.done();
                self.inner.stop.cancelled().await;
                drop(client);
                return;
            }
        }
        drop(client);
        self.done();
    }

    fn done(&self) {
        lock(&self.inner.state).conns.remove(&self.id);
        self.inner.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Read one direction's bytes and queue what may go on.
    async fn reader(
        self: Arc<Self>,
        way: Way,
        src: Arc<TcpStream>,
        tx: mpsc::Sender<Item>,
    ) -> io::Result<()> {
        let faults = self.inner.faults.subscribe();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_some(&src, &mut buf).await?;
            let at = Instant::now();
            let f = faults.borrow().clone();
            if f.blackhole[way.index()] {
                self.dropped.store(true, Ordering::SeqCst);
                self.inner
                    .counters
                    .bytes_dropped
                    .fetch_add(n as u64, Ordering::Relaxed);
                // What follows cannot be parsed without what was lost.
                lock(&self.pg).stop();
                if n == 0 {
                    // The end of the stream is swallowed too; the heal
                    // resets the connection.
                    std::future::pending::<()>().await;
                }
                continue;
            }
            if n == 0 {
                if way == Way::Down && lock(&self.pg).cutting() {
                    let _ = self.ctl.send(Ctl::Reset);
                    std::future::pending::<()>().await;
                }
                let _ = tx.send(Item::Eof(at)).await;
                return Ok(());
            }
            let data = &buf[..n];
            let pass = match way {
                Way::Up => lock(&self.pg).client_bytes(data, |statement| {
                    f.cut.as_ref().is_some_and(|c| {
                        let cut = c.matches(statement) && c.claim();
                        if cut {
                            self.hang.store(c.hang, Ordering::SeqCst);
                        }
                        cut
                    })
                }),
                Way::Down => lock(&self.pg).server_bytes(data),
            };
            let (forward, last) = match pass {
                Pass::All => (n, false),
                Pass::Prefix(k) => (k, true),
                Pass::Withhold => continue,
                Pass::Cut(statement) => {
                    let _ = self.ctl.send(Ctl::Cut(statement));
                    std::future::pending::<()>().await;
                    continue;
                }
                Pass::Reset => {
                    let _ = self.ctl.send(Ctl::Reset);
                    std::future::pending::<()>().await;
                    continue;
                }
            };
            if tx
                .send(Item::Data(data[..forward].to_vec(), at))
                .await
                .is_err()
            {
                // The writer is gone: the connection is ending.
                return Ok(());
            }
            if last {
                // A cut is under way: the client's bytes after the commit
                // go nowhere; the supervisor ends this task.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Write one direction's queued chunks when the faults let them go.
    async fn writer(
        self: Arc<Self>,
        way: Way,
        dst: Arc<TcpStream>,
        mut rx: mpsc::Receiver<Item>,
    ) -> io::Result<()> {
        let mut faults = self.inner.faults.subscribe();
        while let Some(item) = rx.recv().await {
            let at = match &item {
                Item::Data(_, at) | Item::Eof(at) => *at,
            };
            // Latency: due a delay after it was read. A change of faults
            // while waiting (a heal) decides again.
            loop {
                let latency = faults.borrow_and_update().latency[way.index()];
                let Some((ms, jitter_ms)) = latency else {
                    break;
                };
                let due = at + self.inner.delay(ms, jitter_ms);
                if due <= Instant::now() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    r = faults.changed() => if r.is_err() { break },
                }
            }
            match item {
                Item::Data(bytes, _) => self.paced_write(way, &dst, &bytes, &faults).await?,
                Item::Eof(_) => {
                    let slow = faults.borrow().slow_close;
                    if let Some(ms) = slow {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    return shutdown_write(&dst);
                }
            }
        }
        Ok(())
    }

    /// Write `bytes`, throttled while a bandwidth fault holds this
    /// direction: each piece is written once the wire would have carried
    /// it, so n bytes take at least n / rate.
    async fn paced_write(
        &self,
        way: Way,
        dst: &TcpStream,
        bytes: &[u8],
        faults: &watch::Receiver<Arc<Faults>>,
    ) -> io::Result<()> {
        let counter = &self.inner.counters.bytes[way.index()];
        let mut rest = bytes;
        while !rest.is_empty() {
            let rate = faults.borrow().bandwidth[way.index()];
            let piece = match rate {
                None => rest.len(),
                Some(rate) => {
                    let piece = usize::try_from(rate / 50)
                        .unwrap_or(CHUNK)
                        .clamp(1, CHUNK)
                        .min(rest.len());
                    tokio::time::sleep_until(self.inner.reserve(way, piece, rate)).await;
                    piece
                }
            };
            write_all(dst, &rest[..piece]).await?;
            counter.fetch_add(piece as u64, Ordering::Relaxed);
            rest = &rest[piece..];
        }
        Ok(())
    }
}

/// Read what is there (0 at the end of the stream), through readiness:
/// the socket is shared with the writer of the other direction and the
/// supervisor.
async fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(s: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Send FIN on a shared socket. Tokio shuts a stream down only through an
/// owned or `&mut` handle; shutdown(2) acts on the socket, not on the
/// descriptor, so a duplicate descriptor reaches it, and closing the
/// duplicate right after leaves the socket open.
fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    let dup = std::net::TcpStream::from(s.as_fd().try_clone_to_owned()?);
    match dup.shutdown(std::net::Shutdown::Write) {
        // The peer already went away: nothing left to tell it.
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
