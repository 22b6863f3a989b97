//! `im-gateway`: its configuration from flags and the environment
//! (`im-gateway --help` lists every one), then serves until SIGTERM/SIGINT.

use clap::Parser;

// See the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Err(e) = im_streams::logging::init("info") {
        eprintln!("im-gateway: {e}");
        std::process::exit(2);
    }
    let args = im_gateway::config::GatewayArgs::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            // The same exit code as a bad flag: the gateway could not run.
            eprintln!("im-gateway: configuration: {e}");
            std::process::exit(2);
        }
    };
    if args.check_config {
        println!("{}", im_gateway::config::summary(&config));
        return Ok(());
    }
    let client = im_streams::connect::NatsArgs::new(&config.nats_url)
        .with_auth(config.nats_auth.clone())
        .connect("im-gateway")
        .await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    // Started during a leader election (or with a node down), it waits for
    // JetStream to answer rather than exit at once.
    let state = im_streams::connect::until_available(
        "gateway start",
        im_gateway::GatewayError::is_transient,
        || im_gateway::AppState::new(config.clone(), client.clone()),
    )
    .await?;
    let metrics = match config.metrics_listen {
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await?;
            let metrics = listener.local_addr()?;
            tokio::spawn(im_gateway::serve_metrics(listener, state.clone()));
            format!(" metrics http://{metrics}/metrics")
        }
        None => String::new(),
    };
    println!("im-gateway: ready http://{addr} ws://{addr}/v1/ws{metrics}");
    im_gateway::serve_until(listener, state, im_streams::connect::stop_signal()).await?;
    println!("im-gateway: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every flag and environment variable is one argument.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        im_gateway::config::GatewayArgs::command().debug_assert();
    }
}
