//! The shared server builder.

use std::{convert::Infallible, future::Future, net::SocketAddr, pin::Pin, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    body::Body,
    server::NamedService,
    service::RoutesBuilder,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::{info, warn};

use crate::health::DrainingHealth;

/// Server flags shared by every service binary (each also reads `RECO_*` from the environment).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on; each service has its own default port.
    #[arg(long, env = "RECO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Also serve on this Unix socket (a stale one is replaced), for callers on the same machine: they skip the
    /// TCP/IP stack by addressing the service as `unix:PATH`. Plaintext only: not with `--tls-cert`.
    #[arg(long, env = "RECO_LISTEN_UNIX")]
    pub listen_unix: Option<std::path::PathBuf>,
    /// Requests handled at once, over all connections; past it requests are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "RECO_CONCURRENCY_LIMIT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency_limit: u32,
    /// How long in-flight requests may take to finish after a shutdown signal, in milliseconds.
    #[arg(long, env = "RECO_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Serve only callers listed in this file (`name read|read,write token` per line; a mounted Secret): writes
    /// need `write`. Without it every caller may call everything.
    #[arg(long, env = "RECO_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
}

impl ServerArgs {
    /// The address to listen on: `--listen`, or 127.0.0.1 on the service's own default port.
    pub fn listen_or(&self, default_port: u16) -> SocketAddr {
        self.listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], default_port)))
    }
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            listen: None,
            listen_unix: None,
            concurrency_limit: 1024,
            drain_timeout_ms: 10_000,
            auth_tokens_file: None,
            tls: Default::default(),
        }
    }
}

/// Why a server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The reflection service could not read the descriptors (a build problem).
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed (accepting connections, HTTP/2).
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The tokens file could not be used.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The certificate files could not be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The Unix socket could not be served.
    #[error("cannot serve on the Unix socket {path}: {reason}")]
    Unix { path: String, reason: String },
    /// In-flight requests did not finish within the drain timeout.
    #[error("requests still running after the drain timeout of {0:?}; stopped anyway")]
    DrainTimeout(Duration),
}

type Readiness = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type AfterDrain = Pin<Box<dyn Future<Output = ()> + Send>>;
type ReadinessProbe = Box<dyn Fn() -> Readiness + Send + Sync>;

/// A gRPC server with the layers, health and reflection every reco service has.
pub struct GrpcServer {
    name: &'static str,
    args: ServerArgs,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    /// Full paths of the RPCs that need the write permission.
    writes: std::collections::HashSet<String>,
    health: HealthReporter,
    draining: tokio::sync::watch::Sender<bool>,
    readiness: Option<ReadinessProbe>,
    /// In a mutex only so the server (held across awaits in `serve`) stays `Sync`.
    after_drain: std::sync::Mutex<Option<AfterDrain>>,
}

impl GrpcServer {
    /// A server for service `name` (used in logs) configured by `args`.
    pub fn new(name: &'static str, args: ServerArgs) -> Self {
        let health = HealthReporter::new();
        let (draining, draining_rx) = tokio::sync::watch::channel(false);
        let health_service = DrainingHealth::new(
            HealthService::from_health_reporter(health.clone()),
            draining_rx,
        );
        let mut routes = RoutesBuilder::default();
        routes.add_service(HealthServer::new(health_service));
        Self {
            name,
            args,
            routes,
            service_names: Vec::new(),
            writes: Default::default(),
            health,
            draining,
            readiness: None,
            after_drain: std::sync::Mutex::new(None),
        }
    }

    /// Adds a generated gRPC service. It is listed by reflection and has its own health status.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Declares the RPCs of `service` (its full name) that change data: with `--auth-tokens-file`, only callers
    /// with the write permission may call them.
    pub fn write_rpcs(mut self, service: &str, methods: &[&str]) -> Self {
        self.writes
            .extend(methods.iter().map(|m| format!("/{service}/{m}")));
        self
    }

    /// Full paths of the RPCs declared as writes.
    pub fn writes(&self) -> &std::collections::HashSet<String> {
        &self.writes
    }

