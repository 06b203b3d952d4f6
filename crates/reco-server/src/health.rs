//! grpc.health.v1 with watch streams that end when the server drains.
//!
//! tonic-health's `Watch` streams never end, so one load balancer watching a server would hold it open through
//! a graceful shutdown until the drain timeout. This wraps tonic-health's service: `Check` is unchanged, and
//! every `Watch` stream sends a last NOT_SERVING and closes once draining starts.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
        health_server::Health,
    },
    server::HealthService,
};

/// The health service, ending watches on drain.
pub struct DrainingHealth {
    inner: HealthService,
    draining: watch::Receiver<bool>,
}

impl DrainingHealth {
    pub fn new(inner: HealthService, draining: watch::Receiver<bool>) -> Self {
        Self { inner, draining }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let inner = self.inner.watch(request).await?.into_inner();
        let draining = self.draining.clone();
        let stream = futures::stream::unfold(
            (inner, draining, false),
            |(mut inner, mut draining, done)| async move {
                if done {
                    return None;
                }
                let drained = tokio::select! {
                    biased;
                    _ = draining.wait_for(|d| *d) => None,
                    item = inner.next() => Some(item),
                };
                match drained {
                    None => {
                        let last = HealthCheckResponse {
                            status: ServingStatus::NotServing as i32,
                        };
                        Some((Ok(last), (inner, draining, true)))
                    }
                    Some(item) => item.map(|i| (i, (inner, draining, false))),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
