//! `imctl up`: the embedded default stack. Starts a managed nats-server (the
//! pinned binary) with its JetStream store under the data dir, or uses an
//! external NATS, applies the streams, runs the projector (every projection,
//! every partition, its sled store under the data dir; or a pool of
//! `--projectors N` processes, `projectors.rs`) and the gateway
//! (tokens signed with a secret kept in the data dir), prints where
//! everything is and how to get a token, and stops cleanly on Ctrl-C or
//! SIGTERM. Running it again keeps the data.
//!
//! The managed server runs with authorization on: each component connects
//! as its own NATS user with its own permissions
//! (`im_streams::identities`), passwords generated into the data dir
//! (`nats_identities`). `--no-auth` turns that off.

use std::path::PathBuf;

use std::collections::BTreeMap;

use anyhow::Context;
use im_streams::connect::{NatsArgs, NatsAuth};
use im_streams::identities::Component;
use im_streams::StreamSettings;
use im_testkit::{NatsServer, ServerOptions};

use crate::cmd::nats_identities;

mod content;
mod projectors;
use projectors::Projectors;

/// Environment variables `up` reads (each also a flag).
pub const ENV_DATA_DIR: &str = "IM_DATA_DIR";
pub const ENV_NATS_PORT: &str = "IM_NATS_PORT";
pub const ENV_NATS_URL: &str = "IM_NATS_URL";
pub const ENV_DURABLE: &str = "IM_DURABLE";

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Where the managed server keeps its JetStream store and log.
    #[arg(long, env = ENV_DATA_DIR, default_value = "data", value_parser = crate::cmd::paths::checkout_path)]
    pub data_dir: PathBuf,
    /// Client port of the managed nats-server.
    #[arg(long, env = ENV_NATS_PORT, default_value_t = 4222)]
    pub nats_port: u16,
    /// Use this NATS instead of starting one (e.g. a cluster's servers,
    /// comma-separated).
    #[arg(long, env = ENV_NATS_URL)]
    pub nats_url: Option<String>,
    /// How every component connects to the NATS of `--nats-url`.
    #[command(flatten)]
    pub nats_auth: NatsAuth,
    /// Run the managed server without authorization (every connection may
    /// do anything).
    #[arg(long, env = "IM_NO_AUTH")]
    pub no_auth: bool,
    /// fsync every write before acking it (`sync_interval: always`):
    /// survives power loss, at a large throughput cost.
    #[arg(long, env = ENV_DURABLE)]
    pub durable: bool,
    /// Stream replicas (3 on a cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Address of the gateway (HTTP + WebSocket); port 0 picks a free one.
    #[arg(long, env = "IM_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub gateway_listen: std::net::SocketAddr,
    /// Address of the gateway's `/metrics` (never on the public listener);
    /// port 0 picks a free one.
    #[arg(long, env = "IM_GATEWAY_METRICS_LISTEN", default_value = "127.0.0.1:0")]
    pub gateway_metrics_listen: std::net::SocketAddr,
    /// Address of the projector's `/metrics`, `/healthz` and `/readyz`.
    #[arg(
        long,
        env = "IM_PROJECTOR_METRICS_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub projector_metrics_listen: std::net::SocketAddr,
    /// Projector instances: 1 runs in this process and serves every
    /// partition; 2 or more (at most 8) run as `im-projector` processes
    /// (built beside imctl) in the pool, which takes a killed one's
    /// partitions over within seconds.
    #[arg(long, env = "IM_UP_PROJECTORS", default_value_t = 1)]
    pub projectors: usize,
    /// The gateway's limits: the same flags and variables as `im-gateway`'s.
    #[command(flatten)]
    pub limits: im_gateway::Limits,
    /// Groups with more members than this get notifications, not events.
    #[arg(long, env = "IM_FANOUT_THRESHOLD", default_value_t = im_projectors::DEFAULT_FANOUT_THRESHOLD)]
    pub fanout_threshold: usize,
    /// The built web app the gateway serves at `/` (`scripts/up.sh` builds
    /// it); nothing is served there when the directory does not exist.
    #[arg(long, env = "IM_WEB_DIR", default_value = "clients/web/dist", value_parser = crate::cmd::paths::checkout_path)]
    pub web_dir: PathBuf,
    /// Turn off the development sign-in (`POST /v1/dev/token`: a token for
    /// any user, which the web app's sign-in form asks for).
    #[arg(long, env = "IM_NO_DEV_LOGIN")]
    pub no_dev_login: bool,
    /// Address of the admin API and the ops page (operator token in
    /// `<data-dir>/operator-token`); port 0 picks a free one.
    #[arg(long, env = "IM_ADMIN_LISTEN", default_value = "127.0.0.1:8090")]
    pub admin_listen: std::net::SocketAddr,
    /// Run the notifier (offline notifications) against this push
    /// gateway: https, or http to a loopback address.
    #[arg(long, env = "IM_NOTIFY_URL")]
    pub notify_url: Option<im_notifier::Url>,
    #[arg(long, env = "IM_NOTIFY_FORMAT", value_enum, default_value = "webhook")]
    pub notify_format: im_notifier::webhook::Format,
    /// How much a notification shows: none, sender, or text.
    #[arg(long, env = "IM_NOTIFY_PREVIEW", value_enum, default_value = "sender")]
    pub notify_preview: im_notifier::window::Preview,
    #[arg(long, env = "IM_NOTIFY_DEBOUNCE_MS", default_value_t = im_notifier::config::DEBOUNCE_DEFAULT.as_millis() as u64)]
    pub notify_debounce_ms: u64,
    /// Address of the notifier's `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "IM_NOTIFY_METRICS_LISTEN", default_value = "127.0.0.1:0")]
    pub notify_metrics_listen: std::net::SocketAddr,
    /// Keep message content clear in the log (no key-encryption key). By
    /// default content is encrypted under data keys wrapped by a KEK kept
    /// in `<data dir>/kek` (docs/privacy.md).
    #[arg(long, env = "IM_PLAIN_CONTENT")]
    pub plain_content: bool,
    /// The engine a new projector store is made in: sled (the default) or
    /// fjall (being measured, BENCHMARKS.md).
    #[arg(long, env = "IM_STORE_ENGINE", default_value = "sled")]
    pub store_engine: im_projectors::store::Engine,
    /// Data keys per epoch of this many seconds: the grain of retention.
    #[arg(long, env = "IM_CONTENT_EPOCH_SECS", default_value_t = 86_400)]
    pub content_epoch_secs: u64,
    /// Content older than this many seconds is erased (its epochs' keys
    /// destroyed by a task of this stack); 0 keeps everything.
    #[arg(long, env = "IM_RETENTION_SECS", default_value_t = 0)]
    pub retention_secs: u64,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let limits = args.limits.clone();
    let mut managed = None;
    let identities = match (&args.nats_url, args.no_auth) {
        (None, false) => Some(nats_identities::passwords(&args.data_dir)?),
        _ => None,
    };
    let url = match &args.nats_url {
        Some(url) => url.clone(),
        None => {
            let options = ServerOptions {
                dir: args.data_dir.join("nats"),
                port: args.nats_port,
                sync_always: args.durable,
                auth: identities.as_ref().map(nats_identities::server_auth),
            };
            let server = NatsServer::start_persistent(&options)
                .await
                .context("starting the managed nats-server")?;
            println!(
                "imctl: nats-server {} pid {} (store {}, log {})",
                server.url(),
                server.pid().unwrap_or_default(),
                options.dir.display(),
                server.log_path().display()
            );
            let url = server.url();
            managed = Some(server);
            url
        }
    };
    let result = serve(&url, &args, limits, identities.as_ref()).await;
    if let Some(mut server) = managed {
        println!("imctl: stopping nats-server");
        server.stop();
    }
    result
}

