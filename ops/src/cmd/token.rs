//! `imctl token issue --user U [--ttl SECS]`: a development JWT (HS256)
//! signed with the local stack's secret, for clients of `imctl up`.
//! `imctl token check JWT`: whether a gateway configured as this
//! environment says (`IM_JWT_*`, the local stack's secret otherwise) takes
//! the token, and if not, why.

use std::path::{Path, PathBuf};

/// The file under the data dir holding the local stack's HS256 secret.
pub const SECRET_FILE: &str = "dev-jwt-secret";

/// Length of a generated secret (alphanumeric): ~285 bits.
const SECRET_LEN: usize = 48;

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    #[arg(long)]
    pub user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl: u64,
    /// The data dir of `imctl up` (where the secret is kept).
    #[arg(long, env = crate::cmd::up::ENV_DATA_DIR, default_value = "data", value_parser = crate::cmd::paths::checkout_path)]
    pub data_dir: PathBuf,
}

/// The local stack's secret: `IM_JWT_HS256_SECRET` if set, else the one in
/// the data dir, created on first use.
pub fn local_secret(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::env::var("IM_JWT_HS256_SECRET") {
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let path = data_dir.join(SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        return Ok(s.trim().to_string());
    }
    let secret = crate::cmd::secrets::random(SECRET_LEN);
    crate::cmd::secrets::write_private(&path, &secret)?;
    Ok(secret)
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The token (a JWT).
    pub token: String,
    /// The data dir of `imctl up`, whose secret is used when no
    /// `IM_JWT_*` key is set.
    #[arg(long, env = crate::cmd::up::ENV_DATA_DIR, default_value = "data", value_parser = crate::cmd::paths::checkout_path)]
    pub data_dir: PathBuf,
    /// The keys and rules the gateway would check the token with.
    #[command(flatten)]
    pub tokens: im_gateway::config::TokenArgs,
}

/// Prints the user the token proves, or fails with the reason it is
/// refused (exit 1).
pub async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let mut config = args.tokens.config().map_err(anyhow::Error::msg)?;
    if config.validate().is_err() {
        config.hs256_secret = Some(stack_secret(&args.data_dir)?);
    }
    let verifier = im_gateway::auth::Verifier::new(&config)?;
    match verifier.verify(args.token.trim()).await {
        Ok(user) => {
            println!("ok: user {user}");
            Ok(())
        }
        Err(why) => Err(im_streams::exit::Found(format!("refused: {why}")).into()),
    }
}

/// The running stack's secret: `IM_JWT_HS256_SECRET` if set, else the
/// one `imctl up` keeps in the data dir. Never made here: a new one would
/// sign tokens no running stack takes.
pub fn stack_secret(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::env::var("IM_JWT_HS256_SECRET") {
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let path = data_dir.join(SECRET_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "no {SECRET_FILE} in {}: `imctl up` makes it in its data dir; pass that dir \
             (--data-dir or {}) or set IM_JWT_HS256_SECRET",
            data_dir.display(),
            crate::cmd::up::ENV_DATA_DIR
        ),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

pub fn issue(args: IssueArgs) -> anyhow::Result<()> {
    im_streams::ids::validate_id(im_streams::ids::IdKind::User, &args.user)?;
    let secret = stack_secret(&args.data_dir)?;
    println!(
        "{}",
        im_gateway::auth::issue_hs256(&secret, &args.user, args.ttl)
    );
    Ok(())
}
