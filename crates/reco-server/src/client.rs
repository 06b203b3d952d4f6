//! Clients for calling other reco services, carrying the caller's trace context.

use std::time::Duration;

use tonic::{
    metadata::{MetadataKey, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Adds the current span's W3C trace context to every outgoing request, and this process's caller token when it
/// has one ([`crate::auth::client_token`]).
#[derive(Clone, Debug, Default)]
pub struct TraceInterceptor {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl TraceInterceptor {
    /// Sends `token` as `authorization: Bearer <token>`.
    pub fn with_token(token: &str) -> Self {
        Self {
            authorization: MetadataValue::try_from(format!("Bearer {token}")).ok(),
        }
    }
}

impl Interceptor for TraceInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let metadata = request.metadata_mut();
        if let Some(value) = &self.authorization {
            metadata.insert("authorization", value.clone());
        }
        reco_telemetry::inject(|key, value| {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                metadata.insert(key, value);
            }
        });
        Ok(request)
    }
}

/// A channel to another service whose requests carry trace context.
pub type TracedChannel = InterceptedService<Channel, TraceInterceptor>;

/// HTTP/2 flow-control windows of every reco connection, both ways: room for the largest answers in flight.
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;

/// A lazily connected channel to `addr` (`host:port`, a full `http://` URI, or `unix:PATH`). It connects on first use and
/// reconnects by itself, so a downstream that starts later or restarts is picked up without restarting the caller.
///
/// Over TLS when the process has `RECO_TLS_CA` set (with `RECO_TLS_CERT` and `RECO_TLS_KEY`, presenting that
/// certificate), so the `reco` commands reach services that only speak TLS.
pub fn channel(addr: &str) -> Result<TracedChannel, tonic::transport::Error> {
    channel_tls(addr, env_tls())
}

/// The client TLS of `RECO_TLS_CA` / `RECO_TLS_CERT` / `RECO_TLS_KEY`, read once; files that do not load are
/// logged and leave the process on plain connections (which a TLS server then refuses).
fn env_tls() -> Option<&'static std::sync::Arc<crate::tls::ClientTls>> {
    static TLS: std::sync::OnceLock<Option<std::sync::Arc<crate::tls::ClientTls>>> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let path = |v: &str| std::env::var_os(v).map(std::path::PathBuf::from);
        let args = crate::tls::TlsArgs {
            tls_ca: path("RECO_TLS_CA"),
            tls_cert: path("RECO_TLS_CERT"),
            tls_key: path("RECO_TLS_KEY"),
            ..Default::default()
        };
        args.client().unwrap_or_else(|error| {
            tracing::error!(%error, "client TLS from RECO_TLS_CA/RECO_TLS_CERT/RECO_TLS_KEY refused");
            None
        })
    })
    .as_ref()
}

/// [`channel`] over TLS when `tls` is given (`https`, the configured CA, the service's own certificate for mutual
/// TLS): what a service uses to call the others with its `--tls-*` settings.
pub fn channel_tls(
    addr: &str,
    tls: Option<&std::sync::Arc<crate::tls::ClientTls>>,
) -> Result<TracedChannel, tonic::transport::Error> {
    let interceptor = crate::auth::client_token()
        .map(TraceInterceptor::with_token)
        .unwrap_or_default();
    build(addr, interceptor, tls)
}

/// [`channel`] with a given interceptor (another caller token, in tests).
pub fn channel_with(
    addr: &str,
    interceptor: TraceInterceptor,
) -> Result<TracedChannel, tonic::transport::Error> {
    build(addr, interceptor, None)
}

fn build(
    addr: &str,
    interceptor: TraceInterceptor,
    tls: Option<&std::sync::Arc<crate::tls::ClientTls>>,
) -> Result<TracedChannel, tonic::transport::Error> {
    // A co-located service's Unix socket: no TCP/IP stack between the two processes, and no TLS (the socket
    // file's permissions guard it; a server with TLS does not listen on one).
    #[cfg(unix)]
    if let Some(path) = addr.strip_prefix(UNIX_PREFIX) {
        let channel = settings(Endpoint::from_static("http://localhost"))
            .connect_with_connector_lazy(crate::coalesce::UnixConnector(
                std::path::Path::new(path).into(),
            ));
        return Ok(InterceptedService::new(channel, interceptor));
    }
    // With TLS the connector does the handshake itself (re-reading rotated certificates), so the channel's own
    // scheme stays http.
    let host = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let uri = match tls {
        Some(_) => format!("http://{host}"),
        None if addr.contains("://") => addr.to_string(),
        None => format!("http://{addr}"),
    };
    let endpoint = settings(Endpoint::from_shared(uri)?);
    let channel = match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(crate::tls::Connector(tls.clone())),
        // HEADERS and DATA of a call in one write (see `coalesce`).
        None => endpoint.connect_with_connector_lazy(crate::coalesce::TcpConnector),
    };
    Ok(InterceptedService::new(channel, interceptor))
}

/// Every reco connection's settings.
fn settings(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        // Room for answers and bulk loads larger than HTTP/2's 64 KB default window.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
}

/// An address of this form (`unix:/run/reco/feature.sock`) names a Unix socket that a service serves with
/// `--listen-unix`.
pub const UNIX_PREFIX: &str = "unix:";

/// Waits until the server at `addr` reports SERVING on `grpc.health.v1.Health/Check`, or `timeout` passes.
pub async fn wait_serving(addr: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    let channel = channel(addr).map_err(|e| e.to_string())?;
    let mut client = HealthClient::new(channel);
    while tokio::time::Instant::now() < deadline {
        match client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
            Ok(r) => last = format!("status {:?}", ServingStatus::try_from(r.get_ref().status)),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{addr} not SERVING after {timeout:?}: {last}"))
}
