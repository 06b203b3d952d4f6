// mimalloc: the services allocate many short-lived buffers per request; glibc malloc's consolidation showed at
// the top of the profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use reco_vector_recall::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = reco_telemetry::init("reco-vector-recall", &config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
    reco_vector_recall::build(&config)
        .await?
        .serve(listener, reco_server::shutdown_signal())
        .await?;
    Ok(())
}
