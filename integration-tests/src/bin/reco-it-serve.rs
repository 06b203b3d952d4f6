//! `reco-it-serve serve <service> [flags]`: the part of `reco` that runs one service, built with the
//! integration tests so they can start the platform as separate processes (`CARGO_BIN_EXE_reco-it-serve`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    reco_cli::serve::main_serve_only().await
}
