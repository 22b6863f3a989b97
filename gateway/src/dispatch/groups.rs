//! Large groups on this gateway: which of its connected users are members
//! of which group, as a pure state machine the dispatcher drives
//! (ARCHITECTURE.md, "Large groups").
//!
//! A large group's deliveries come once, on `im.group.<conv>`, which the
//! gateway subscribes to while one of its users is a connected member, and
//! go to the members connected here. Each carries `members_seq`, the
//! conv_seq of the group's last membership change before it: a delivery
//! whose `members_seq` is the one the membership here is at is routed by
//! it, and a membership change moves it on. Anything else (the chain broke:
//! a change was missed, the connection came back) routes nothing until the
//! projector has said again who of the users here are members (an `Ask`);
//! what went by meanwhile reaches them as one notification (`deliver`
//! without event: "page history up to convSeq"). A user is only ever sent a
//! group's event while the membership here says they are a member at it.

use std::collections::{HashMap, HashSet};

use im_schema::v1::{self, conv_event::Kind};

/// Users one `Ask` names, at most (the projector's group-state limit).
pub const ASK_USERS_MAX: usize = 5_000;

/// What the dispatcher does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Subscribe {
        conv: Box<str>,
        sid: u64,
    },
    Unsubscribe {
        sid: u64,
    },
    /// Ask the projector which of `users` are members of `conv`.
    Ask {
        conv: Box<str>,
        users: Vec<Box<str>>,
    },
    /// A notification to `users`: page `conv`'s history up to `conv_seq`
    /// (covered by IM_CONV `position`).
    Notify {
        conv: Box<str>,
        users: Vec<Box<str>>,
        conv_seq: u64,
        position: u64,
    },
}

/// A delivery of a large group, as routing needs it.
#[derive(Debug, Default)]
pub struct GroupDelivery<'a> {
    pub conv_seq: u64,
    pub stream_seq: u64,
    pub members_seq: u64,
    /// Users the event makes members, and users it makes leave.
    pub joined: Vec<&'a str>,
    pub left: Vec<&'a str>,
}

impl<'a> GroupDelivery<'a> {
    pub fn of(d: &'a v1::Deliver) -> Self {
        let (joined, left) = d.event.as_ref().map(membership_change).unwrap_or_default();
        GroupDelivery {
            conv_seq: d.conv_seq,
            stream_seq: d.stream_seq,
            members_seq: d.members_seq,
            joined,
            left,
        }
    }

    fn changes_membership(&self) -> bool {
        !self.joined.is_empty() || !self.left.is_empty()
    }
}

/// The users an event makes members and makes leave (a group's).
fn membership_change(ev: &v1::ConvEvent) -> (Vec<&str>, Vec<&str>) {
    match &ev.kind {
        Some(Kind::Created(c)) => (
            c.members.iter().map(|m| m.user_id.as_str()).collect(),
            vec![],
        ),
        Some(Kind::MemberAdded(a)) => (vec![a.user_id.as_str()], vec![]),
        Some(Kind::MembersAdded(a)) => (
            a.members.iter().map(|m| m.user_id.as_str()).collect(),
            vec![],
        ),
        Some(Kind::MemberRemoved(r)) => (vec![], vec![r.user_id.as_str()]),
        Some(Kind::MemberLeft(_)) => (vec![], vec![ev.actor.as_str()]),
        Some(Kind::Blacklisted(b)) => (vec![], vec![b.user_id.as_str()]),
        _ => (vec![], vec![]),
    }
}

#[derive(Debug, Default)]
struct Group {
    sid: u64,
    /// Users connected here who are members, at `known`.
    members: HashSet<Box<str>>,
    /// Users connected here whose membership is to be asked; `asked` are
    /// those of the ask in flight.
    waiting: HashSet<Box<str>>,
    asked: Vec<Box<str>>,
    /// The `members_seq` the membership here is at; None while the whole
    /// group is asked again.
    known: Option<u64>,
    /// Deliveries at or below this IM_CONV position are covered by an answer.
    covered_to: u64,
    /// The highest conv_seq gone by unrouted (for the notification).
    missed_seq: u64,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.waiting.is_empty() && self.asked.is_empty()
    }

    /// The next ask, if none is in flight and someone waits.
    fn next_ask(&mut self, conv: &str) -> Option<Step> {
        if !self.asked.is_empty() || self.waiting.is_empty() {
            return None;
        }
        let take: Vec<Box<str>> = self.waiting.iter().take(ASK_USERS_MAX).cloned().collect();
        for u in &take {
            self.waiting.remove(u);
        }
        self.asked.clone_from(&take);
        Some(Step::Ask {
            conv: conv.into(),
            users: take,
        })
    }

    /// Routing stops until everyone here is asked again.
    fn break_chain(&mut self, conv_seq: u64) {
        self.known = None;
        self.missed_seq = self.missed_seq.max(conv_seq);
        self.waiting.extend(self.members.drain());
    }
}