/// Each component's NATS settings: its own identity on the managed
/// server, the given one on an external NATS.
fn nats_of(
    url: &str,
    args: &UpArgs,
    identities: Option<&BTreeMap<Component, String>>,
) -> impl Fn(Component) -> NatsArgs {
    let (url, given) = (url.to_string(), args.nats_auth.clone());
    let identities = identities.cloned();
    move |c| {
        let auth = match &identities {
            Some(p) => NatsAuth::password(c.user(), p[&c].clone()),
            None => given.clone(),
        };
        NatsArgs::new(&url).with_auth(auth)
    }
}

type Serving = tokio::task::JoinHandle<Result<(), im_gateway::GatewayError>>;

async fn serve(
    url: &str,
    args: &UpArgs,
    limits: im_gateway::Limits,
    identities: Option<&BTreeMap<Component, String>>,
) -> anyhow::Result<()> {
    let nats = nats_of(url, args, identities);
    let operator = nats(Component::Operator).connect("imctl-up").await?;
    let js = async_nats::jetstream::new(operator);
    let partitions = apply_streams(&js, args.replicas).await?;
    let kek = content::prepare(&js, args).await?;
    let mut projectors = Projectors::start(&nats(Component::Projector), args, &kek).await?;
    let signing_key = register_signing_key(&js, &args.data_dir).await?;
    let gateway_config = im_gateway::GatewayConfig {
        listen: args.gateway_listen,
        metrics_listen: Some(args.gateway_metrics_listen),
        signing_key_file: Some(signing_key.clone()),
        kek: kek.clone(),
        nats_url: url.to_string(),
        nats_auth: nats(Component::Gateway).auth,
        tokens: im_gateway::auth::TokenConfig {
            hs256_secret: Some(crate::cmd::token::local_secret(&args.data_dir)?),
            ..Default::default()
        },
        limits,
        // The embedded stack keeps media on disk: nothing else to run.
        media: Some(im_gateway::media::MediaBackend::Disk(
            args.data_dir.join("media"),
        )),
        web: im_gateway::http::web::WebConfig {
            dir: args
                .web_dir
                .join("index.html")
                .is_file()
                .then(|| args.web_dir.clone()),
            dev_login: dev_login(args),
        },
    };
    let (mut gateway, stop) =
        start_gateway(&nats(Component::Gateway), gateway_config, &args.web_dir).await?;
    start_admin(&nats(Component::Operator), args, &signing_key).await?;
    let notifier = match &args.notify_url {
        Some(push) => {
            let keys = (signing_key.as_path(), &kek);
            Some(start_notifier(&nats(Component::Notifier), args, push, keys).await?)
        }
        None => None,
    };
    print_hints(url, args, identities, (&signing_key, &kek));
    println!("imctl: ready nats={url} partitions={partitions} (Ctrl-C to stop)");
    loop {
        tokio::select! {
            r = wait_for_shutdown() => break r?,
            r = projectors.ended() => r?,
        }
    }
    println!("imctl: shutting down");
    // The gateway closes its connections (1001) and drains HTTP, bounded.
    let _ = stop.send(());
    let _ = (&mut gateway).await;
    if let Some(n) = notifier {
        n.stop().await;
    }
    // Then the projectors, after the batch in hand.
    projectors.stop().await;
    Ok(())
}

