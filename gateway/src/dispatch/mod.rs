//! Deliveries to this gateway's devices. One NATS connection of its own
//! holds one subscription to `im.deliver.<user>` per user connected here
//! (so the server sends a gateway only its users' deliveries), and routes
//! each message by subject through one map to the user's devices' outboxes:
//! an idle user costs a map entry, not a subscription channel and a task.
//! The bytes on the subject are the encoded envelope the projector made
//! once; they go to every device as they are. A large group's deliveries
//! come once on its group subject, subscribed while one of its members is
//! connected here, and go to those members (`groups.rs`).

mod asker;
mod conn;
mod groups;
mod handshake;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use im_schema::v1::{self, envelope::Payload};
use tokio::sync::{mpsc, oneshot};

use im_streams::connect::NatsAuth;
use im_streams::subjects::DeliveryKind;

use crate::outbox::{Delivery, Outbound, Outbox};
use handshake::Credentials;

pub use asker::GroupQueries;

/// Subscription changes and PINGs waiting to be written: a burst of
/// connects (20,000 at a gateway's start) fits; past it a connect is
/// refused (`Busy`) rather than queued without end.
const COMMANDS_QUEUED_MAX: usize = 32 * 1024;

/// How long a connect waits for its subscription to be live on the server.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) enum Command {
    Sub { subject: String, sid: u64 },
    Unsub(u64),
    Ping(oneshot::Sender<()>),
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("too many connections for this user ({0})")]
    TooManyDevices(usize),
    #[error("the gateway is busy subscribing: try again")]
    Busy,
    #[error("no subscription within {SUBSCRIBE_TIMEOUT:?}: NATS is unavailable")]
    Unavailable,
    #[error("{0}")]
    BadUser(#[from] im_streams::ids::IdError),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Servers(#[from] im_streams::StreamsError),
    #[error("the delivery connection's credentials: {what}")]
    Credentials {
        what: String,
        #[source]
        source: im_streams::error::BoxError,
    },
}