/// Every large group with a member connected here.
#[derive(Debug, Default)]
pub struct Groups {
    by_conv: HashMap<Box<str>, Group>,
    by_user: HashMap<Box<str>, HashSet<Box<str>>>,
}

impl Groups {
    pub fn len(&self) -> usize {
        self.by_conv.len()
    }

    /// The group's subscription id, if subscribed.
    pub fn sid(&self, conv: &str) -> Option<u64> {
        self.by_conv.get(conv).map(|g| g.sid)
    }

    /// Every (conv, sid), to subscribe again after a reconnect.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_conv.iter().map(|(c, g)| (&**c, g.sid))
    }

    fn group(
        &mut self,
        conv: &str,
        new_sid: &mut dyn FnMut() -> u64,
        steps: &mut Vec<Step>,
    ) -> &mut Group {
        if !self.by_conv.contains_key(conv) {
            let sid = new_sid();
            steps.push(Step::Subscribe {
                conv: conv.into(),
                sid,
            });
            self.by_conv.insert(
                conv.into(),
                Group {
                    sid,
                    ..Default::default()
                },
            );
        }
        self.by_conv.get_mut(conv).expect("inserted")
    }

    /// A user connecting here, a member of `conv` as the projector's
    /// answer `state` says (its `members_seq`, at its `position`).
    pub fn connected(
        &mut self,
        user: &str,
        state: &v1::GroupState,
        new_sid: &mut dyn FnMut() -> u64,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        let conv = state.conversation_id.as_str();
        self.by_user
            .entry(user.into())
            .or_default()
            .insert(conv.into());
        let g = self.group(conv, new_sid, &mut steps);
        match g.known {
            None if g.members.is_empty() && g.asked.is_empty() && g.waiting.is_empty() => {
                g.known = Some(state.members_seq);
                g.covered_to = state.position;
                g.members.insert(user.into());
            }
            Some(k) if k == state.members_seq => {
                g.members.insert(user.into());
            }
            _ => {
                g.waiting.insert(user.into());
                steps.extend(g.next_ask(conv));
            }
        }
        steps
    }

    /// A connected user learned (from their own copy of a membership
    /// change) to be a member of `conv`: asked unless known.
    pub fn joined(
        &mut self,
        user: &str,
        conv: &str,
        new_sid: &mut dyn FnMut() -> u64,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        self.by_user
            .entry(user.into())
            .or_default()
            .insert(conv.into());
        let g = self.group(conv, new_sid, &mut steps);
        if !g.members.contains(user) && !g.asked.iter().any(|u| &**u == user) {
            g.waiting.insert(user.into());
            steps.extend(g.next_ask(conv));
        }
        steps
    }

    /// A group delivery: the users to route it to, and what else to do.
    /// `is_here` says whether a user is connected here.
    pub fn delivery(
        &mut self,
        conv: &str,
        d: &GroupDelivery,
        is_here: &dyn Fn(&str) -> bool,
    ) -> (Vec<Box<str>>, Vec<Step>) {
        let Some(g) = self.by_conv.get_mut(conv) else {
            return (Vec::new(), Vec::new());
        };
        if d.stream_seq <= g.covered_to {
            return (Vec::new(), Vec::new());
        }
        if g.known != Some(d.members_seq) {
            if g.known.is_some() {
                g.break_chain(d.conv_seq);
            } else {
                g.missed_seq = g.missed_seq.max(d.conv_seq);
            }
            return (Vec::new(), g.next_ask(conv).into_iter().collect());
        }
        // The members before the event, whoever it removes included.
        let to: Vec<Box<str>> = g.members.iter().cloned().collect();
        // Those still being asked about get it in their notification.
        if !g.asked.is_empty() || !g.waiting.is_empty() {
            g.missed_seq = g.missed_seq.max(d.conv_seq);
        }
        if d.changes_membership() {
            for u in &d.left {
                g.members.remove(*u);
            }
            // The joined get their own copy (which also brings them here).
            for u in &d.joined {
                if is_here(u) {
                    g.members.insert((*u).into());
                    g.waiting.remove(*u);
                    self.by_user
                        .entry((*u).into())
                        .or_default()
                        .insert(conv.into());
                }
            }
            g.known = Some(d.conv_seq);
        }
        // An ask that failed is tried again at the group's next delivery.
        let mut steps: Vec<Step> = g.next_ask(conv).into_iter().collect();
        if g.is_empty() {
            steps.extend(self.drop_group(conv));
        }
        (to, steps)
    }

    /// The projector's answer to the ask in flight for `conv` (None: it
    /// failed, and those asked wait for the next ask).
    pub fn answered(&mut self, conv: &str, answer: Option<&v1::GroupState>) -> Vec<Step> {
        let Some(g) = self.by_conv.get_mut(conv) else {
            return Vec::new();
        };
        let asked = std::mem::take(&mut g.asked);
        let Some(a) = answer else {
            g.waiting.extend(asked);
            return g.next_ask(conv).into_iter().collect();
        };
        let mut steps = Vec::new();
        let consistent = g.known.is_none_or(|k| k == a.members_seq);
        if !consistent {
            // The membership here and the answer stand at different changes.
            g.waiting.extend(asked);
            g.break_chain(0);
            return g.next_ask(conv).into_iter().collect();
        }
        if g.known.is_none() {
            g.known = Some(a.members_seq);
            g.covered_to = a.position;
        }
        let members: HashSet<&str> = a.members.iter().map(String::as_str).collect();
        let mut told = Vec::new();
        // Those who left meanwhile are not brought back.
        let here = |u: &str| self.by_user.get(u).is_some_and(|c| c.contains(conv));
        let asked: Vec<Box<str>> = asked.into_iter().filter(|u| here(u)).collect();
        for u in asked {
            if members.contains(&*u) {
                g.members.insert(u.clone());
                told.push(u);
            } else if let Some(convs) = self.by_user.get_mut(&u) {
                convs.remove(conv);
            }
        }
        let conv_seq = a.last_seq.max(g.missed_seq);
        if !told.is_empty() && conv_seq > 0 {
            steps.push(Step::Notify {
                conv: conv.into(),
                users: told,
                conv_seq,
                position: a.position,
            });
        }
        let g = self.by_conv.get_mut(conv).expect("still here");
        if g.waiting.is_empty() {
            g.missed_seq = 0;
        }
        steps.extend(g.next_ask(conv));
        if g.is_empty() {
            steps.extend(self.drop_group(conv));
        }
        steps
    }

    /// The ask in flight for `conv` could not be made: those asked wait
    /// for the next ask (the group's next delivery or join).
    pub fn ask_failed(&mut self, conv: &str) {
        if let Some(g) = self.by_conv.get_mut(conv) {
            let asked = std::mem::take(&mut g.asked);
            g.waiting.extend(asked);
        }
    }

    /// A user's last device left: out of every group; groups left with
    /// no one here are unsubscribed.
    pub fn left(&mut self, user: &str) -> Vec<Step> {
        let mut steps = Vec::new();
        for conv in self.by_user.remove(user).unwrap_or_default() {
            let Some(g) = self.by_conv.get_mut(&conv) else {
                continue;
            };
            g.members.remove(user);
            g.waiting.remove(user);
            g.asked.retain(|u| &**u != user);
            if g.is_empty() {
                steps.extend(self.drop_group(&conv));
            }
        }
        steps
    }

    /// After a reconnect: deliveries went by unseen, so every group asks
    /// again who of its users are members.
    pub fn resubscribed(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        for (conv, g) in &mut self.by_conv {
            g.break_chain(0);
            g.covered_to = 0;
            steps.extend(g.next_ask(conv));
        }
        steps
    }

    fn drop_group(&mut self, conv: &str) -> Option<Step> {
        let g = self.by_conv.remove(conv)?;
        Some(Step::Unsubscribe { sid: g.sid })
    }
}

#[cfg(test)]
mod tests;
