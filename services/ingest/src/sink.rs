//! Where checked events go: Gateway.RecordEvents, which keeps them in its durable outbox and applies them to the
//! sequence, the recent clicks, the graph and the cached answers (so the stream and the API are one path).

use std::time::Duration;

use async_trait::async_trait;
use reco_proto::gateway::v1::{RecordEventsRequest, UserEvent, gateway_client::GatewayClient};
use reco_server::TracedChannel;

/// What the gateway said of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub accepted: u32,
    pub duplicates: u32,
}

#[async_trait]
pub trait EventSink: Send + Sync {
    /// Records `events`; an error is the gateway's status.
    async fn record(&self, events: Vec<UserEvent>) -> Result<Taken, tonic::Status>;
}

pub struct GatewaySink {
    channel: TracedChannel,
    timeout: Duration,
}

impl GatewaySink {
    pub fn new(channel: TracedChannel, timeout: Duration) -> Self {
        Self { channel, timeout }
    }
}

#[async_trait]
impl EventSink for GatewaySink {
    async fn record(&self, events: Vec<UserEvent>) -> Result<Taken, tonic::Status> {
        let mut r = tonic::Request::new(RecordEventsRequest { events });
        // The gateway answers once its services have applied the batch, or before this deadline with the rest
        // pending in its outbox: either way the events are on its disk.
        r.set_timeout(self.timeout);
        let out = GatewayClient::new(self.channel.clone())
            .record_events(r)
            .await?
            .into_inner();
        Ok(Taken {
            accepted: out.accepted,
            duplicates: out.duplicates,
        })
    }
}
