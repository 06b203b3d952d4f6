//! After the answer: the answer goes to the result cache and its items are recorded as impressions (frequency
//! control), off the response path. Requests queue their writes for one writer task that sends them in batches
//! (one cache call for many answers); a shutdown waits for what is queued.

use std::{sync::Arc, time::Duration};

use reco_client::{Cache, ImpressionWrite, ResultWrite, Writes};
use reco_types::Candidate;
use tokio::sync::{Notify, mpsc};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, warn};

use super::request::{Answer, Query};
use crate::{
    plan::Plan,
    resilience::{Breaker, BreakerState},
};

/// Most writes waiting for the writer; past it an answer is neither cached nor its impressions recorded (and a
/// warning says so).
const QUEUE: usize = 4_096;
/// Most writes in one call.
const BATCH: usize = 256;
/// How long the writer waits for more writes to send with the first one. The result cache and the impressions
/// are read by later requests, seconds to minutes apart, so a few ms of delay cost nothing.
const LINGER: Duration = Duration::from_millis(5);
/// How long a batch of writes may take: up to [`BATCH`] writes, each a result and its impressions. Only the
/// writer waits for it (the queue holds what arrives meanwhile), never a request.
const BATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// One write after an answer.
#[derive(Debug)]
enum Write {
    /// The answer, to cache; its impressions are recorded with it.
    Result(ResultWrite),
    /// The impressions of an answer that is not cached (a degraded one).
    Impressions(ImpressionWrite),
}

pub struct AfterAnswer {
    cache: Arc<dyn Cache>,
    breaker: Arc<Breaker>,
    result_ttl: Duration,
    /// The writer, started on the first answer, and the queue to it.
    queue: std::sync::OnceLock<mpsc::Sender<Write>>,
    /// The writer task, so a shutdown can wait for it instead of losing impressions.
    tasks: TaskTracker,
    /// Tells the writer to send what is queued and stop.
    closing: Arc<Notify>,
}

impl AfterAnswer {
    pub fn new(plan: &Plan, cache: Arc<dyn Cache>, breaker: Arc<Breaker>) -> Self {
        Self {
            cache,
            breaker,
            result_ttl: plan.result_ttl,
            queue: Default::default(),
            tasks: TaskTracker::new(),
            closing: Default::default(),
        }
    }

    /// Queues the answer's writes.
    pub fn queue(&self, q: &Query, answer: &Answer) {
        if answer.items.is_empty() {
            return;
        }
        if self.breaker.state() == BreakerState::Open {
            // The cache is known to be down: do not queue writes that would only time out.
            return;
        }
        let write = if answer.degraded || answer.from_cache {
            // A degraded answer is not cached, so the next call gets a chance at a full one, and a cached one is
            // cached already; either way its items were shown. Queued with the results, not a call of its own: under overload most answers are
            // degraded, and a call each would add to the load that degraded them.
            Write::Impressions(ImpressionWrite {
                user_id: q.user_id.clone(),
                item_ids: answer.items.iter().map(|i| i.item_id.clone()).collect(),
                at_ms: 0,
            })
        } else {
            // The cache service records the impressions with the result.
            Write::Result(ResultWrite {
                user_id: q.user_id.clone(),
                scene: q.scene.clone(),
                items: answer
                    .items
                    .iter()
                    .map(|i| Candidate {
                        item_id: i.item_id.clone(),
                        score: i.score,
                        sources: i.sources.clone(),
                    })
                    .collect(),
                ttl: self.result_ttl,
                record_impressions: true,
            })
        };
        match self.writer().try_send(write) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => warn!(
                "{QUEUE} after-answer writes are queued: this answer is neither cached nor its impressions recorded"
            ),
        }
    }

    /// Completes when every write queued so far has been sent; none are taken after.
    pub fn finish(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.tasks.close();
        // A permit is stored if the writer is busy sending: it closes its queue as soon as it looks.
        self.closing.notify_one();
        let tasks = self.tasks.clone();
        async move { tasks.wait().await }
    }

    fn writer(&self) -> &mpsc::Sender<Write> {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let cache = self.cache.clone();
            self.tasks
                .spawn(write_batches(rx, self.closing.clone(), move |batch| {
                    let cache = cache.clone();
                    async move { send(&*cache, batch).await }
                }));
            tx
        })
    }
}

