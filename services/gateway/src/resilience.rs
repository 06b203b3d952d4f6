//! Every downstream call of a stage goes through a small tower stack over a typed call (the message and the
//! stage's budget):
//!
//! ```text
//!   stage::run ──▶ BreakerLayer (one breaker per downstream service) ──▶ HedgeLayer (per stage, off by default)
//!              ──▶ the tonic client call
//! ```
//!
//! Both layers are written here rather than taken from a crate. tower's `hedge` is not `Clone` (sharing it between
//! concurrent requests needs a `Buffer` task in the way) and records latency in whole milliseconds rounded up,
//! while most of our stages answer in well under one; `failsafe`'s breaker lets every call through while
//! half-open, where we want one probe at a time, and sees nothing of a call that is cancelled, where we need to
//! tell a stage cut off by its budget (a timeout: counted only when configured, and always for a probe) from a
//! downstream that refused.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceExt, util::BoxCloneSyncService};

/// One call of a stage: the message and the budget the stage was given (sent as `grpc-timeout`).
#[derive(Clone, Debug)]
pub struct Call<M> {
    pub message: M,
    pub budget: Duration,
}

/// A stage's downstream call with its layers, cheap to clone per request.
pub type StageService<M, R> = BoxCloneSyncService<Call<M>, R, Status>;

/// Builds a stage's service: `rpc` under the downstream's breaker, hedged when `hedge` is set.
pub fn stage_service<M, R, F, Fut>(
    breaker: &Arc<Breaker>,
    hedge: Option<HedgePolicy>,
    rpc: F,
) -> StageService<M, R>
where
    M: Clone + Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(Call<M>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
{
    let base = tower::service_fn(rpc);
    let breaker = BreakerLayer::new(breaker.clone());
    match hedge {
        Some(cfg) => BoxCloneSyncService::new(breaker.layer(HedgeLayer::new(cfg).layer(base))),
        None => BoxCloneSyncService::new(breaker.layer(base)),
    }
}

/// Circuit-breaker settings, shared by every downstream.
#[derive(Clone, Copy, Debug)]
pub struct BreakerPolicy {
    /// Consecutive failed calls that open the breaker; 0 turns breakers off.
    pub failures: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub open_for: Duration,
    /// Count calls cut off by their stage's budget as failures. Off by default: under load a healthy
    /// downstream misses a tight budget now and then, and a breaker that opens on that turns a few slow calls
    /// into every call failing. A probe that times out always counts.
    pub count_timeouts: bool,
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls are refused at once (UNAVAILABLE) until the open period ends.
    Open,
    /// One probe is allowed through; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    failures: u32,
    opened_at: Instant,
    probing: bool,
}

/// The circuit breaker of one downstream service, shared by every stage that calls it.
#[derive(Debug)]
pub struct Breaker {
    downstream: &'static str,
    cfg: BreakerPolicy,
    inner: Mutex<BreakerInner>,
}

/// What a call's outcome says about the downstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Healthy,
    /// It failed in a way that says the downstream is broken (refused, unavailable, internal error).
    Failed,
    /// It ran out of time: the client's deadline, or the stage's budget cutting it off.
    TimedOut,
}

fn outcome(status: &Status) -> Outcome {
    match status.code() {
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::DataLoss => Outcome::Failed,
        Code::DeadlineExceeded | Code::Cancelled => Outcome::TimedOut,
        // The request's own fault (invalid, not found, unauthenticated, ...): the downstream answered.
        _ => Outcome::Healthy,
    }
}

