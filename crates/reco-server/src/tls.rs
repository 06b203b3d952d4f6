//! TLS on every server (rustls with ring), mutual TLS as an option, certificates reloaded when their files change.
//!
//! ```text
//!   TcpListener ─accept─▶ handshake task (current ServerConfig, 10 s bound) ─▶ channel ─▶ tonic server
//!                               ▲
//!   reload task: every --tls-reload-ms, files changed? ─▶ build a new ServerConfig ─▶ swap (old connections keep theirs)
//! ```
//!
//! A new certificate that does not load (half-written, key not matching) is refused and logged; the previous one
//! keeps serving. Handshakes run in their own tasks, so a slow or silent client never holds up the accept loop.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use parking_lot::RwLock;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::ring,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{info, warn};

/// TLS flags of every server.
#[derive(Clone, Debug, clap::Args)]
pub struct TlsArgs {
    /// Serve TLS with this certificate chain (PEM). Reloaded when the file changes.
    #[arg(long, env = "RECO_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "RECO_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients presenting a certificate signed by this CA (PEM).
    #[arg(long, env = "RECO_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Call other reco services over TLS, trusting this CA (PEM); with --tls-cert and --tls-key this service also
    /// presents its certificate to them (mutual TLS). Read at start.
    #[arg(long, env = "RECO_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// How often the certificate files are checked for changes, in ms.
    #[arg(long, env = "RECO_TLS_RELOAD_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub tls_reload_ms: u64,
}

impl Default for TlsArgs {
    fn default() -> Self {
        Self {
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_ca: None,
            tls_reload_ms: 5_000,
        }
    }
}

/// Why a certificate set could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

fn err(what: &str, path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{what} {}: {e}", path.display()))
}

/// A configuration built from files and rebuilt when any of them changes. A set that does not build is refused
/// (reported once per change) and the previous configuration stays in use.
struct Watched<T> {
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: RwLock<Arc<T>>,
    loaded: parking_lot::Mutex<Vec<Option<SystemTime>>>,
}

impl<T> Watched<T> {
    /// Builds the first configuration; an error here stops the caller from starting.
    fn open(
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Self, TlsError> {
        let loaded = stamps(&paths);
        let first = build()?;
        Ok(Self {
            paths,
            build: Box::new(build),
            current: RwLock::new(Arc::new(first)),
            loaded: parking_lot::Mutex::new(loaded),
        })
    }

    fn current(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Rebuilds when any file changed; Ok(true) when a new configuration is in use.
    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.paths);
        if *self.loaded.lock() == now {
            return Ok(false);
        }
        let built = (self.build)();
        // Whatever the outcome, this version of the files has been seen: a bad file is reported once.
        *self.loaded.lock() = now;
        *self.current.write() = Arc::new(built?);
        Ok(true)
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<SystemTime>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err("cannot read certificates", path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("cannot parse certificates", path, e))?;
    if certs.is_empty() {
        return Err(err("no certificate in", path, "empty"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| err("cannot read the private key", path, e))
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path)? {
        roots.add(c).map_err(|e| err("unusable CA", path, e))?;
    }
    Ok(roots)
}

/// The serving TLS configuration (`--tls-cert`, `--tls-key`, `--tls-client-ca`), speaking HTTP/2, swapped when
/// the files change.
pub struct Reloading(Watched<ServerConfig>);

impl TlsArgs {
    /// The server side, when `--tls-cert` and `--tls-key` are set.
    pub fn server(&self) -> Result<Option<Reloading>, TlsError> {
        let (Some(cert), Some(key)) = (self.tls_cert.clone(), self.tls_key.clone()) else {
            return Ok(None);
        };
        let client_ca = self.tls_client_ca.clone();
        let paths = [Some(cert.clone()), Some(key.clone()), client_ca.clone()]
            .into_iter()
            .flatten()
            .collect();
        let build = move || {
            let provider = Arc::new(ring::default_provider());
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError(e.to_string()))?;
            let builder = match &client_ca {
                None => builder.with_no_client_auth(),
                Some(ca) => {
                    let verifier = WebPkiClientVerifier::builder_with_provider(
                        Arc::new(read_roots(ca)?),
                        provider,
                    )
                    .build()
                    .map_err(|e| err("unusable client CA", ca, e))?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config = builder
                .with_single_cert(read_certs(&cert)?, read_key(&key)?)
                .map_err(|e| err("the key does not fit the certificate", &key, e))?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        };
        Watched::open(paths, build).map(|w| Some(Reloading(w)))
    }

    /// The client side, when `--tls-ca` is set: the CA to trust and, with a certificate, the identity to present.
    pub fn client(&self) -> Result<Option<Arc<ClientTls>>, TlsError> {
        let Some(ca) = self.tls_ca.clone() else {
            return Ok(None);
        };
        let identity = self.tls_cert.clone().zip(self.tls_key.clone());
        let mut paths = vec![ca.clone()];
        paths.extend(identity.iter().flat_map(|(c, k)| [c.clone(), k.clone()]));
        let build = move || {
            let builder =
                rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError(e.to_string()))?
                    .with_root_certificates(read_roots(&ca)?);
            let mut config = match &identity {
                None => builder.with_no_client_auth(),
                Some((cert, key)) => builder
                    .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
                    .map_err(|e| err("the key does not fit the certificate", cert, e))?,
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        };
        Watched::open(paths, build).map(|w| Some(Arc::new(ClientTls(w))))
    }
}

impl Reloading {
    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.current()
    }

    /// Reloads when any file changed; Ok(true) when a new configuration serves.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.0.reload_if_changed()
    }
}

/// How this process calls other reco services over TLS: the CA it trusts and the certificate it presents, both
/// re-read when their files change (checked as each new connection opens; connections are long-lived).
pub struct ClientTls(Watched<rustls::ClientConfig>);

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientTls").field(&self.0.paths).finish()
    }
}

impl ClientTls {
    /// The configuration for a new connection, after a reload if the files changed.
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        if let Err(error) = self.0.reload_if_changed() {
            warn!(%error, "new client TLS files refused; the previous certificate keeps being used");
        }
        self.0.current()
    }
}

/// Opens TCP + TLS connections for a tonic channel with the client configuration current at each connect.
#[derive(Clone, Debug)]
pub struct Connector(pub Arc<ClientTls>);

impl tower::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<
        crate::coalesce::Coalescing<tokio_rustls::client::TlsStream<TcpStream>>,
    >;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let (host, tcp) = crate::coalesce::connect_tcp(&uri, 443).await?;
            let name = rustls::pki_types::ServerName::try_from(host).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a host name or address",
                )
            })?;
            let stream = tokio_rustls::TlsConnector::from(tls.config())
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(
                crate::coalesce::Coalescing::new(stream),
            ))
        })
    }
}

/// Accepts TLS connections on `listener` until the returned stream is dropped (its task is aborted then).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloading>,
    reload_every: Duration,
    name: &'static str,
) -> (
    tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    let task = tokio::spawn(async move {
        let mut reload = tokio::time::interval(reload_every);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = reload.tick() => match tls.reload_if_changed() {
                    Ok(true) => info!(service = name, "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(error) => warn!(service = name, %error, "new TLS files refused; the previous certificate keeps serving"),
                },
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let _ = tcp.set_nodelay(true);
                    let acceptor = TlsAcceptor::from(tls.current());
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok(stream)).await;
                            }
                            Ok(Err(error)) => tracing::debug!(service = name, %error, "TLS handshake refused"),
                            Err(_) => tracing::debug!(service = name, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}