async fn send(cache: &dyn Cache, batch: Vec<Write>) {
    let n = batch.len();
    let mut writes = Writes::default();
    for w in batch {
        match w {
            Write::Result(r) => writes.results.push(r),
            Write::Impressions(i) => writes.impressions.push(i),
        }
    }
    // A batch serves many requests: its span stands alone, not under any one request's.
    let span = tracing::info_span!("after_answer", writes = n);
    if let Err(error) = cache.write(writes, BATCH_TIMEOUT).instrument(span).await {
        warn!(%error, writes = n, "result cache and impression writes failed");
    }
}

/// Sends the queued writes one call at a time. A call takes every write queued so far and those that arrive
/// within [`LINGER`] of the first (up to [`BATCH`]): at 1,000 answers a second that is ~5 writes a call instead of
/// one each, and under heavier load the queue also fills while a call is in flight. When `closing` is notified it
/// sends what is queued and returns.
async fn write_batches<T, F>(
    mut queue: mpsc::Receiver<T>,
    closing: Arc<Notify>,
    mut send: impl FnMut(Vec<T>) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                let until = tokio::time::Instant::now() + LINGER;
                while batch.len() < BATCH {
                    let room = BATCH - batch.len();
                    match tokio::time::timeout_at(until, queue.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                send(std::mem::take(&mut batch)).await;
            }
            () = closing.notified() => queue.close(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test]
    async fn the_writer_batches_what_queued_during_a_call_and_sends_it_all_before_stopping() {
        let (tx, rx) = mpsc::channel(16);
        let closing = Arc::new(Notify::new());
        let sent: Arc<Mutex<Vec<Vec<&str>>>> = Arc::default();
        // The first call blocks until released, so the writes queued meanwhile wait for the next.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let writer = tokio::spawn(write_batches(rx, closing.clone(), {
            let sent = sent.clone();
            move |writes: Vec<&'static str>| {
                let (sent, released) = (sent.clone(), released.clone());
                async move {
                    sent.lock().unwrap().push(writes);
                    if let Some(r) = released.lock().await.take() {
                        let _ = r.await;
                    }
                }
            }
        }));
        tx.send("a").await.unwrap();
        while sent.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for u in ["b", "c", "d"] {
            tx.send(u).await.unwrap();
        }
        // Asked to stop while the first call is in flight and three writes wait: they are still sent, in one call.
        closing.notify_one();
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer stops once the queue is sent")
            .unwrap();
        assert_eq!(*sent.lock().unwrap(), [vec!["a"], vec!["b", "c", "d"]]);
        assert!(tx.send("late").await.is_err(), "the queue is closed");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_within_the_linger_of_the_first_share_its_call() {
        let (tx, rx) = mpsc::channel(16);
        let closing = Arc::new(Notify::new());
        let sent: Arc<Mutex<Vec<Vec<&str>>>> = Arc::default();
        let writer = tokio::spawn(write_batches(rx, closing.clone(), {
            let sent = sent.clone();
            move |writes: Vec<&'static str>| {
                sent.lock().unwrap().push(writes);
                std::future::ready(())
            }
        }));
        tx.send("a").await.unwrap();
        tokio::time::sleep(LINGER / 2).await;
        tx.send("b").await.unwrap();
        tokio::time::sleep(LINGER * 2).await;
        tx.send("c").await.unwrap();
        closing.notify_one();
        writer.await.unwrap();
        assert_eq!(*sent.lock().unwrap(), [vec!["a", "b"], vec!["c"]]);
    }
}