impl Breaker {
    pub fn new(downstream: &'static str, cfg: BreakerPolicy) -> Arc<Self> {
        Arc::new(Self {
            downstream,
            cfg,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: Instant::now(),
                probing: false,
            }),
        })
    }

    /// The state now; an open breaker whose period has ended reads as half-open.
    pub fn state(&self) -> BreakerState {
        let inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Open if inner.opened_at.elapsed() >= self.cfg.open_for => {
                BreakerState::HalfOpen
            }
            s => s,
        }
    }

    /// Asks to make a call: a permit to report its outcome with, or UNAVAILABLE saying why not.
    fn admit(self: &Arc<Self>) -> Result<Permit, Status> {
        if self.cfg.failures == 0 {
            return Ok(Permit::new(self, false));
        }
        let mut inner = self.inner.lock().expect("breaker lock");
        match inner.state {
            BreakerState::Closed => Ok(Permit::new(self, false)),
            BreakerState::Open => {
                let open = inner.opened_at.elapsed();
                if open >= self.cfg.open_for {
                    inner.state = BreakerState::HalfOpen;
                    inner.probing = true;
                    Ok(Permit::new(self, true))
                } else {
                    Err(Status::unavailable(format!(
                        "circuit open for {}: {} failed calls in a row; next probe in {} ms",
                        self.downstream,
                        inner.failures,
                        (self.cfg.open_for - open).as_millis()
                    )))
                }
            }
            BreakerState::HalfOpen if inner.probing => Err(Status::unavailable(format!(
                "circuit half-open for {}: waiting on the probe",
                self.downstream
            ))),
            BreakerState::HalfOpen => {
                inner.probing = true;
                Ok(Permit::new(self, true))
            }
        }
    }

    fn record(&self, outcome: Outcome, probe: bool) {
        if self.cfg.failures == 0 {
            return;
        }
        let ok = match outcome {
            Outcome::Healthy => true,
            Outcome::Failed => false,
            Outcome::TimedOut if probe || self.cfg.count_timeouts => false,
            // A timeout that does not count changes nothing (it neither resets nor adds to the count).
            Outcome::TimedOut => return,
        };
        let mut inner = self.inner.lock().expect("breaker lock");
        let before = inner.state;
        if ok {
            // A late success from before the breaker opened says little; only the probe closes it.
            if before == BreakerState::Closed || probe {
                inner.state = BreakerState::Closed;
                inner.failures = 0;
                inner.probing = false;
            }
        } else {
            inner.failures = inner.failures.saturating_add(1);
            let open = if probe {
                inner.probing = false;
                true
            } else {
                before == BreakerState::Closed && inner.failures >= self.cfg.failures
            };
            if open {
                inner.state = BreakerState::Open;
                inner.opened_at = Instant::now();
            }
        }
        let after = inner.state;
        let failures = inner.failures;
        drop(inner);
        if after != before {
            match after {
                BreakerState::Open => tracing::warn!(
                    downstream = self.downstream,
                    failures,
                    open_ms = self.cfg.open_for.as_millis() as u64,
                    "circuit breaker opened"
                ),
                _ => tracing::info!(downstream = self.downstream, "circuit breaker closed"),
            }
            crate::metrics::breaker_transition(self.downstream, after.as_str());
        }
    }
}

/// Permission for one call. Dropped without an outcome, the stage was cut off by its budget and the call
/// cancelled: a timeout.
struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl Permit {
    fn new(breaker: &Arc<Breaker>, probe: bool) -> Self {
        Self {
            breaker: breaker.clone(),
            probe,
            done: false,
        }
    }

    fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.breaker.record(outcome, self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.record(Outcome::TimedOut, self.probe);
        }
    }
}

/// Puts a service behind a downstream's breaker.
#[derive(Clone)]
pub struct BreakerLayer {
    breaker: Arc<Breaker>,
}

impl BreakerLayer {
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

#[derive(Clone)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S, M, R> Service<Call<M>> for BreakerService<S>
where
    S: Service<Call<M>, Response = R, Error = Status>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = Status;
    type Future = BoxFuture<'static, Result<R, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<M>) -> Self::Future {
        match self.breaker.admit() {
            Err(refused) => Box::pin(futures::future::ready(Err(refused))),
            Ok(permit) => {
                let fut = self.inner.call(call);
                Box::pin(async move {
                    let result = fut.await;
                    permit.finish(match &result {
                        Ok(_) => Outcome::Healthy,
                        Err(status) => outcome(status),
                    });
                    result
                })
            }
        }
    }
}

