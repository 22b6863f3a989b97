//! Per-user subscriptions: one subscription to `im.deliver.<user>` per
//! connected user on this gateway, shared by that user's devices here and
//! dropped when the last one leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use im_schema::v1;
use tokio::sync::{mpsc, Notify};

/// One connected device: its bounded outbound queue and an overflow signal.
#[derive(Clone)]
pub struct Device {
    pub outbound: mpsc::Sender<Arc<v1::Envelope>>,
    pub overflowed: Arc<(AtomicBool, Notify)>,
}

impl Device {
    pub fn has_overflowed(&self) -> bool {
        self.overflowed.0.load(Ordering::SeqCst)
    }

    /// Queues an envelope; a full queue marks the device as too slow.
    pub fn push(&self, env: Arc<v1::Envelope>) -> bool {
        if self.outbound.try_send(env).is_ok() {
            return true;
        }
        self.overflowed.0.store(true, Ordering::SeqCst);
        // Both the reader and the writer of the connection wait on this.
        self.overflowed.1.notify_waiters();
        false
    }
}

struct UserSlot {
    devices: HashMap<u64, Device>,
    task: tokio::task::AbortHandle,
}

pub struct Hub {
    client: async_nats::Client,
    users: Mutex<HashMap<String, UserSlot>>,
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("too many connections for this user ({0})")]
    TooManyDevices(usize),
    #[error("subscribe: {0}")]
    Subscribe(String),
}

impl Hub {
    pub fn new(client: async_nats::Client) -> Arc<Self> {
        Arc::new(Hub {
            client,
            users: Mutex::new(HashMap::new()),
        })
    }

    pub fn device_count(&self, user: &str) -> usize {
        self.users
            .lock()
            .expect("hub")
            .get(user)
            .map_or(0, |s| s.devices.len())
    }

    /// Adds a device; subscribes for the user on their first device here.
    /// `first` is queued to the device before any delivery can be: under
    /// the lock the delivery task needs to find it, after the subscription
    /// is live.
    pub async fn join(
        self: &Arc<Self>,
        user: &str,
        conn_id: u64,
        device: Device,
        per_user_max: usize,
        first: Arc<v1::Envelope>,
    ) -> Result<(), JoinError> {
        {
            let mut users = self.users.lock().expect("hub");
            if let Some(slot) = users.get_mut(user) {
                if slot.devices.len() >= per_user_max {
                    return Err(JoinError::TooManyDevices(per_user_max));
                }
                device.push(first);
                slot.devices.insert(conn_id, device);
                return Ok(());
            }
        }
        let subject = im_streams::subjects::deliver_subject(user)
            .map_err(|e| JoinError::Subscribe(e.to_string()))?;
        let mut sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| JoinError::Subscribe(e.to_string()))?;
        let _ = self.client.flush().await;
        let mut users = self.users.lock().expect("hub");
        device.push(first);
        if let Some(slot) = users.get_mut(user) {
            // Another device subscribed meanwhile: keep theirs.
            slot.devices.insert(conn_id, device);
            return Ok(());
        }
        let hub = Arc::downgrade(self);
        let owner = user.to_string();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Ok(env) = im_schema::decode::<v1::Envelope>(&msg.payload) else {
                    continue;
                };
                let env = Arc::new(env);
                let Some(hub) = hub.upgrade() else { return };
                let devices: Vec<Device> = hub
                    .users
                    .lock()
                    .expect("hub")
                    .get(&owner)
                    .map(|s| s.devices.values().cloned().collect())
                    .unwrap_or_default();
                for d in devices {
                    d.push(env.clone());
                }
            }
        });
        users.insert(
            user.to_string(),
            UserSlot {
                devices: HashMap::from([(conn_id, device)]),
                task: task.abort_handle(),
            },
        );
        Ok(())
    }

    /// Removes a device; unsubscribes when it was the user's last here.
    pub fn leave(&self, user: &str, conn_id: u64) {
        let mut users = self.users.lock().expect("hub");
        if let Some(slot) = users.get_mut(user) {
            slot.devices.remove(&conn_id);
            if slot.devices.is_empty() {
                slot.task.abort();
                users.remove(user);
            }
        }
    }
}
