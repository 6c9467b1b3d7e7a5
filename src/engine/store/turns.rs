//! Turns at SQLite's one write lock, in order, for the writers of one
//! process and for the pods that share the file.
//!
//! SQLite grants its write lock to whichever waiter's busy handler happens
//! to try first once it is free. A waiter sleeps between tries (up to
//! 100 ms), while a writer that has just committed asks again at once. Under
//! a slow disk, where each commit takes hundreds of milliseconds, one pod's
//! writes queued for seconds while another's got through, and the starved
//! pod's lease and its runs' heartbeats lapsed (`slow-fsync` on SQLite:
//! its runs reaped, or the pod declared dead). So every write transaction
//! takes a turn first:
//!
//! - **In this process**, writers queue on a first-come, first-served mutex
//!   (tokio's is fair). A lease renewal ([`Turns::urgent`]) skips that queue
//!   and waits only for the writer at its front.
//! - **Across processes**, that one writer per process takes two OS locks
//!   beside the database: the waiting room (`turn.next`), then the turn
//!   itself (`turn`), and leaves the waiting room once it holds the turn.
//!   Only one process waits for the turn at a time, and a writer that has
//!   just given the turn back must wait in the room behind it: pods take
//!   turns instead of the last writer winning again.
//!
//! A writer that finds both locks free takes them without leaving its
//! thread. When the lock files cannot be made (a read-only directory), the
//! turn is this process's alone, as before.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The turns of the writers of one process to one SQLite file.
#[derive(Debug)]
pub(crate) struct Turns {
    /// Writers of this process, first come first served.
    queue: Arc<Mutex<()>>,
    /// The one writer of this process that may ask the other processes for
    /// the turn: the head of `queue`, or a renewal that went ahead of it.
    front: Arc<Mutex<()>>,
    /// The waiting room and the turn, as files beside the database (`None`:
    /// this process's turns only).
    host: Option<(PathBuf, PathBuf)>,
    /// Set once a lock file could not be opened (warned once).
    host_failed: AtomicBool,
}

/// A writer's turn: held until its transaction has ended.
#[derive(Debug)]
pub(crate) struct Turn {
    // Fields drop in order: the host's turn first, then this process's.
    _host: Option<File>,
    _front: OwnedMutexGuard<()>,
    _queue: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Turns for the writers to the database at `db`, with their lock files
    /// in `dir` (made on first use); `None` for this process's turns only.
    pub(crate) fn new(dir: Option<&Path>) -> Turns {
        Turns {
            queue: Arc::default(),
            front: Arc::default(),
            host: dir.map(|d| (d.join("turn.next"), d.join("turn"))),
            host_failed: AtomicBool::new(false),
        }
    }

    /// A writer's turn: after every writer of this process that asked
    /// before it, and after the other pods' writers waiting ahead of it.
    pub(crate) async fn normal(&self) -> Turn {
        let queue = self.queue.clone().lock_owned().await;
        self.take(Some(queue)).await
    }

    /// A lease renewal's turn: ahead of this process's queue (behind the
    /// one writer at its front), then as any writer across processes.
    pub(crate) async fn urgent(&self) -> Turn {
        self.take(None).await
    }