impl StartError {
    /// The credential `what` that could not be used, and why.
    pub fn credentials(
        what: impl Into<String>,
        source: impl Into<im_streams::error::BoxError>,
    ) -> Self {
        StartError::Credentials {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Whether an ephemeral notice is one (typing, presence, a profile), not an event a
/// gateway's identity could otherwise pass off as the projector's.
fn is_notice(payload: &[u8]) -> bool {
    matches!(
        im_schema::decode::<v1::Envelope>(payload).map(|e| e.payload),
        Ok(Some(
            Payload::TypingNotice(_) | Payload::Presence(_) | Payload::Profile(_)
        ))
    )
}

/// The conversation of a large group's delivery (`Deliver.group`), if it is one.
fn group_of(payload: &[u8]) -> Option<Box<str>> {
    match im_schema::decode::<v1::Envelope>(payload).map(|e| e.payload) {
        Ok(Some(Payload::Deliver(d))) if d.group => Some(d.conversation_id.into()),
        _ => None,
    }
}

/// A notification: "page `conv`'s history up to `conv_seq`".
fn notification(conv: &str, conv_seq: u64, position: u64) -> Arc<Delivery> {
    let env = v1::Envelope {
        header: None,
        payload: Some(Payload::Deliver(v1::Deliver {
            conversation_id: conv.to_string(),
            conv_seq,
            stream_seq: position,
            group: true,
            ..Default::default()
        })),
    };
    Arc::new(Delivery::new(im_schema::encode(&env).into()))
}

/// Hands out the next subscription ids of a route map.
fn sid_counter(next: &mut u64) -> impl FnMut() -> u64 + '_ {
    move || {
        *next += 1;
        *next
    }
}

/// A subscription change written straight to the connection (from its own
/// task, which is routing).
fn write_line(out: &mut Vec<u8>, command: Command) {
    match command {
        Command::Sub { subject, sid } => wire::sub_line(out, &subject, sid),
        Command::Unsub(sid) => wire::unsub_line(out, sid),
        Command::Ping(_) => {}
    }
}

/// A device connected here: its connection id, its device id, its outbox.
type Device = (u64, Box<str>, Arc<Outbox>);

struct Route {
    sid: u64,
    devices: Vec<Device>,
    /// Connects waiting for the subscription to be live: the route stays
    /// (and subscribed) while any does.
    joining: u32,
}

/// Who is connected here, by user.
#[derive(Default)]
pub(crate) struct Routes {
    inner: Mutex<RouteMap>,
    /// Whether the dispatcher's connection is up (for `/readyz`).
    connected: AtomicBool,
    /// Where group-state asks go (`asker.rs`); none in unit tests.
    asks: Option<mpsc::Sender<Ask>>,
}

/// A group-state question for the projector: which of `users` are members
/// of `conv`.
pub(crate) type Ask = (Box<str>, Vec<Box<str>>);

/// Group asks waiting for the asker: a burst of joins into big groups fits
/// (asks of one group are one at a time); past it an ask is dropped and
/// its users get that group's live deliveries only after it changes or
/// they reconnect (logged).
const ASKS_QUEUED_MAX: usize = 4 * 1024;

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Routed {
    /// To the devices of its user here (maybe none right now).
    Routed,
    /// Its subscription is no route's: to be ended.
    Stale,
}

#[derive(Default)]
struct RouteMap {
    users: HashMap<Box<str>, Route>,
    /// Large groups with a member connected here.
    groups: groups::Groups,
    next_sid: u64,
    /// The last delivery routed. The projector publishes one event's bytes
    /// to each member in a row, so an equal payload reuses it: one JSON
    /// rendering per event per gateway, not per member.
    last: Option<Arc<Delivery>>,
    /// The large group `last` is a membership change of, if it is one.
    last_group: Option<Box<str>>,
}

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteMap> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whether the connection is up; whether it was.
    fn set_connected(&self, up: bool) -> bool {
        self.connected.swap(up, Relaxed)
    }

    /// A delivery to everyone of its user connected here, if it came on
    /// that user's current subscription.
    fn route(&self, subject: &str, sid: u64, payload: Bytes, out: &mut Vec<u8>) -> Routed {
        if let Some(conv) = im_streams::subjects::conv_of_group_subject(subject) {
            return self.route_group(conv, sid, payload, out);
        }
        let Some((user, kind)) = im_streams::subjects::user_of_deliver_subject(subject) else {
            return Routed::Stale;
        };
        if kind == DeliveryKind::Notice && !is_notice(&payload) {
            // Gateways publish notices; only the projector publishes events.
            tracing::warn!(subject, "dropped a notice that is not one");
            return Routed::Routed;
        }
        let mut map = self.lock();
        let map = &mut *map;
        let Some(route) = map.users.get(user).filter(|r| r.sid == sid) else {
            return Routed::Stale;
        };
        let fresh = !matches!(&map.last, Some(last) if last.proto == payload);
        if fresh {
            map.last = Some(Arc::new(Delivery::new(payload)));
            map.last_group = group_of(&map.last.as_ref().expect("set").proto);
        }
        let delivery = map.last.clone().expect("set");
        for (_, _, outbox) in &route.devices {
            outbox.push(Outbound::Delivery(delivery.clone()));
        }
        // Their own copy of a large group's membership change: the group's
        // deliveries are to reach them here from now on.
        if let Some(conv) = map.last_group.clone() {
            let steps = {
                let mut next_sid = sid_counter(&mut map.next_sid);
                map.groups.joined(user, &conv, &mut next_sid)
            };
            self.apply(map, steps, &mut |c| write_line(out, c));
        }
        Routed::Routed
    }

    /// A large group's delivery: to its members connected here, as the
    /// group's state says (`groups.rs`).
    fn route_group(&self, conv: &str, sid: u64, payload: Bytes, out: &mut Vec<u8>) -> Routed {
        let mut guard = self.lock();
        let map = &mut *guard;
        if map.groups.sid(conv) != Some(sid) {
            return Routed::Stale;
        }
        let Ok(Some(Payload::Deliver(d))) =
            im_schema::decode::<v1::Envelope>(&payload).map(|e| e.payload)
        else {
            tracing::warn!(conv, "dropped a group delivery that is not one");
            return Routed::Routed;
        };
        let users = &map.users;
        let (to, steps) = map
            .groups
            .delivery(conv, &groups::GroupDelivery::of(&d), &|u| {
                users.contains_key(u)
            });
        if !to.is_empty() {
            let delivery = Arc::new(Delivery::new(payload));
            for user in &to {
                for (_, _, outbox) in map.users.get(user).map_or(&[][..], |r| &r.devices) {
                    outbox.push(Outbound::Delivery(delivery.clone()));
                }
            }
        }
        self.apply(map, steps, &mut |c| write_line(out, c));
        Routed::Routed
    }

    /// Carries out the group steps: (un)subscriptions through `command`,
    /// asks to the asker, notifications to the devices.
    fn apply(
        &self,
        map: &mut RouteMap,
        steps: Vec<groups::Step>,
        command: &mut dyn FnMut(Command),
    ) {
        for step in steps {
            match step {
                groups::Step::Subscribe { conv, sid } => {
                    if let Ok(subject) = im_streams::subjects::group_subject(&conv) {
                        command(Command::Sub { subject, sid });
                    }
                }
                groups::Step::Unsubscribe { sid } => command(Command::Unsub(sid)),
                groups::Step::Ask { conv, users } => {
                    let sent = self
                        .asks
                        .as_ref()
                        .map(|a| a.try_send((conv.clone(), users)));
                    if let Some(Err(_)) = sent {
                        // Asked again at the group's next delivery or join.
                        tracing::warn!(conv = &*conv, "group ask dropped: the asker is behind");
                        map.groups.ask_failed(&conv);
                    }
                }
                groups::Step::Notify {
                    conv,
                    users,
                    conv_seq,
                    position,
                } => {
                    let note = notification(&conv, conv_seq, position);
                    for user in users {
                        for (_, _, outbox) in map.users.get(&user).map_or(&[][..], |r| &r.devices) {
                            outbox.push(Outbound::Delivery(note.clone()));
                        }
                    }
                }
            }
        }
    }

    /// The asker's answer for `conv` (None: the ask failed for good, and
    /// those asked wait for the group's next delivery or join).
    pub(crate) fn answered(
        &self,
        conv: &str,
        answer: Option<&v1::GroupState>,
        command: &mut dyn FnMut(Command),
    ) {
        let mut guard = self.lock();
        let map = &mut *guard;
        let Some(answer) = answer else {
            map.groups.ask_failed(conv);
            return;
        };
        let steps = map.groups.answered(conv, Some(answer));
        self.apply(map, steps, command);
    }

    /// A user connecting here, a member of these large groups.
    pub(crate) fn connected_to_groups(
        &self,
        user: &str,
        groups: &[v1::GroupState],
        command: &mut dyn FnMut(Command),
    ) {
        let mut guard = self.lock();
        let map = &mut *guard;
        for g in groups {
            let steps = {
                let mut next_sid = sid_counter(&mut map.next_sid);
                map.groups.connected(user, g, &mut next_sid)
            };
            self.apply(map, steps, command);
        }
    }

    /// After a reconnect, with every subscription live again: deliveries
    /// published meanwhile reached no one here, so every device gets a new
    /// `Connected` ("sync now", as after connecting).
    fn resubscribed(&self) {
        let map = self.lock();
        let now = crate::cmd::heartbeat::now_ms();
        for (user, route) in &map.users {
            for (_, device, outbox) in &route.devices {
                let connected = v1::Connected {
                    user_id: user.to_string(),
                    device_id: device.to_string(),
                    server_time_ms: now,
                };
                outbox.push(Outbound::reply(crate::cmd::reply(Payload::Connected(
                    connected,
                ))));
            }
        }
        tracing::info!(
            users = map.users.len(),
            groups = map.groups.len(),
            "deliveries resumed: devices told to sync"
        );
        let mut map = map;
        let map = &mut *map;
        let steps = map.groups.resubscribed();
        self.apply(map, steps, &mut |_| {});
    }

    /// Every subscription, as the lines that make them (after a reconnect).
    fn subscriptions(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let map = self.lock();
        for (user, route) in &map.users {
            if let Ok(subject) = im_streams::subjects::deliveries_of(user) {
                wire::sub_line(&mut out, &subject, route.sid);
            }
        }
        for (conv, sid) in map.groups.subscriptions() {
            if let Ok(subject) = im_streams::subjects::group_subject(conv) {
                wire::sub_line(&mut out, &subject, sid);
            }
        }
        out
    }
}

/// A join waiting for its subscription; dropped before it ends (its future
/// cancelled), it stops counting and lets an unused route go.
struct Joining<'a> {
    dispatcher: &'a Dispatcher,
    user: &'a str,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        let mut map = self.dispatcher.routes.lock();
        if let Some(route) = map.users.get_mut(self.user) {
            route.joining -= 1;
        }
        self.dispatcher.drop_if_unused(&mut map, self.user);
    }
}

