use clap::{Parser, Subcommand};
use im_replay::cmd;

/// Auditor CLI: export, verify, time travel and archives of the event log.
#[derive(Parser)]
#[command(name = "im-replay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decoded events as JSON lines or CSV, filtered.
    Export(cmd::export::ExportArgs),
    /// Check the hash chain, gapless conv_seq, the rules and client_msg_id
    /// uniqueness; print digests. Exit 1 at the first violation, 2 if it
    /// could not read the log.
    Verify(cmd::verify::VerifyArgs),
    /// Members and history of a conversation as of a sequence or time.
    State(cmd::state::StateArgs),
    /// The members of a conversation when one of its events was appended.
    WhoCouldRead(cmd::who_could_read::WhoCouldReadArgs),
    /// Copy stream segments with manifests to object storage.
    Archive(cmd::archive::ArchiveArgs),
    /// Load an archive into fresh streams.
    Restore(cmd::restore::RestoreArgs),
    /// Print a shell's completion script (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    im_streams::exit::report(run().await)
}

/// 0 ok, 1 a problem found (verify), 2 could not run (`im_streams::exit`).
async fn run() -> anyhow::Result<()> {
    if let Err(e) = im_streams::logging::init("warn") {
        eprintln!("im-replay: {e}");
        std::process::exit(2);
    }
    match Cli::parse().command {
        Command::Export(args) => cmd::export::run(args).await,
        Command::Verify(args) => cmd::verify::run(args).await,
        Command::State(args) => cmd::state::run(args).await,
        Command::WhoCouldRead(args) => cmd::who_could_read::run(args).await,
        Command::Archive(args) => cmd::archive::run(args).await,
        Command::Restore(args) => cmd::restore::run(args).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "im-replay", &mut std::io::stdout());
            Ok(())
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