    async fn take(&self, queue: Option<OwnedMutexGuard<()>>) -> Turn {
        let front = self.front.clone().lock_owned().await;
        let host = match &self.host {
            Some((next, turn)) if !self.host_failed.load(Ordering::Relaxed) => {
                match host_turn(next.clone(), turn.clone()).await {
                    Ok(f) => Some(f),
                    Err(e) => {
                        if !self.host_failed.swap(true, Ordering::Relaxed) {
                            tracing::warn!(path = %turn.display(), error = %e, "no turns at SQLite's write lock across pods: writers of other pods may starve this one's under a slow disk");
                        }
                        None
                    }
                }
            }
            _ => None,
        };
        Turn {
            _host: host,
            _front: front,
            _queue: queue,
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// The turn across processes: the waiting room `next`, then `turn`; the
/// room is left once the turn is held. Waits on a blocking thread when
/// either is taken. A wait given up (its future dropped) lets the thread
/// finish and drop what it took, which gives both back.
async fn host_turn(next: PathBuf, turn: PathBuf) -> std::io::Result<File> {
    let room = open(&next)?;
    if room.try_lock().is_ok() {
        let held = open(&turn)?;
        if held.try_lock().is_ok() {
            return Ok(held);
        }
        return wait_blocking(move || {
            held.lock()?;
            drop(room);
            Ok(held)
        })
        .await;
    }
    wait_blocking(move || {
        room.lock()?;
        let held = open(&turn)?;
        held.lock()?;
        drop(room);
        Ok(held)
    })
    .await
}

async fn wait_blocking(
    f: impl FnOnce() -> std::io::Result<File> + Send + 'static,
) -> std::io::Result<File> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// A write transaction and the turn it was begun in: the turn is given
/// back once the transaction has ended (committed, rolled back, dropped).
pub(crate) struct WriteTx<DB: sqlx::Database> {
    tx: sqlx::Transaction<'static, DB>,
    _turn: Option<Turn>,
}

impl<DB: sqlx::Database> WriteTx<DB> {
    /// `tx`, begun in `turn` (`None` where writers take no turns).
    pub(crate) fn new(tx: sqlx::Transaction<'static, DB>, turn: Option<Turn>) -> Self {
        WriteTx { tx, _turn: turn }
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl<DB: sqlx::Database> std::ops::Deref for WriteTx<DB> {
    type Target = sqlx::Transaction<'static, DB>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two processes' writers (two `Turns` over the same files, as two pods
    /// would hold them): while one holds the turn, the other waits; the
    /// writer that gave it back asks again at once, and still comes second.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pods_alternate_at_the_turn() {
        let dir = tempfile::tempdir().unwrap();
        let a = Arc::new(Turns::new(Some(dir.path())));
        let b = Arc::new(Turns::new(Some(dir.path())));
        let first = a.normal().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = {
            let (b, tx) = (b.clone(), tx.clone());
            tokio::spawn(async move {
                let t = b.normal().await;
                tx.send("b").unwrap();
                t
            })
        };
        // b is in the waiting room once its try of the room fails and its
        // thread holds the room: a's next writer, asking now, finds the
        // room taken and the turn with b.
        let room = dir.path().join("turn.next");
        loop {
            let f = File::open(&room).unwrap();
            if f.try_lock().is_err() {
                break;
            }
            drop(f);
            tokio::task::yield_now().await;
        }
        let again = {
            let (a, tx) = (a.clone(), tx.clone());
            tokio::spawn(async move {
                let t = a.normal().await;
                tx.send("a").unwrap();
                drop(t);
            })
        };
        drop(first);
        assert_eq!(rx.recv().await, Some("b"));
        drop(waiter.await.unwrap());
        assert_eq!(rx.recv().await, Some("a"));
        again.await.unwrap();
    }

    /// In one process a renewal waits only for the writer at the front,
    /// not for the writers queued behind it. (A current-thread runtime:
    /// each yield lets every spawned task run until it waits.)
    #[tokio::test]
    async fn a_renewal_goes_ahead_of_the_queue() {
        let t = Arc::new(Turns::new(None));
        let holder = t.normal().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (t, tx) = (t.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = t.normal().await;
                tx.send(format!("writer {i}")).unwrap();
            }));
            tokio::task::yield_now().await;
        }
        let (t2, tx2) = (t.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = t2.urgent().await;
            tx2.send("renew".to_owned()).unwrap();
        }));
        tokio::task::yield_now().await;
        drop(holder);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["renew", "writer 0", "writer 1", "writer 2"]);
        for task in tasks {
            task.await.unwrap();
        }
    }
}
