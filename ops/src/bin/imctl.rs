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
    /// Run the local stack (nats-server, streams, projector, gateway) until Ctrl-C.
    Up(Box<im_ops::cmd::up::UpArgs>),
    /// Print the production nats-server configuration: a user per
    /// component with least-privilege permissions (ops/deploy/nats-server.conf).
    NatsConfig(im_ops::cmd::nats_config::NatsConfigArgs),
    /// Event signing keys of the writers.
    #[command(subcommand)]
    SigningKey(SigningKeyCommand),
    /// Development tokens for the local stack.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Stream configs and state.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Read models: status, verify, rebuild, repair.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// The operators' HTTP API and the ops page.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Offline notifications (`im-notifier`).
    #[command(subcommand)]
    Notify(NotifyCommand),
    /// Erase a user's content: destroy its data keys and record the
    /// erasure (docs/privacy.md).
    Erase(im_ops::cmd::keys::EraseArgs),
    /// Content keys: the epoch and retention policy, and retention runs.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print a shell's completion script, e.g. `imctl completions bash >
    /// /etc/bash_completion.d/imctl`.
    Completions { shell: clap_complete::Shell },
    /// Load generator: ingest, fanout, rebuild, connections, latency, each
    /// beside its raw baseline; prints `name value` figures.
    Bench(im_ops::cmd::bench::BenchArgs),
    /// A Jepsen-style check: many clients over two gateways, membership
    /// churn and faults; then the log is checked (exit 1 on any finding).
    Check(im_ops::cmd::check::CheckArgs),
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Checkpoint, lag, apply rate, digest and dead letters per projection.
    Status(im_ops::cmd::projections::StatusArgs),
    /// Rebuild into scratch and compare with the live store (exit 1 on a
    /// mismatch, naming the first differing key).
    Verify(im_ops::cmd::projections::VerifyArgs),
    /// Build new generations while the current ones serve, then swap them
    /// in atomically (Ctrl-C cancels; the current ones stay).
    Rebuild(im_ops::cmd::projections::RebuildArgs),
    /// Replay one conversation's subjects into the live store.
    Repair(im_ops::cmd::projections::RepairArgs),
    /// List the events each projection set aside; --replay folds them
    /// again (exit 1 while any remains).
    DeadLetters(im_ops::cmd::projections::DeadLettersArgs),
    /// Hand a partition of the pool to another live instance (waits for
    /// the hand-over); --auto gives it back to the even share.
    Move(im_ops::cmd::projections::MoveArgs),
}

#[derive(Subcommand)]
enum NotifyCommand {
    /// The notifications given up; --replay sends them again (exit 1
    /// while any remains).
    DeadLetters(im_ops::cmd::notify::DeadLettersArgs),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make the content keys bucket (the deployment encrypts from now on),
    /// or check a KEK against it.
    Init(im_ops::cmd::keys::InitArgs),
    /// Show the epoch length and retention; set them with the flags.
    Policy(im_ops::cmd::keys::PolicyArgs),
    /// Destroy the keys of epochs past retention (once, or --every N s).
    Expire(im_ops::cmd::keys::ExpireArgs),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Serve the admin API and the ops page (behind the operator token).
    Serve(im_ops::cmd::admin::AdminArgs),
}

#[derive(Subcommand)]
enum StreamsCommand {
    /// Create missing streams, update compatible changes, print the diff.
    Apply(im_ops::cmd::streams::ApplyArgs),
    /// Messages, bytes, sequences, consumers and their pending counts.
    Status(im_ops::cmd::streams::StatusArgs),
}

#[derive(Subcommand)]
enum SigningKeyCommand {
    /// Register a gateway's signing key (created in the file if missing).
    Register(im_ops::cmd::signing_key::RegisterArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a JWT for a user, signed with the local stack's secret.
    Issue(im_ops::cmd::token::IssueArgs),
    /// Whether the gateway would take a token (configured as IM_JWT_* say),
    /// and why not.
    Check(im_ops::cmd::token::CheckArgs),
}

// See the workspace manifest for why.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// 0 ok, 1 a problem found, 2 could not run (`im_streams::exit`).
#[tokio::main]
async fn main() -> std::process::ExitCode {
    im_streams::exit::report(run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The bench's stderr is its report: connection chatter stays out of it.
    // A command's output is what it prints: the NATS client's connection
    // chatter stays out of it unless asked for (RUST_LOG).
    let default_filter = match cli.command {
        Command::Bench(_) | Command::Check(_) => "warn",
        Command::Up(_) => "info",
        _ => "info,async_nats=warn",
    };
    if let Err(e) = im_streams::logging::init(default_filter) {
        eprintln!("imctl: {e}");
        std::process::exit(2);
    }
    match cli.command {
        Command::Up(args) => im_ops::cmd::up::run(*args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "imctl", &mut std::io::stdout());
            Ok(())
        }
        Command::NatsConfig(args) => im_ops::cmd::nats_config::run(args),
        Command::SigningKey(SigningKeyCommand::Register(args)) => {
            im_ops::cmd::signing_key::register(args).await
        }
        Command::Token(TokenCommand::Issue(args)) => im_ops::cmd::token::issue(args),
        Command::Token(TokenCommand::Check(args)) => im_ops::cmd::token::check(args).await,
        Command::Streams(StreamsCommand::Apply(args)) => im_ops::cmd::streams::apply(args).await,
        Command::Streams(StreamsCommand::Status(args)) => im_ops::cmd::streams::status(args).await,
        Command::Admin(AdminCommand::Serve(args)) => im_ops::cmd::admin::serve(args).await,
        Command::Notify(NotifyCommand::DeadLetters(args)) => {
            im_ops::cmd::notify::dead_letters(args).await
        }
        Command::Erase(args) => im_ops::cmd::keys::erase(args).await,
        Command::Keys(KeysCommand::Init(args)) => im_ops::cmd::keys::init(args).await,
        Command::Keys(KeysCommand::Policy(args)) => im_ops::cmd::keys::policy(args).await,
        Command::Keys(KeysCommand::Expire(args)) => im_ops::cmd::keys::expire(args).await,
        Command::Bench(args) => im_ops::cmd::bench::run(args).await,
        Command::Check(args) => im_ops::cmd::check::run(args).await,
        Command::Projections(ProjectionsCommand::Status(args)) => {
            im_ops::cmd::projections::status(args).await
        }
        Command::Projections(ProjectionsCommand::Verify(args)) => {
            im_ops::cmd::projections::verify(args).await
        }
        Command::Projections(ProjectionsCommand::Rebuild(args)) => {
            im_ops::cmd::projections::rebuild(args).await
        }
        Command::Projections(ProjectionsCommand::Repair(args)) => {
            im_ops::cmd::projections::repair(args).await
        }
        Command::Projections(ProjectionsCommand::Move(args)) => {
            im_ops::cmd::projections::move_partition(args).await
        }
        Command::Projections(ProjectionsCommand::DeadLetters(args)) => {
            im_ops::cmd::projections::dead_letters(args).await
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every flag and environment variable is one argument: a name used
    /// twice (a command's own and the shared NATS flags) fails here.
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
