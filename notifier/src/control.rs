//! The operator's subject, `im.notify.<instance>.q`: the dead letters,
//! listed or sent again (`imctl notify dead-letters [--replay]`). The
//! decider answers, since it owns the outbox's sequence.

use std::time::Duration;

use futures::StreamExt;
use im_schema::v1;
use tokio::sync::{mpsc, oneshot};

use crate::decide::Control;

/// How long a command waits for the decider (between two of its rounds).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The notifier instance's control subject.
pub fn control_subject(instance: &str) -> String {
    format!("im.notify.{instance}.q")
}

pub async fn serve(
    client: async_nats::Client,
    instance: String,
    to_decider: mpsc::Sender<Control>,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(control_subject(&instance)).await?;
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let answer = match im_schema::decode::<v1::NotifyControl>(&msg.payload) {
            Ok(cmd) => ask(&to_decider, cmd).await,
            Err(e) => v1::NotifyControlResult {
                error: format!("undecodable command: {e}"),
                ..Default::default()
            },
        };
        let _ = client
            .publish(reply, im_schema::encode(&answer).into())
            .await;
    }
    Ok(())
}

async fn ask(
    to_decider: &mpsc::Sender<Control>,
    cmd: v1::NotifyControl,
) -> v1::NotifyControlResult {
    let (tx, rx) = oneshot::channel();
    let failed = |error: &str| v1::NotifyControlResult {
        error: error.to_string(),
        ..Default::default()
    };
    if to_decider.send((cmd, tx)).await.is_err() {
        return failed("the notifier is stopping");
    }
    match tokio::time::timeout(CONTROL_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        _ => failed("the notifier did not answer in time"),
    }
}