/// The notifier, in this process: its store under the data dir, its
/// webhook secret made there if missing, signing what it writes with the
/// gateway's key.
async fn start_notifier(
    nats: &NatsArgs,
    args: &UpArgs,
    push: &im_notifier::Url,
    (signing_key, kek): (&std::path::Path, &im_streams::content::KekArgs),
) -> anyhow::Result<im_notifier::Notifier> {
    let secret_file = args.data_dir.join("notify-secret");
    let secret = match std::fs::read_to_string(&secret_file) {
        Ok(s) => s.trim().to_string(),
        Err(_) => {
            let s = crate::cmd::secrets::random(32);
            crate::cmd::secrets::write_private(&secret_file, &s)?;
            s
        }
    };
    let config = im_notifier::NotifierConfig {
        instance: im_notifier::config::DEFAULT_INSTANCE.into(),
        data_dir: args.data_dir.join("notifier"),
        url: push.clone(),
        format: args.notify_format,
        secret: secret.into_bytes(),
        ca_file: None,
        preview: args.notify_preview,
        debounce: std::time::Duration::from_millis(args.notify_debounce_ms),
        late_max: im_notifier::config::LATE_MAX_DEFAULT,
        attempts_max: im_notifier::config::ATTEMPTS_MAX_DEFAULT,
        backoff_base: im_notifier::config::BACKOFF_BASE_DEFAULT,
        backoff_max: im_notifier::config::BACKOFF_MAX_DEFAULT,
        request_timeout: im_notifier::config::REQUEST_TIMEOUT_DEFAULT,
        signing_key_file: Some(signing_key.to_path_buf()),
        kek: kek.clone(),
    };
    let client = nats.connect("imctl-up-notifier").await?;
    let notifier = im_notifier::Notifier::start(client, config).await?;
    let listener = tokio::net::TcpListener::bind(args.notify_metrics_listen).await?;
    println!(
        "imctl: notifier metrics http://{}/metrics",
        listener.local_addr()?
    );
    tokio::spawn(im_notifier::metrics::serve(
        listener,
        notifier.stats.clone(),
        notifier.contexts.clone(),
    ));
    println!(
        "imctl: notifier -> {} (secret in {}; imctl notify dead-letters)",
        im_notifier::config::Shown(push.clone()),
        secret_file.display()
    );
    Ok(notifier)
}

