// mimalloc, as in every service.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use reco_ingest::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = reco_telemetry::init("reco-ingest", &config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
    reco_ingest::build(&config)
        .await?
        .serve(listener, reco_server::shutdown_signal())
        .await?;
    Ok(())
}
