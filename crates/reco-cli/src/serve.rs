//! `reco serve <service> [flags]`: any one service in this process, with exactly the flags and `RECO_*`
//! environment of its own binary (`reco serve feature --help` shows them). One executable that can be any service
//! is what lets `reco up --processes` and the tests run the platform as six processes.
//!
//! Once listening it prints `listening on ADDR` on stdout, so a parent that asked for port 0 learns the port.

use std::io::Write;

use clap::Parser;
use tokio::net::TcpListener;

/// The names `reco serve` accepts, as in [`crate::platform::SERVICES`].
pub use crate::platform::SERVICES;

async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", listener.local_addr()?)?;
    out.flush()?;
    Ok(listener)
}

/// Runs `service` with `args` (its flags, without the program name) until SIGTERM or Ctrl-C.
pub async fn serve(service: &str, args: &[String]) -> anyhow::Result<()> {
    let argv = |bin: &'static str| std::iter::once(bin.to_string()).chain(args.iter().cloned());
    let stop = reco_server::shutdown_signal;
    match service {
        "feature" => {
            let c = reco_feature::Config::try_parse_from(argv("reco-feature"))?;
            let _t = reco_telemetry::init("reco-feature", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_feature::build(&c).await?.serve(l, stop()).await?;
        }
        "cache" => {
            let c = reco_cache::Config::try_parse_from(argv("reco-cache"))?;
            let _t = reco_telemetry::init("reco-cache", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_cache::build(&c)?.serve(l, stop()).await?;
        }
        "vector-recall" => {
            let c = reco_vector_recall::Config::try_parse_from(argv("reco-vector-recall"))?;
            let _t = reco_telemetry::init("reco-vector-recall", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_vector_recall::build(&c)
                .await?
                .serve(l, stop())
                .await?;
        }
        "graph-recall" => {
            let c = reco_graph_recall::Config::try_parse_from(argv("reco-graph-recall"))?;
            let _t = reco_telemetry::init("reco-graph-recall", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_graph_recall::build(&c).await?.serve(l, stop()).await?;
        }
        "ranking" => {
            let c = reco_ranking::Config::try_parse_from(argv("reco-ranking"))?;
            let _t = reco_telemetry::init("reco-ranking", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_ranking::build(&c).await?.serve(l, stop()).await?;
        }
        "gateway" => {
            let c = reco_gateway::Config::try_parse_from(argv("reco-gateway"))?;
            let _t = reco_telemetry::init("reco-gateway", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_gateway::build(&c)?.serve(l, stop()).await?;
        }
        // Not one of the platform's six: a stream consumer that records through the gateway.
        "ingest" => {
            let c = reco_ingest::Config::try_parse_from(argv("reco-ingest"))?;
            let _t = reco_telemetry::init("reco-ingest", &c.telemetry)?;
            let l = listen(c.listen_addr()).await?;
            reco_ingest::build(&c).await?.serve(l, stop()).await?;
        }
        other => anyhow::bail!(
            "unknown service {other:?}: the services are {}, and ingest",
            SERVICES.join(", ")
        ),
    }
    Ok(())
}

/// The command line of a binary that is only `serve`: `PROGRAM serve SERVICE [FLAGS...]` (the form
/// [`crate::processes`] starts children with).
#[derive(Parser)]
struct ServeOnly {
    #[command(subcommand)]
    command: ServeCommand,
}

#[derive(clap::Subcommand)]
enum ServeCommand {
    /// Run one service.
    Serve {
        service: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `main` for a binary that only serves (the integration tests' stand-in for `reco`).
pub async fn main_serve_only() -> anyhow::Result<()> {
    let ServeCommand::Serve { service, args } = ServeOnly::parse().command;
    serve(&service, &args).await
}