/// Applies the streams and buckets, printing what changed; the partitions.
async fn apply_streams(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> anyhow::Result<u32> {
    let settings = StreamSettings {
        replicas,
        ..Default::default()
    };
    let applied = im_streams::apply_streams(js, &settings).await?;
    for report in &applied.reports {
        let what = if report.created {
            "created".to_string()
        } else if report.changes.is_empty() {
            "unchanged".to_string()
        } else {
            format!("updated: {}", report.changes.join(", "))
        };
        println!("imctl: stream {} {what}", report.name);
    }
    Ok(applied.topology.partitions)
}

/// The gateway's signing key, made in the data dir if missing and
/// registered (by this process, the operator) where the auditor reads it.
async fn register_signing_key(
    js: &async_nats::jetstream::Context,
    data_dir: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let path = data_dir.join("event-signing-key");
    let signer = im_streams::signing::EventSigner::load_or_create(&path)?;
    let from = im_streams::signing::register(js, &signer.public()).await?;
    println!(
        "imctl: events signed by key {} (registered in {}, from IM_CONV seq {from})",
        signer.key_id(),
        im_streams::signing::WRITER_KEYS_BUCKET
    );
    Ok(path)
}

/// The gateway on its listener (and `/metrics` on its own), serving until
/// the sender is used or dropped.
async fn start_gateway(
    nats: &NatsArgs,
    config: im_gateway::GatewayConfig,
    web_dir: &std::path::Path,
) -> anyhow::Result<(Serving, tokio::sync::oneshot::Sender<()>)> {
    let (listen, metrics_listen) = (config.listen, config.metrics_listen);
    let web = config.web.clone();
    // Its own connection, as in production: its PubAcks and deliveries
    // never queue behind the projector's consumer traffic.
    let client = nats.connect("imctl-up-gateway").await?;
    let state = im_gateway::AppState::new(config, client)
        .await
        .context("starting the gateway")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(at) = metrics_listen {
        let metrics = tokio::net::TcpListener::bind(at)
            .await
            .with_context(|| format!("binding {at}"))?;
        let metrics_addr = metrics.local_addr()?;
        tokio::spawn(im_gateway::serve_metrics(metrics, state.clone()));
        println!("imctl: gateway metrics http://{metrics_addr}/metrics");
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(im_gateway::serve_until(listener, state, async {
        let _ = stopped.await;
    }));
    println!("imctl: gateway http://{addr} ws://{addr}/v1/ws");
    match (&web.dir, web.dev_login) {
        (Some(_), true) => {
            println!("imctl: chat in a browser: http://{addr}/ (sign in with any user id)")
        }
        (Some(_), false) => println!("imctl: web app http://{addr}/ (sign in with a token)"),
        (None, _) => println!(
            "imctl: no web app in {} (scripts/up.sh builds clients/web; or pass --web-dir)",
            web_dir.display()
        ),
    }
    Ok((gateway, stop))
}

/// Development sign-in (anyone signs in as anyone) on a gateway only this
/// machine reaches; off, with a note, when it listens beyond loopback.
fn dev_login(args: &UpArgs) -> bool {
    if args.no_dev_login {
        return false;
    }
    let local = args.gateway_listen.ip().is_loopback();
    if !local {
        println!(
            "imctl: development sign-in off: the gateway listens on {} (sign in with tokens)",
            args.gateway_listen
        );
    }
    local
}

/// The admin API and the ops page, on the operator's identity.
async fn start_admin(
    nats: &NatsArgs,
    args: &UpArgs,
    signing_key: &std::path::Path,
) -> anyhow::Result<()> {
    let token_file = args.data_dir.join("operator-token");
    let admin = std::sync::Arc::new(crate::cmd::admin::Admin {
        client: nats.connect("imctl-admin").await?,
        token: crate::cmd::admin::token(&token_file)?,
        web_dir: crate::cmd::admin::web_dir(&args.web_dir),
        signing_key_file: Some(signing_key.to_path_buf()),
        media: Some(im_gateway::media::MediaBackend::Disk(
            args.data_dir.join("media"),
        )),
    });
    // The chat stack is useful without it: a taken port is a note, not a failure.
    let listener = match tokio::net::TcpListener::bind(args.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            println!(
                "imctl: no ops page: binding {}: {e} (pick another with --admin-listen)",
                args.admin_listen
            );
            return Ok(());
        }
    };
    println!(
        "imctl: ops page http://{}/ (operator token: cat {})",
        listener.local_addr()?,
        token_file.display()
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, crate::cmd::admin::router(admin)).await {
            tracing::error!(error = %e, "admin api stopped");
        }
    });
    Ok(())
}

