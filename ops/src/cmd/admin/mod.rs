//! `imctl admin serve` (and inside `imctl up`): the operators' HTTP API and
//! the ops page. The API answers from the same code as `imctl streams
//! status`, `imctl projections status` and `imctl projections rebuild`, on
//! the operator's NATS identity, behind a bearer token of its own: a chat
//! user's token is never an operator's.

mod api;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

pub use api::router;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
    /// Where the API and the ops page listen: loopback by default, an
    /// operator's tool is not for the public.
    #[arg(long, env = "IM_ADMIN_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The file holding the operator token (created with a new random one
    /// if missing).
    #[arg(
        long,
        env = "IM_ADMIN_TOKEN_FILE",
        default_value = "data/operator-token"
    )]
    pub token_file: PathBuf,
    /// The built web app, whose `ops.html` is the ops page.
    #[arg(long, env = "IM_WEB_DIR", default_value = "clients/web/dist", value_parser = crate::cmd::paths::checkout_path)]
    pub web_dir: PathBuf,
    /// A registered writer key that signs the erasures the API records
    /// (`POST /admin/v1/erase`); none: erasures are refused.
    #[arg(long, env = "IM_EVENT_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Where the gateways keep media: an erasure deletes the user's uploads.
    #[command(flatten)]
    pub media: im_gateway::config::MediaArgs,
}

/// What the API needs: the operator's NATS connection and the token.
pub struct Admin {
    pub client: async_nats::Client,
    pub token: String,
    /// The ops page's files; none when the web app is not built.
    pub web_dir: Option<PathBuf>,
    /// Signs the erasures it records.
    pub signing_key_file: Option<PathBuf>,
    /// Where an erasure deletes the user's uploads.
    pub media: Option<im_gateway::media::MediaBackend>,
}

/// Operator tokens: 43 alphanumerics, ~256 bits.
const TOKEN_LEN: usize = 43;

/// The operator token kept in `path`, made on first use.
pub fn token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        anyhow::ensure!(
            t.len() >= 32,
            "{}: an operator token of 32+ characters",
            path.display()
        );
        return Ok(t);
    }
    let t = crate::cmd::secrets::random(TOKEN_LEN);
    crate::cmd::secrets::write_private(path, &t)?;
    Ok(t)
}

/// The built web app's directory if it holds the ops page.
pub fn web_dir(dir: &Path) -> Option<PathBuf> {
    dir.join("ops.html").is_file().then(|| dir.to_path_buf())
}

pub async fn serve(args: AdminArgs) -> anyhow::Result<()> {
    let admin = Arc::new(Admin {
        client: args.nats.connect("imctl-admin").await?,
        token: token(&args.token_file)?,
        web_dir: web_dir(&args.web_dir),
        signing_key_file: args.signing_key_file.clone(),
        media: args.media.backend(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!(
        "imctl: ops page http://{}/ (operator token in {})",
        listener.local_addr()?,
        args.token_file.display()
    );
    axum::serve(listener, router(admin)).await?;
    Ok(())
}
