//! Group commit: concurrent writers' jobs share one transaction, so many
//! runs' checkpoints cost one commit (one fsync) instead of one each.
//!
//! Writers hand a job to the [`Batcher`] and wait for its result. A worker
//! takes every job queued at that moment (up to a cap), runs them in one
//! transaction and, once the commit is durable, releases each waiter with
//! its own job's result. A job waits for no timer: with one writer a batch
//! is that writer's job alone, so nothing is added to its latency; while a
//! batch commits, the next one fills.
//!
//! What a batch must guarantee is the backend's business (see
//! `sql::impl_store!`): a job that is refused (fenced, say) wrote nothing and
//! the others go on; any other failure rolls the whole batch back and every
//! job runs again alone, so one bad job cannot fail its neighbours.

use super::{StoreError, StoreResult};
use std::future::Future;
use std::sync::{Arc, OnceLock};
use tokio::sync::{Mutex, mpsc, oneshot};

type Waiter<R> = oneshot::Sender<StoreResult<R>>;

/// The turn of the writers to one SQLite file (see `store::turns`): its
/// hot writers (claimed creations, checkpoint groups) take it, in order,
/// before asking SQLite for the write lock, instead of colliding on it and
/// sleeping in SQLite's busy handler (which backs off up to 100 ms a try:
/// the p99 of 16 concurrent clients was 450 ms). None on PostgreSQL, where
/// writers of different runs do not exclude each other.
pub(crate) type WriteGate = Option<Arc<super::turns::Turns>>;

/// Wait for the turn `gate` gives (at once without one).
pub(crate) async fn turn(gate: &WriteGate) -> Option<super::turns::Turn> {
    match gate {
        Some(g) => Some(g.normal().await),
        None => None,
    }
}

/// Jobs of type `J` committed in groups, each answered with an `R`.
pub(crate) struct Batcher<J, R> {
    queue: OnceLock<mpsc::UnboundedSender<(J, Waiter<R>)>>,
    /// Most jobs in one transaction.
    max_batch: usize,
    /// Batches in flight at once (their transactions run side by side).
    workers: usize,
}

impl<J, R> std::fmt::Debug for Batcher<J, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_batch", &self.max_batch)
            .field("workers", &self.workers)
            .field("started", &self.queue.get().is_some())
            .finish()
    }
}

impl<J: Send + 'static, R: Send + 'static> Batcher<J, R> {
    pub(crate) fn new(max_batch: usize, workers: usize) -> Self {
        Batcher {
            queue: OnceLock::new(),
            max_batch: max_batch.max(1),
            workers: workers.max(1),
        }
    }

    /// Commit `job` in the next batch and return its own result. `run`
    /// commits a batch (called by the workers, which start on the first
    /// job, on the caller's runtime); it returns one result per job, in
    /// order.
    pub(crate) async fn submit<F, Fut>(&self, job: J, run: F) -> StoreResult<R>
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<StoreResult<R>>> + Send + 'static,
    {
        let queue = self.queue.get_or_init(|| self.start(run));
        let (tx, rx) = oneshot::channel();
        queue.send((job, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    fn start<F, Fut>(&self, run: F) -> mpsc::UnboundedSender<(J, Waiter<R>)>
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<StoreResult<R>>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<(J, Waiter<R>)>();
        let rx = Arc::new(Mutex::new(rx));
        let run = Arc::new(run);
        for _ in 0..self.workers {
            let (rx, run, max) = (rx.clone(), run.clone(), self.max_batch);
            tokio::spawn(async move {
                loop {
                    // One worker gathers at a time; the others are committing.
                    let batch = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else {
                            return;
                        };
                        let mut batch = vec![first];
                        while batch.len() < max {
                            match rx.try_recv() {
                                Ok(j) => batch.push(j),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    let (jobs, waiters): (Vec<J>, Vec<Waiter<R>>) = batch.into_iter().unzip();
                    let n = jobs.len();
                    let mut results = run(jobs).await.into_iter();
                    for w in waiters {
                        // A waiter that went away loses only its answer.
                        let _ = w.send(results.next().unwrap_or_else(|| Err(short(n))));
                    }
                }
            });
        }
        tx
    }
}

fn gone() -> StoreError {
    StoreError::Db(sqlx::Error::WorkerCrashed)
}

fn short(n: usize) -> StoreError {
    StoreError::Db(sqlx::Error::Protocol(format!(
        "group commit: a batch of {n} jobs returned fewer results"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn jobs_waiting_together_share_a_batch_and_each_gets_its_own_result() {
        let batches = Arc::new(std::sync::Mutex::new(Vec::<Vec<u32>>::new()));
        let b: Arc<Batcher<u32, u32>> = Arc::new(Batcher::new(64, 1));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let run = {
            let (batches, gate, calls) = (batches.clone(), gate.clone(), calls.clone());
            move |jobs: Vec<u32>| {
                let (batches, gate, calls) = (batches.clone(), gate.clone(), calls.clone());
                async move {
                    // The first batch holds until every other job is queued.
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        gate.acquire().await.unwrap().forget();
                    }
                    batches.lock().unwrap().push(jobs.clone());
                    jobs.into_iter()
                        .map(|j| {
                            if j == 3 {
                                Err(StoreError::RunNotFound { run_id: "3".into() })
                            } else {
                                Ok(j * 10)
                            }
                        })
                        .collect()
                }
            }
        };
        let mut tasks = Vec::new();
        for j in 0..6u32 {
            let (b, run) = (b.clone(), run.clone());
            tasks.push(tokio::spawn(async move { b.submit(j, run).await }));
            if j == 0 {
                // Let job 0 start its batch alone.
                while calls.load(Ordering::SeqCst) == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        gate.add_permits(1);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        assert_eq!(out[0].as_ref().unwrap(), &0);
        assert_eq!(out[5].as_ref().unwrap(), &50);
        assert!(matches!(out[3], Err(StoreError::RunNotFound { .. })));
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches, vec![vec![0], vec![1, 2, 3, 4, 5]]);
    }
}