/// How to get a token, start a second gateway, and act as the operator or
/// the auditor.
fn print_hints(
    url: &str,
    args: &UpArgs,
    identities: Option<&BTreeMap<Component, String>>,
    (signing_key, kek): (&std::path::Path, &im_streams::content::KekArgs),
) {
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "imctl".into());
    let data = args.data_dir.display();
    println!("imctl: tokens: {me} token issue --user alice --data-dir {data}");
    let load = |c: Component| match identities {
        Some(_) => format!(
            "set -a; . {}; set +a; ",
            nats_identities::env_file(&args.data_dir, c).display()
        ),
        None => String::new(),
    };
    let kek_file = kek
        .kek_file
        .as_ref()
        .map(|f| format!("IM_KEK_FILE={} ", f.display()))
        .unwrap_or_default();
    println!(
        "imctl: a second gateway: {}IM_NATS_URL={url} IM_GATEWAY_LISTEN={} \
         IM_JWT_HS256_SECRET=$(cat {data}/{}) IM_EVENT_SIGNING_KEY_FILE={} \
         IM_MEDIA_DIR={} {kek_file}{}",
        load(Component::Gateway),
        second_listen(args.gateway_listen),
        crate::cmd::token::SECRET_FILE,
        signing_key.display(),
        args.data_dir.join("media").display(),
        sibling_gateway()
    );
    if identities.is_some() {
        println!(
            "imctl: NATS authorization on: imctl's commands as the operator: {}",
            load(Component::Operator)
        );
        println!(
            "imctl: im-replay as the auditor (reads only): {}",
            load(Component::Auditor)
        );
    }
}

/// Where a second gateway beside the first may listen: the port after the
/// first's when it is free, else any free one (free when printed).
fn second_listen(first: std::net::SocketAddr) -> std::net::SocketAddr {
    let any = std::net::SocketAddr::new(first.ip(), 0);
    let next = match first.port() {
        0 | u16::MAX => any,
        p => std::net::SocketAddr::new(first.ip(), p + 1),
    };
    [next, any]
        .into_iter()
        .find_map(|at| std::net::TcpListener::bind(at).ok()?.local_addr().ok())
        .unwrap_or(next)
}

/// How to run `im-gateway`: the binary beside this `imctl` when built
/// (`scripts/up.sh` builds both), else the command that builds and runs it.
fn sibling_gateway() -> String {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join("im-gateway")))
        .filter(|p| p.is_file());
    match beside {
        Some(path) => path.display().to_string(),
        None => "cargo run --release -p im-gateway".into(),
    }
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
