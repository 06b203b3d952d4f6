//! All six services in one process, each serving its own gRPC API on its own listener. The gateway reaches the
//! others in process (by default: it calls their implementations directly, with no encoding and no socket) or over
//! gRPC on loopback, as separate deployments do. Used by `reco up` and by the integration tests.
//!
//! ```text
//!   gateway :50051 ──(in process | loopback gRPC)──▶ feature :50052, cache :50053, vector-recall :50054,
//!                                                     graph-recall :50055, ranking :50056
//! ```

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// The six services, in start order (downstreams first).
pub const SERVICES: [&str; 6] = [
    "feature",
    "cache",
    "vector-recall",
    "graph-recall",
    "ranking",
    "gateway",
];

/// How the gateway of a one-process platform reaches the other services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wiring {
    /// A direct call into each service's implementation.
    #[default]
    InProcess,
    /// gRPC over loopback, as separate deployments do.
    OverGrpc,
}

impl Wiring {
    pub fn as_str(self) -> &'static str {
        match self {
            Wiring::InProcess => "in process",
            Wiring::OverGrpc => "over loopback gRPC",
        }
    }
}

/// How to run the platform.
#[derive(Clone, Debug)]
pub struct PlatformConfig {
    pub wiring: Wiring,
    pub host: std::net::IpAddr,
    /// Where durable embedded stores keep their files; None uses a temporary directory removed at shutdown.
    pub data_dir: Option<std::path::PathBuf>,
    /// The gateway's port; the others follow it (+1 .. +5). 0 gives every service a free port.
    pub base_port: u16,
    pub feature: reco_feature::Config,
    pub cache: reco_cache::Config,
    pub vector: reco_vector_recall::Config,
    pub graph: reco_graph_recall::Config,
    pub ranking: reco_ranking::Config,
    pub gateway: reco_gateway::Config,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            wiring: Wiring::default(),
            host: [127, 0, 0, 1].into(),
            data_dir: None,
            base_port: 0,
            feature: Default::default(),
            cache: Default::default(),
            vector: Default::default(),
            graph: Default::default(),
            ranking: Default::default(),
            gateway: Default::default(),
        }
    }
}

/// Where each service listens.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub gateway: SocketAddr,
    pub feature: SocketAddr,
    pub cache: SocketAddr,
    pub vector: SocketAddr,
    pub graph: SocketAddr,
    pub ranking: SocketAddr,
}

impl Addrs {
    /// (service, address) pairs in [`SERVICES`] order.
    pub fn all(&self) -> [(&'static str, SocketAddr); 6] {
        [
            ("feature", self.feature),
            ("cache", self.cache),
            ("vector-recall", self.vector),
            ("graph-recall", self.graph),
            ("ranking", self.ranking),
            ("gateway", self.gateway),
        ]
    }
}

/// The running platform. [`Platform::shutdown`] drains every service; dropping it stops them too.
pub struct Platform {
    pub addrs: Addrs,
    /// Where the services keep their files (the feature store, the vector index, the gateway's event outbox).
    pub data_dir: std::path::PathBuf,
    /// The temporary data directory, when none was given; removed when the platform is dropped.
    _data_dir: Option<tempfile::TempDir>,
    /// The gateway's settings, for starting another gateway over the same services.
    pub gateway_config: reco_gateway::Config,
    pub wiring: Wiring,
    /// The services' own implementations, as the gateway calls them in process.
    in_process: reco_gateway::Downstreams,
    stop: watch::Sender<bool>,
    stop_gateway: watch::Sender<bool>,
    tasks: Vec<(
        &'static str,
        JoinHandle<Result<(), reco_server::ServerError>>,
    )>,
}

async fn bind(host: std::net::IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))
}

