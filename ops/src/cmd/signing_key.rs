//! `imctl signing-key register --key-file F`: a gateway's event signing key
//! (created in F when missing, readable by its owner only) registered in
//! `im_writer_keys`, where `im-replay verify` reads it. Run as the
//! operator; give the same file to the gateway (`IM_EVENT_SIGNING_KEY_FILE`).

use std::path::PathBuf;

use im_streams::signing::{register as register_key, EventSigner, WRITER_KEYS_BUCKET};

#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The seed file (base64url of 32 bytes); created when missing.
    #[arg(long)]
    pub key_file: PathBuf,
    #[command(flatten)]
    pub nats: im_streams::connect::NatsArgs,
}

pub async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let signer = EventSigner::load_or_create(&args.key_file)?;
    let js = async_nats::jetstream::new(args.nats.connect("imctl").await?);
    let from = register_key(&js, &signer.public()).await?;
    println!(
        "key {} registered in {WRITER_KEYS_BUCKET}: events from IM_CONV seq {from} on must carry its signature",
        signer.key_id()
    );
    Ok(())
}
