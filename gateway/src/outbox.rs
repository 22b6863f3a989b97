//! One connection's outbound queue: deliveries (the projector's bytes,
//! shared by every device they go to) and the connection's own replies, in
//! the order they came. Bounded (`Limits::outbound_queue_max`: a client
//! that lets it fill is closed with 4008 and resyncs), and it holds no
//! allocation while empty, so an idle connection costs little.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures::task::AtomicWaker;
use im_schema::v1;

/// One delivery as it arrived, and its JSON rendering, made the first time
/// a JSON device needs it and shared by the others.
pub struct Delivery {
    pub proto: Bytes,
    json: OnceLock<Option<Utf8Bytes>>,
    /// When it reached the gateway (`im_gateway_delivery_queue_seconds`).
    pub received: std::time::Instant,
}

impl Delivery {
    pub fn new(proto: Bytes) -> Self {
        Delivery {
            proto,
            json: OnceLock::new(),
            received: std::time::Instant::now(),
        }
    }

    /// None when the bytes are not an envelope (never from our projector).
    pub fn json(&self) -> Option<Utf8Bytes> {
        self.json
            .get_or_init(|| match im_schema::decode::<v1::Envelope>(&self.proto) {
                Ok(env) => Some(im_schema::to_json(&env).into()),
                Err(e) => {
                    tracing::warn!(error = %e, "an undecodable delivery: not sent to JSON devices");
                    None
                }
            })
            .clone()
    }
}

pub enum Outbound {
    Delivery(Arc<Delivery>),
    Reply(Box<v1::Envelope>),
}

impl Outbound {
    pub fn reply(env: v1::Envelope) -> Self {
        Outbound::Reply(Box::new(env))
    }
}

/// The queue overflowed: the client fell behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Overflowed;

pub struct Outbox {
    queue: Mutex<Queue>,
    /// The connection's task, woken by a push.
    waker: AtomicWaker,
    max: usize,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    overflowed: bool,
}

impl Outbox {
    pub fn new(max: usize) -> Self {
        Outbox {
            queue: Mutex::default(),
            waker: AtomicWaker::new(),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an item; false once the queue has overflowed (it stays so).
    pub fn push(&self, item: Outbound) -> bool {
        let ok = {
            let mut q = self.lock();
            if q.overflowed {
                return false;
            }
            if q.items.len() >= self.max {
                q.items = VecDeque::new();
                q.overflowed = true;
                false
            } else {
                q.items.push_back(item);
                true
            }
        };
        self.waker.wake();
        ok
    }

    pub fn has_overflowed(&self) -> bool {
        self.lock().overflowed
    }

    /// Ready once the queue has overflowed; the task is woken when it does.
    pub fn poll_overflow(&self, cx: &mut Context<'_>) -> Poll<Overflowed> {
        self.waker.register(cx.waker());
        if self.has_overflowed() {
            Poll::Ready(Overflowed)
        } else {
            Poll::Pending
        }
    }

    /// Moves up to `max` queued items into `into`; Pending (the task to be
    /// woken by the next push) when there are none.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Outbound>,
        max: usize,
    ) -> Poll<Result<(), Overflowed>> {
        self.waker.register(cx.waker());
        let mut q = self.lock();
        if q.overflowed {
            return Poll::Ready(Err(Overflowed));
        }
        if q.items.is_empty() {
            return Poll::Pending;
        }
        let n = q.items.len().min(max);
        into.extend(q.items.drain(..n));
        if q.items.is_empty() {
            // Back to no allocation at all while idle.
            q.items = VecDeque::new();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(o: &Outbox, into: &mut VecDeque<Outbound>, max: usize) -> Poll<Result<(), Overflowed>> {
        let waker = futures::task::noop_waker();
        o.poll_drain(&mut Context::from_waker(&waker), into, max)
    }

    #[test]
    fn drains_in_order_in_batches_and_overflow_sticks() {
        let o = Outbox::new(3);
        let mut got = VecDeque::new();
        assert!(poll(&o, &mut got, 2).is_pending());
        for i in 0..3u8 {
            assert!(o.push(Outbound::Delivery(Arc::new(Delivery::new(vec![i].into())))));
        }
        assert_eq!(poll(&o, &mut got, 2), Poll::Ready(Ok(())));
        assert_eq!(got.len(), 2);
        assert_eq!(poll(&o, &mut got, 2), Poll::Ready(Ok(())));
        let firsts: Vec<u8> = got
            .iter()
            .map(|g| match g {
                Outbound::Delivery(d) => d.proto[0],
                Outbound::Reply(_) => 99,
            })
            .collect();
        assert_eq!(firsts, vec![0, 1, 2]);
        for _ in 0..3 {
            assert!(o.push(Outbound::reply(v1::Envelope::default())));
        }
        assert!(!o.push(Outbound::reply(v1::Envelope::default())));
        assert!(o.has_overflowed());
        assert_eq!(poll(&o, &mut got, 2), Poll::Ready(Err(Overflowed)));
        assert!(!o.push(Outbound::reply(v1::Envelope::default())));
    }

    #[test]
    fn a_delivery_is_rendered_to_json_once() {
        let env = v1::Envelope {
            header: None,
            payload: Some(v1::envelope::Payload::Heartbeat(v1::Heartbeat {
                client_time_ms: 5,
            })),
        };
        let d = Delivery::new(im_schema::encode(&env).into());
        let a = d.json().unwrap();
        let b = d.json().unwrap();
        assert_eq!(
            a.as_str().as_ptr(),
            b.as_str().as_ptr(),
            "one rendering, shared"
        );
        assert_eq!(
            im_schema::from_json::<v1::Envelope>(a.as_str()).unwrap(),
            env
        );
        assert!(Delivery::new(Bytes::from_static(b"\xff\xff"))
            .json()
            .is_none());
    }
}