impl Platform {
    /// Binds every listener, starts every service and waits until each reports SERVING.
    pub async fn start(mut cfg: PlatformConfig) -> anyhow::Result<Self> {
        let port = |offset: u16| {
            if cfg.base_port == 0 {
                0
            } else {
                cfg.base_port + offset
            }
        };
        let gateway_l = bind(cfg.host, port(0)).await?;
        let feature_l = bind(cfg.host, port(1)).await?;
        let cache_l = bind(cfg.host, port(2)).await?;
        let vector_l = bind(cfg.host, port(3)).await?;
        let graph_l = bind(cfg.host, port(4)).await?;
        let ranking_l = bind(cfg.host, port(5)).await?;
        let addrs = Addrs {
            gateway: gateway_l.local_addr()?,
            feature: feature_l.local_addr()?,
            cache: cache_l.local_addr()?,
            vector: vector_l.local_addr()?,
            graph: graph_l.local_addr()?,
            ranking: ranking_l.local_addr()?,
        };
        let temp_dir = match &cfg.data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().context("cannot make a temporary data directory")?),
        };
        let data_dir = match (&cfg.data_dir, &temp_dir) {
            (Some(dir), _) => dir.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => unreachable!("a temporary directory is made when none is given"),
        };
        cfg.feature.data_dir = data_dir.join("feature");
        cfg.vector.data_dir = Some(data_dir.join("vector"));
        cfg.gateway.event_outbox = data_dir.join("gateway").join("events.redb");
        cfg.vector.feature_addr = Some(addrs.feature.to_string());
        cfg.gateway.feature_addr = addrs.feature.to_string();
        cfg.gateway.cache_addr = addrs.cache.to_string();
        cfg.gateway.vector_addr = addrs.vector.to_string();
        cfg.gateway.graph_addr = addrs.graph.to_string();
        cfg.gateway.ranking_addr = addrs.ranking.to_string();

        // The gateway stops first, so its after-answer writes still find the cache service up.
        let (stop, _) = watch::channel(false);
        let (stop_gateway, _) = watch::channel(false);
        let signal = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let feature = reco_feature::open(&cfg.feature).await?;
        let cache = reco_cache::open(&cfg.cache)?;
        let vector = reco_vector_recall::open(&cfg.vector).await?;
        let graph = reco_graph_recall::open(&cfg.graph).await?;
        let ranking = reco_ranking::open(&cfg.ranking).await?;
        let in_process = reco_gateway::Downstreams {
            feature: feature.clone(),
            cache: cache.clone(),
            vector: vector.clone(),
            graph: graph.clone(),
            ranking: ranking.clone(),
        };
        let gateway = match cfg.wiring {
            Wiring::InProcess => reco_gateway::server(&cfg.gateway, in_process.clone())?,
            Wiring::OverGrpc => reco_gateway::build(&cfg.gateway)?,
        };
        let servers = [
            (
                "feature",
                reco_feature::server(&cfg.feature, feature),
                feature_l,
            ),
            ("cache", reco_cache::server(&cfg.cache, cache), cache_l),
            (
                "vector-recall",
                reco_vector_recall::server(&cfg.vector, vector),
                vector_l,
            ),
            (
                "graph-recall",
                reco_graph_recall::server(&cfg.graph, graph),
                graph_l,
            ),
            (
                "ranking",
                reco_ranking::server(&cfg.ranking, ranking),
                ranking_l,
            ),
            ("gateway", gateway, gateway_l),
        ];
        let mut tasks = Vec::new();
        for (name, server, listener) in servers {
            let signal = signal(if name == "gateway" {
                &stop_gateway
            } else {
                &stop
            });
            tasks.push((name, tokio::spawn(server.serve(listener, signal))));
        }
        let platform = Self {
            addrs,
            data_dir,
            _data_dir: temp_dir,
            gateway_config: cfg.gateway.clone(),
            wiring: cfg.wiring,
            in_process,
            stop,
            stop_gateway,
            tasks,
        };
        for (name, addr) in platform.addrs.all() {
            reco_server::wait_serving(&addr.to_string(), Duration::from_secs(10))
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        Ok(platform)
    }

    /// How this platform's gateway reaches the other services: their implementations in process, or gRPC clients of
    /// their addresses.
    pub fn downstreams(&self) -> anyhow::Result<reco_gateway::Downstreams> {
        match self.wiring {
            Wiring::InProcess => Ok(self.in_process.clone()),
            Wiring::OverGrpc => reco_gateway::grpc_downstreams(&self.gateway_config),
        }
    }

    /// Another gateway over the same services, wired as this platform's is, with `config`'s settings. Unless
    /// `config` names an event outbox of its own, it gets a new one in the data directory (two gateways cannot
    /// share one file).
    pub fn gateway(
        &self,
        config: &reco_gateway::Config,
    ) -> anyhow::Result<reco_server::GrpcServer> {
        let mut config = config.clone();
        let g = &self.gateway_config;
        if config.event_outbox == reco_gateway::Config::default().event_outbox
            || config.event_outbox == g.event_outbox
        {
            static MORE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
            let n = MORE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            config.event_outbox = self
                .data_dir
                .join(format!("gateway-{n}"))
                .join("events.redb");
        }
        config.feature_addr = g.feature_addr.clone();
        config.cache_addr = g.cache_addr.clone();
        config.vector_addr = g.vector_addr.clone();
        config.graph_addr = g.graph_addr.clone();
        config.ranking_addr = g.ranking_addr.clone();
        reco_gateway::server(&config, self.downstreams()?)
    }

    /// Drains and stops every service, reporting the first that failed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop_gateway.send(true);
        let mut first_error = None;
        // The gateway (last started) drains first, then the services it writes to.
        let mut tasks: Vec<_> = self.tasks.drain(..).collect();
        tasks.reverse();
        for (name, task) in tasks {
            if name != "gateway" {
                let _ = self.stop.send(true);
            }
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert_with(|| anyhow::anyhow!("{name}: {e}"));
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| anyhow::anyhow!("{name} task failed: {e}"));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.stop_gateway.send(true);
        let _ = self.stop.send(true);
    }
}
