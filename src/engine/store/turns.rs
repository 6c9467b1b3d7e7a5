//! Turns at SQLite's one write lock for the writers of one process.
//!
//! SQLite grants its write lock to whichever waiter's busy handler happens
//! to try first once it is free. A waiter sleeps between tries (up to
//! 100 ms), while a writer that has just committed asks again at once. So
//! the writers of one pod queue here first, first come first served
//! (tokio's mutex is fair), before asking SQLite; a lease renewal
//! ([`Turns::urgent`]) skips that queue and waits only for the writer at
//! its front.
//!
//! Across pods there are no turns (docs/chaos.md, "Storage faults: a slow
//! disk"): turns through OS locks beside the database made pods alternate
//! under a slow disk, but a pod stopped while it held one (SIGSTOP) froze
//! every other pod's writes with it, and ordering every pod's writes
//! changed which of them a frozen store lets through first.

use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The turns of the writers of one process to one SQLite file.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    /// Writers of this process, first come first served.
    queue: Arc<Mutex<()>>,
    /// The one writer of this process that may ask SQLite for its lock:
    /// the head of `queue`, or a renewal that went ahead of it.
    front: Arc<Mutex<()>>,
}

/// A writer's turn: held until its transaction has ended.
#[derive(Debug)]
pub(crate) struct Turn {
    // Fields drop in order: the front first, then the queue's place.
    _front: OwnedMutexGuard<()>,
    _queue: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// A writer's turn: after every writer of this process that asked
    /// before it.
    pub(crate) async fn normal(&self) -> Turn {
        let queue = self.queue.clone().lock_owned().await;
        Turn {
            _front: self.front.clone().lock_owned().await,
            _queue: Some(queue),
        }
    }

    /// A lease renewal's turn: ahead of this process's queue, behind the
    /// one writer at its front.
    pub(crate) async fn urgent(&self) -> Turn {
        Turn {
            _front: self.front.clone().lock_owned().await,
            _queue: None,
        }
    }
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

    /// In one process a renewal waits only for the writer at the front,
    /// not for the writers queued behind it. (A current-thread runtime:
    /// each yield lets every spawned task run until it waits.)
    #[tokio::test]
    async fn a_renewal_goes_ahead_of_the_queue() {
        let t = Arc::new(Turns::default());
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