    /// A check that the service's backends answer. Health stays NOT_SERVING until it passes; it is retried.
    pub fn readiness<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.readiness = Some(Box::new(move || Box::pin(probe())));
        self
    }

    /// Work to finish once requests have drained (background writes a handler started), within the same drain
    /// timeout.
    pub fn after_drain(mut self, work: impl Future<Output = ()> + Send + 'static) -> Self {
        self.after_drain = std::sync::Mutex::new(Some(Box::pin(work)));
        self
    }

    /// The health reporter, for services that change their status while running.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    async fn set_status(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        for name in &self.service_names {
            self.health.set_service_status(*name, status).await;
        }
    }

    /// Serves on `listener` until `shutdown` completes, then drains. Tests pass a listener bound to
    /// `127.0.0.1:0`, so there is no port race.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        self.set_status(ServingStatus::NotServing).await;

        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(reco_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let mut reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(reco_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        // List only this server's own services (and health), not every service in the shared descriptor set.
        for name in self
            .service_names
            .iter()
            .copied()
            .chain(["grpc.health.v1.Health"])
        {
            reflection = reflection.with_service_name(name);
            reflection_alpha = reflection_alpha.with_service_name(name);
        }
        self.routes.add_service(reflection.build_v1()?);
        self.routes.add_service(reflection_alpha.build_v1alpha()?);
        let routes = std::mem::take(&mut self.routes).routes();

        let policy = match &self.args.auth_tokens_file {
            Some(path) => Some(crate::auth::Policy {
                callers: std::sync::Arc::new(crate::auth::Callers::load(path)?),
                writes: std::sync::Arc::new(std::mem::take(&mut self.writes)),
            }),
            None => None,
        };
        let local = listener.local_addr().ok();
        let name = self.name;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let router = Server::builder()
            .initial_stream_window_size(crate::client::STREAM_WINDOW)
            .initial_connection_window_size(crate::client::CONNECTION_WINDOW)
            // A span per request, child of the caller's trace when it sent one.
            .trace_fn(move |request| {
                let span = tracing::info_span!("grpc", service = name, rpc = %request.uri().path());
                reco_telemetry::extract_into(request.headers(), &span);
                span
            })
            // Refuse at once (RESOURCE_EXHAUSTED) when the concurrency limit is reached, rather than queue.
            .load_shed(true)
            // Callers without a token, or without the write permission on a write, are refused first.
            .layer(crate::auth::AuthLayer(policy))
            // At most this many requests in flight, over every connection.
            .layer(GlobalConcurrencyLimitLayer::new(
                self.args.concurrency_limit as usize,
            ))
            // A panicking handler answers INTERNAL instead of dropping the connection.
            .layer(CatchPanicLayer::custom(
                |_panic: Box<dyn std::any::Any + Send>| {
                    tonic::Status::internal("internal error: the handler panicked")
                        .into_http::<Body>()
                },
            ))
            .add_routes(routes);
        let stopped = async {
            let _ = stop_rx.await;
        };
        let tls = self.args.tls.server()?;
        let unix = match &self.args.listen_unix {
            Some(path) => {
                let refused = |reason: String| ServerError::Unix {
                    path: path.display().to_string(),
                    reason,
                };
                if tls.is_some() {
                    return Err(refused(
                        "a Unix socket serves plaintext, and this server is configured for TLS"
                            .into(),
                    ));
                }
                // What a killed process left behind; a live server's socket is replaced too, as with a restart.
                let _ = std::fs::remove_file(path);
                let listener =
                    tokio::net::UnixListener::bind(path).map_err(|e| refused(e.to_string()))?;
                // It stops with the TCP server: when the server starts draining.
                let mut draining = self.draining.subscribe();
                let served = tokio::spawn(router.clone().serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async move {
                        let _ = draining.wait_for(|d| *d).await;
                    },
                ));
                info!(service = name, path = %path.display(), "listening on a Unix socket");
                Some((SocketFile(path.clone()), served))
            }
            None => None,
        };
        let (server, acceptor) = match tls {
            None => {
                // Nagle's algorithm would hold back the tail of multi-segment responses until the peer's
                // delayed ACK.
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60)));
                (
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped)),
                    None,
                )
            }
            Some(tls) => {
                let tls = std::sync::Arc::new(tls);
                let every = Duration::from_millis(self.args.tls.tls_reload_ms);
                let (incoming, acceptor) = crate::tls::incoming(listener, tls, every, name);
                (
                    tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped)),
                    Some(acceptor),
                )
            }
        };
        info!(service = name, addr = ?local, "listening");

        // Ready once the backends answer; the probe is retried until then, or until shutdown.
        let mut shutdown = std::pin::pin!(shutdown);
        let ready = async {
            if let Some(probe) = &self.readiness {
                let mut attempt = 0u32;
                while let Err(error) = probe().await {
                    attempt += 1;
                    if attempt % 10 == 1 {
                        warn!(service = name, %error, "backends not ready");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let shut_down_early = tokio::select! {
            _ = ready => false,
            _ = &mut shutdown => true,
        };
        if !shut_down_early {
            self.set_status(ServingStatus::Serving).await;
            info!(service = name, "serving");
            shutdown.await;
        }

        // Flip health first so load balancers stop sending, then stop accepting and drain.
        self.set_status(ServingStatus::NotServing).await;
        let _ = self.draining.send(true);
        info!(service = name, "draining");
        let _ = stop_tx.send(());
        // The socket file goes when this function returns, drained or not.
        let (_socket_file, unix) = unix.unzip();
        // The TLS accept loop owns the listener: stopping it releases the port.
        if let Some(acceptor) = &acceptor {
            acceptor.abort();
        }
        let drain = Duration::from_millis(self.args.drain_timeout_ms);
        let abort = server.abort_handle();
        let unix_abort = unix.as_ref().map(tokio::task::JoinHandle::abort_handle);
        let after = self.after_drain.lock().expect("not poisoned").take();
        let drained = async move {
            let served = server.await;
            if let Some(unix) = unix
                && let Ok(Err(error)) = unix.await
            {
                warn!(service = name, %error, "the Unix socket's server failed");
            }
            if let Some(work) = after {
                work.await;
            }
            served
        };
        match tokio::time::timeout(drain, drained).await {
            Ok(Ok(result)) => Ok(result?),
            Ok(Err(join)) => panic!("server task failed: {join}"),
            Err(_) => {
                abort.abort();
                if let Some(unix) = unix_abort {
                    unix.abort();
                }
                Err(ServerError::DrainTimeout(drain))
            }
        }
    }
}

/// The `--listen-unix` socket's file, removed when dropped.
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("interrupt received"),
        _ = term => info!("terminate received"),
    }
}