/// Hedging settings of a stage.
#[derive(Clone, Copy, Debug)]
pub struct HedgePolicy {
    /// The observed latency quantile after which the second request goes (0.95: the p95).
    pub quantile: f64,
    /// Calls observed before hedging starts (no hedge on a guess).
    pub min_samples: u64,
    /// Latencies are kept for this long (two windows: the current and the one before).
    pub window: Duration,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            quantile: 0.95,
            min_samples: 100,
            window: Duration::from_secs(10),
        }
    }
}

/// Latencies of one stage's calls, in microseconds, over a rotating window.
#[derive(Debug)]
struct Latencies {
    current: Histogram<u64>,
    previous: Histogram<u64>,
    rotated: tokio::time::Instant,
}

impl Latencies {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds");
        Self {
            current: h(),
            previous: h(),
            rotated: tokio::time::Instant::now(),
        }
    }

    fn rotate(&mut self, window: Duration) {
        if self.rotated.elapsed() >= window {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
            self.rotated = tokio::time::Instant::now();
        }
    }

    fn record(&mut self, latency: Duration, window: Duration) {
        self.rotate(window);
        let _ = self
            .current
            .record((latency.as_micros() as u64).clamp(1, 60_000_000));
    }

    /// The delay before hedging: the quantile over both windows, once there are enough samples.
    fn delay(&mut self, cfg: &HedgePolicy) -> Option<Duration> {
        self.rotate(cfg.window);
        let n = self.current.len() + self.previous.len();
        if n < cfg.min_samples.max(1) {
            return None;
        }
        let mut both = self.previous.clone();
        both.add(&self.current).ok()?;
        Some(Duration::from_micros(both.value_at_quantile(cfg.quantile)))
    }
}

/// Sends a second copy of a call when the first has not answered by the stage's observed quantile; the first
/// answer wins and the other call is dropped.
#[derive(Clone)]
pub struct HedgeLayer {
    cfg: HedgePolicy,
    latencies: Arc<Mutex<Latencies>>,
}

impl HedgeLayer {
    pub fn new(cfg: HedgePolicy) -> Self {
        Self {
            cfg,
            latencies: Arc::new(Mutex::new(Latencies::new())),
        }
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = HedgeService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        HedgeService {
            inner,
            cfg: self.cfg,
            latencies: self.latencies.clone(),
        }
    }
}

#[derive(Clone)]
pub struct HedgeService<S> {
    inner: S,
    cfg: HedgePolicy,
    latencies: Arc<Mutex<Latencies>>,
}

/// Outcome of a hedged call, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hedged {
    /// The first call answered before the hedge delay.
    NotNeeded,
    /// A second call went; the first still answered first.
    FirstWon,
    /// A second call went and answered first.
    SecondWon,
}

impl Hedged {
    pub fn as_str(self) -> &'static str {
        match self {
            Hedged::NotNeeded => "not_needed",
            Hedged::FirstWon => "first_won",
            Hedged::SecondWon => "second_won",
        }
    }
}

