//! `im-gateway`: reads its configuration from the environment (see
//! `im_gateway::config::ENV_VARS`) and serves.

use anyhow::Context;

// See the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = im_gateway::GatewayConfig::from_env().map_err(anyhow::Error::msg)?;
    let client = async_nats::connect(&config.nats_url)
        .await
        .with_context(|| format!("connecting to {}", config.nats_url))?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let state = im_gateway::AppState::new(config, client).await?;
    println!("im-gateway: ready http://{addr} ws://{addr}/v1/ws");
    im_gateway::serve(listener, state).await?;
    Ok(())
}
