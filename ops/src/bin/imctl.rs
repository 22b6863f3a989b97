use clap::{Parser, Subcommand};

/// Operator CLI for the IM backbone.
#[derive(Parser)]
#[command(name = "imctl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local stack (managed nats-server + streams) until Ctrl-C.
    Up(im_ops::cmd::up::UpArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Up(args) => im_ops::cmd::up::run(args).await,
    }
}