impl<S, M, R> Service<Call<M>> for HedgeService<S>
where
    S: Service<Call<M>, Response = R, Error = Status> + Clone + Send + 'static,
    S::Future: Send + 'static,
    M: Clone + Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = Status;
    type Future = BoxFuture<'static, Result<R, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<M>) -> Self::Future {
        let delay = self
            .latencies
            .lock()
            .expect("latency lock")
            .delay(&self.cfg);
        let spare = delay.map(|_| (self.inner.clone(), call.clone()));
        let first = self.inner.call(call);
        let latencies = self.latencies.clone();
        let window = self.cfg.window;
        // tokio's clock, so tests with paused time see exact latencies.
        use tokio::time::Instant;
        Box::pin(async move {
            let started = Instant::now();
            let record = |result: &Result<R, Status>, from: Instant| {
                if result.is_ok() {
                    latencies
                        .lock()
                        .expect("latency lock")
                        .record(from.elapsed(), window);
                }
            };
            let (Some(delay), Some((spare, copy))) = (delay, spare) else {
                let result = first.await;
                record(&result, started);
                return result;
            };
            tokio::pin!(first);
            tokio::select! {
                biased;
                result = &mut first => {
                    record(&result, started);
                    crate::metrics::hedge(Hedged::NotNeeded.as_str());
                    return result;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            let second_started = Instant::now();
            let second = spare.oneshot(copy);
            tokio::pin!(second);
            tokio::select! {
                biased;
                result = &mut first => {
                    record(&result, started);
                    crate::metrics::hedge(Hedged::FirstWon.as_str());
                    result
                }
                result = &mut second => {
                    record(&result, second_started);
                    crate::metrics::hedge(Hedged::SecondWon.as_str());
                    result
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn breaker(failures: u32, open_ms: u64) -> Arc<Breaker> {
        Breaker::new(
            "test",
            BreakerPolicy {
                failures,
                open_for: Duration::from_millis(open_ms),
                count_timeouts: false,
            },
        )
    }

    /// A service whose answers are scripted: `fail` decides by call number.
    fn scripted(
        b: &Arc<Breaker>,
        calls: Arc<AtomicU32>,
        fail: impl Fn(u32) -> bool + Clone + Send + Sync + 'static,
    ) -> StageService<u32, u32> {
        stage_service(b, None, move |c: Call<u32>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let fail = fail.clone();
            async move {
                if fail(n) {
                    Err(Status::unavailable("down"))
                } else {
                    Ok(c.message)
                }
            }
        })
    }

    fn call(m: u32) -> Call<u32> {
        Call {
            message: m,
            budget: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_refuses_without_calling() {
        let b = breaker(3, 60_000);
        let calls = Arc::new(AtomicU32::new(0));
        let svc = scripted(&b, calls.clone(), |_| true);
        for _ in 0..3 {
            let e = svc.clone().oneshot(call(1)).await.unwrap_err();
            assert_eq!(e.message(), "down");
        }
        assert_eq!(b.state(), BreakerState::Open);
        let e = svc.clone().oneshot(call(1)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("circuit open for test"), "{e:?}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "an open breaker does not call"
        );
    }

    #[tokio::test]
    async fn a_success_resets_the_count_and_request_errors_do_not_count() {
        let b = breaker(3, 60_000);
        let calls = Arc::new(AtomicU32::new(0));
        // fail, fail, ok, fail, fail: never three in a row
        let svc = scripted(&b, calls, |n| n != 2);
        for _ in 0..5 {
            let _ = svc.clone().oneshot(call(1)).await;
        }
        assert_eq!(b.state(), BreakerState::Closed);

        let invalid = stage_service(&b, None, |_: Call<u32>| async {
            Err::<u32, _>(Status::invalid_argument("bad id"))
        });
        for _ in 0..10 {
            let _ = invalid.clone().oneshot(call(1)).await;
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the caller's mistakes say nothing of the downstream"
        );
    }

    #[tokio::test]
    async fn half_open_lets_one_probe_through_which_closes_or_reopens() {
        let b = breaker(2, 30);
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = healthy.clone();
        let slow_probe = Arc::new(tokio::sync::Notify::new());
        let gate = slow_probe.clone();
        let svc = stage_service(&b, None, move |c: Call<u32>| {
            let ok = h.load(Ordering::SeqCst);
            let gate = gate.clone();
            async move {
                if c.message == 99 {
                    gate.notified().await;
                }
                if ok {
                    Ok(c.message)
                } else {
                    Err(Status::unavailable("down"))
                }
            }
        });
        for _ in 0..2 {
            let _ = svc.clone().oneshot(call(1)).await;
        }
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);

        // A probe that fails reopens.
        assert!(svc.clone().oneshot(call(1)).await.is_err());
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::sleep(Duration::from_millis(40)).await;

        // While the probe is in flight, other calls are refused; its success closes the breaker.
        healthy.store(true, Ordering::SeqCst);
        let probe = tokio::spawn(svc.clone().oneshot(call(99)));
        tokio::task::yield_now().await;
        let e = svc.clone().oneshot(call(1)).await.unwrap_err();
        assert!(e.message().contains("waiting on the probe"), "{e:?}");
        slow_probe.notify_one();
        assert_eq!(probe.await.unwrap().unwrap(), 99);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(svc.clone().oneshot(call(5)).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn calls_cut_off_by_their_budget_count_only_when_configured() {
        let hang = |b: &Arc<Breaker>| {
            stage_service(b, None, |c: Call<u32>| async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(c.message)
            })
        };
        let deadline = |b: &Arc<Breaker>| {
            stage_service(b, None, |_: Call<u32>| async {
                Err::<u32, _>(Status::deadline_exceeded("too slow"))
            })
        };
        let lenient = breaker(2, 60_000);
        for _ in 0..5 {
            let cut =
                tokio::time::timeout(Duration::from_millis(2), hang(&lenient).oneshot(call(1)));
            assert!(cut.await.is_err());
            let _ = deadline(&lenient).oneshot(call(1)).await;
        }
        assert_eq!(
            lenient.state(),
            BreakerState::Closed,
            "a slow downstream under load is not a broken one"
        );

        let strict = Breaker::new(
            "test",
            BreakerPolicy {
                failures: 2,
                open_for: Duration::from_secs(60),
                count_timeouts: true,
            },
        );
        let cut = tokio::time::timeout(Duration::from_millis(2), hang(&strict).oneshot(call(1)));
        assert!(cut.await.is_err());
        let _ = deadline(&strict).oneshot(call(1)).await;
        assert_eq!(strict.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn breakers_off_never_refuse() {
        let b = breaker(0, 1);
        let svc = scripted(&b, Arc::new(AtomicU32::new(0)), |_| true);
        for _ in 0..20 {
            let e = svc.clone().oneshot(call(1)).await.unwrap_err();
            assert_eq!(e.message(), "down");
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// One call in `every` is slow (`slow`), the rest answer at once; the slow ones are the first attempt of a
    /// call only, as a stalled connection or a GC pause would be.
    fn tail(
        b: &Arc<Breaker>,
        hedge: Option<HedgePolicy>,
        every: u32,
        slow: Duration,
    ) -> (StageService<u32, u32>, Arc<AtomicU32>) {
        let attempts = Arc::new(AtomicU32::new(0));
        let a = attempts.clone();
        let svc = stage_service(b, hedge, move |c: Call<u32>| {
            let n = a.fetch_add(1, Ordering::SeqCst);
            async move {
                if n % every == every - 1 {
                    tokio::time::sleep(slow).await;
                } else {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                Ok(c.message)
            }
        });
        (svc, attempts)
    }

    /// With time paused the clock only moves when every task waits, so these latencies are exact.
    #[tokio::test(start_paused = true)]
    async fn hedging_sends_a_second_call_after_the_observed_quantile() {
        let b = breaker(0, 1);
        let cfg = HedgePolicy {
            quantile: 0.95,
            min_samples: 50,
            window: Duration::from_secs(3600),
        };
        let slow = Duration::from_millis(100);
        let budget = Duration::from_millis(50);

        let run = |svc: StageService<u32, u32>| async move {
            let mut timeouts = 0;
            for i in 0..400 {
                let c = tokio::time::timeout(budget, svc.clone().oneshot(call(i)));
                match c.await {
                    Ok(r) => assert_eq!(r.unwrap(), i),
                    Err(_) => timeouts += 1,
                }
            }
            timeouts
        };
        let (plain, plain_attempts) = tail(&b, None, 40, slow);
        let (hedged, hedged_attempts) = tail(&b, Some(cfg), 40, slow);
        let plain_timeouts = run(plain).await;
        let hedged_timeouts = run(hedged).await;
        assert_eq!(plain_timeouts, 10, "one call in 40 misses its budget");
        assert_eq!(plain_attempts.load(Ordering::SeqCst), 400);
        // The first 50 calls teach the quantile (one slow call among them is lost); after that every slow call is
        // rescued by its hedge, and only slow calls are hedged.
        assert!(hedged_timeouts <= 2, "{hedged_timeouts} timeouts");
        let extra = hedged_attempts.load(Ordering::SeqCst) - 400;
        assert!(
            (8..=12).contains(&extra),
            "{extra} hedges for ~10 slow calls"
        );
    }
}