pub struct Dispatcher {
    routes: Arc<Routes>,
    commands: mpsc::Sender<Command>,
    task: tokio::task::AbortHandle,
    asker: Option<tokio::task::AbortHandle>,
    queries: Option<GroupQueries>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(asker) = &self.asker {
            asker.abort();
        }
    }
}

impl Dispatcher {
    /// Starts the connection (to any server of the comma-separated list;
    /// connecting goes on in the background).
    /// `queries` reach the projectors about large groups (None: no large
    /// group is delivered here, for a dispatcher on its own).
    pub fn start(
        servers: &str,
        auth: &NatsAuth,
        queries: Option<GroupQueries>,
    ) -> Result<Arc<Self>, StartError> {
        let servers = im_streams::connect::parse_servers(servers)?;
        let credentials = Credentials::of(auth)?;
        let (asks, asks_rx) = mpsc::channel(ASKS_QUEUED_MAX);
        let routes = Arc::new(Routes {
            asks: queries.is_some().then_some(asks),
            ..Default::default()
        });
        let (commands, rx) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let task = tokio::spawn(conn::run(servers, credentials, routes.clone(), rx)).abort_handle();
        let asker = queries.clone().map(|q| {
            tokio::spawn(asker::run(routes.clone(), commands.clone(), q, asks_rx)).abort_handle()
        });
        Ok(Arc::new(Dispatcher {
            routes,
            commands,
            task,
            asker,
            queries,
        }))
    }

