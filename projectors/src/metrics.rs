//! Prometheus text for each projection: checkpoint, lag (stream last seq −
//! checkpoint; for an instance owning some partitions an upper bound, since
//! the stream's last event may be in another partition), events applied and
//! dead letters. Served on a small HTTP listener.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use im_streams::definitions::{CONV_STREAM, RCPT_STREAM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::query::QueryContext;
use crate::runner::{checkpoint, Source};

/// Scrapes served at once; more wait in the listen backlog.
const SCRAPES_INFLIGHT_MAX: usize = 8;
/// A scraper that sends nothing for this long is dropped.
const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the process itself counts, whichever instance runs.
fn render_process() -> String {
    format!(
        "# TYPE im_projector_storage_errors_total counter\nim_projector_storage_errors_total {}\n",
        crate::projector::STORAGE_ERRORS.load(Relaxed)
    )
}

pub fn render(ctx: &QueryContext, conv_last: u64, rcpt_last: u64) -> String {
    let mut out = render_process();
    let _ = writeln!(out, "# TYPE im_projection_checkpoint gauge");
    let _ = writeln!(out, "# TYPE im_projection_lag gauge");
    let _ = writeln!(out, "# TYPE im_projection_events_applied_total counter");
    let _ = writeln!(out, "# TYPE im_projection_dead_letters_total counter");
    for p in &ctx.projections {
        let name = p.projection.name();
        let mut sources = vec![(Source::Conv, CONV_STREAM, conv_last)];
        if p.projection.reads_receipts() {
            sources.push((Source::Rcpt, RCPT_STREAM, rcpt_last));
        }
        for (source, stream, last) in sources {
            let cp = checkpoint(p.ks().as_ref(), source).unwrap_or(0);
            let labels = format!(
                "projection=\"{name}\",stream=\"{stream}\",instance=\"{}\"",
                ctx.instance
            );
            let _ = writeln!(out, "im_projection_checkpoint{{{labels}}} {cp}");
            let _ = writeln!(
                out,
                "im_projection_lag{{{labels}}} {}",
                last.saturating_sub(cp)
            );
        }
        let labels = format!("projection=\"{name}\",instance=\"{}\"", ctx.instance);
        let _ = writeln!(
            out,
            "im_projection_events_applied_total{{{labels}}} {}",
            p.events_applied.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "im_projection_dead_letters_total{{{labels}}} {}",
            p.dead_letters.load(Relaxed)
        );
    }
    out
}

async fn last_seq(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Answers every HTTP request on the listener with the metrics text of the
/// instance running now (`current`: it changes when a supervised instance
/// starts again).
pub async fn serve(
    listener: tokio::net::TcpListener,
    current: tokio::sync::watch::Receiver<Option<Arc<QueryContext>>>,
    js: async_nats::jetstream::Context,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(SCRAPES_INFLIGHT_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let (ctx, js) = (current.borrow().clone(), js.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 1024];
            // Only the request line matters; the rest is not read.
            if tokio::time::timeout(SCRAPE_READ_TIMEOUT, sock.read(&mut buf))
                .await
                .is_err()
            {
                return;
            }
            let body = match ctx {
                Some(ctx) => render(
                    &ctx,
                    last_seq(&js, CONV_STREAM).await,
                    last_seq(&js, RCPT_STREAM).await,
                ),
                // Between a storage error and the restart.
                None => render_process(),
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