    /// Whether its connection is up.
    pub fn is_connected(&self) -> bool {
        self.routes.connected.load(Relaxed)
    }

    pub fn device_count(&self, user: &str) -> usize {
        self.routes
            .lock()
            .users
            .get(user)
            .map_or(0, |r| r.devices.len())
    }

    /// Adds a device once its user's subscription is live on the server;
    /// `first` is queued to it before any delivery.
    pub async fn join(
        &self,
        user: &str,
        (conn_id, device): (u64, &str),
        outbox: Arc<Outbox>,
        per_user_max: usize,
        first: Outbound,
    ) -> Result<(), JoinError> {
        let subject = im_streams::subjects::deliveries_of(user)?;
        let first_here;
        {
            let mut map = self.routes.lock();
            let sid = map.next_sid + 1;
            match map.users.get_mut(user) {
                Some(r) if r.devices.len() + r.joining as usize >= per_user_max => {
                    return Err(JoinError::TooManyDevices(per_user_max))
                }
                Some(r) => {
                    r.joining += 1;
                    first_here = false;
                }
                None => {
                    first_here = true;
                    // Under the lock, so SUB and UNSUB reach the server in
                    // the order the map changed.
                    self.commands
                        .try_send(Command::Sub { subject, sid })
                        .map_err(|_| JoinError::Busy)?;
                    map.next_sid = sid;
                    let route = Route {
                        sid,
                        devices: Vec::new(),
                        joining: 1,
                    };
                    map.users.insert(user.into(), route);
                }
            }
        }
        // Counted as joining until it ends, even if this future is dropped
        // while it waits.
        let joining = Joining {
            dispatcher: self,
            user,
        };
        // Its large groups are joined before `Connected`: a sync after it
        // covers what they delivered before (I12).
        let groups_live = match (first_here, &self.queries) {
            (true, Some(queries)) => self.join_groups(user, queries).await,
            _ => true,
        };
        // The PONG to a PING sent after the SUB: the server has it.
        let (tx, rx) = oneshot::channel();
        let live = groups_live
            && match self.commands.try_send(Command::Ping(tx)) {
                Ok(()) => matches!(
                    tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx).await,
                    Ok(Ok(()))
                ),
                Err(_) => false,
            };
        let mut map = self.routes.lock();
        std::mem::forget(joining);
        let route = map.users.get_mut(user).expect("a joining route stays");
        route.joining -= 1;
        if live {
            outbox.push(first);
            route.devices.push((conn_id, device.into(), outbox));
            return Ok(());
        }
        self.drop_if_unused(&mut map, user);
        Err(JoinError::Unavailable)
    }

    /// Joins `user`'s large groups: the group subscriptions that are new
    /// here are queued even when the command queue is full for a while
    /// (up to `SUBSCRIBE_TIMEOUT`): one dropped would leave the gateway
    /// sure of a subscription the server never got, and the group's
    /// members here without its deliveries. False when one could not be
    /// queued in time (the connect fails, and its `left` unsubscribes).
    async fn join_groups(&self, user: &str, queries: &GroupQueries) -> bool {
        let groups = queries.groups_of(user).await;
        let mut commands = Vec::new();
        self.routes
            .connected_to_groups(user, &groups, &mut |c| commands.push(c));
        for c in commands {
            let queued = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.commands.send(c)).await;
            if !matches!(queued, Ok(Ok(()))) {
                tracing::warn!(
                    user,
                    "group subscription not queued in time: the connect fails"
                );
                return false;
            }
        }
        true
    }

    /// Removes a device; the user's subscription goes with their last one.
    pub fn leave(&self, user: &str, conn_id: u64) {
        let mut map = self.routes.lock();
        if let Some(route) = map.users.get_mut(user) {
            route.devices.retain(|(id, _, _)| *id != conn_id);
            self.drop_if_unused(&mut map, user);
        }
    }

    fn drop_if_unused(&self, map: &mut RouteMap, user: &str) {
        let unused = map
            .users
            .get(user)
            .is_some_and(|r| r.devices.is_empty() && r.joining == 0);
        if unused {
            let route = map.users.remove(user).expect("checked");
            // A full queue leaves the interest on the server until the
            // next reconnect: deliveries to nobody, dropped here.
            let _ = self.commands.try_send(Command::Unsub(route.sid));
            let steps = map.groups.left(user);
            self.routes.apply(map, steps, &mut |c| {
                let _ = self.commands.try_send(c);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes_of(users: &[&str]) -> (Routes, Vec<Arc<Outbox>>) {
        let routes = Routes::default();
        let mut outboxes = Vec::new();
        {
            let mut map = routes.lock();
            for (i, u) in users.iter().enumerate() {
                let outbox = Arc::new(Outbox::new(8));
                outboxes.push(outbox.clone());
                let route = Route {
                    sid: i as u64,
                    devices: vec![(i as u64, "d".into(), outbox)],
                    joining: 0,
                };
                map.users.insert((*u).into(), route);
            }
        }
        (routes, outboxes)
    }

    fn drained(o: &Outbox) -> Vec<Arc<Delivery>> {
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut items = std::collections::VecDeque::new();
        let _ = o.poll_drain(&mut cx, &mut items, 64);
        items
            .into_iter()
            .map(|i| match i {
                Outbound::Delivery(d) => d,
                Outbound::Reply(_) => panic!("a reply"),
            })
            .collect()
    }

    #[test]
    fn one_event_to_many_members_is_one_shared_delivery_and_others_go_nowhere() {
        let (routes, outboxes) = routes_of(&["a", "b"]);
        let event = Bytes::from_static(b"event-1");
        assert_eq!(
            routes.route("im.deliver.a.e", 0, event.clone(), &mut Vec::new()),
            Routed::Routed
        );
        assert_eq!(
            routes.route("im.deliver.b.e", 1, event.clone(), &mut Vec::new()),
            Routed::Routed
        );
        // No route, or a subscription no route owns (sid 0 is a's): ended,
        // never delivered twice.
        assert_eq!(
            routes.route("im.deliver.c.e", 2, event.clone(), &mut Vec::new()),
            Routed::Stale
        );
        assert_eq!(
            routes.route("im.deliver.b.e", 0, event.clone(), &mut Vec::new()),
            Routed::Stale
        );
        routes.route(
            "im.deliver.b.e",
            1,
            Bytes::from_static(b"event-2"),
            &mut Vec::new(),
        );
        assert_eq!(
            routes.route("not.a.delivery", 1, event, &mut Vec::new()),
            Routed::Stale
        );
        let (a, b) = (drained(&outboxes[0]), drained(&outboxes[1]));
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 2);
        assert!(Arc::ptr_eq(&a[0], &b[0]), "the same bytes, one rendering");
        assert_eq!(b[1].proto, Bytes::from_static(b"event-2"));
    }
}
