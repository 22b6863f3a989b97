//! Debounce windows and who a window wakes, pure. A window of a
//! conversation opens with its first queued message and takes every later
//! one sent within the debounce of it (by the times the log records, so
//! the same queue makes the same windows after a restart); once the
//! debounce has passed it is decided: each member gets at most one
//! notification for it, or none (`Skip`).

use std::collections::{HashMap, VecDeque};

use im_schema::v1;
use sha2::{Digest, Sha256};

/// One queued message with where it is in the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub stream_seq: u64,
    pub msg: v1::NotifyQueued,
}

/// A conversation's messages within one debounce.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub conv: String,
    pub messages: Vec<Queued>,
}

impl Window {
    pub fn opened_ms(&self) -> i64 {
        self.messages[0].msg.at_ms
    }

    pub fn first_stream_seq(&self) -> u64 {
        self.messages[0].stream_seq
    }

    pub fn first_conv_seq(&self) -> u64 {
        self.messages[0].msg.conv_seq
    }
}

/// The windows not yet decided, per conversation in order.
#[derive(Default)]
pub struct Windows {
    by_conv: HashMap<String, VecDeque<Window>>,
    /// Messages held (bounded by the caller: `LOADED_MAX`).
    pub messages: usize,
    /// The highest stream seq added.
    pub loaded_to: u64,
}

impl Windows {
    /// Adds a message (in stream order).
    pub fn add(&mut self, q: Queued, debounce_ms: i64) {
        self.loaded_to = self.loaded_to.max(q.stream_seq);
        self.messages += 1;
        let windows = self
            .by_conv
            .entry(q.msg.conversation_id.clone())
            .or_default();
        match windows.back_mut() {
            Some(w) if q.msg.at_ms <= w.opened_ms() + debounce_ms => w.messages.push(q),
            _ => windows.push_back(Window {
                conv: q.msg.conversation_id.clone(),
                messages: vec![q],
            }),
        }
    }

    /// The windows whose debounce has passed at `now_ms`, oldest first, at
    /// most `max`; a conversation's in order.
    pub fn take_due(&mut self, now_ms: i64, debounce_ms: i64, max: usize) -> Vec<Window> {
        let mut due: Vec<(u64, String)> = self
            .by_conv
            .iter()
            .filter_map(|(conv, ws)| {
                let w = ws.front()?;
                (w.opened_ms() + debounce_ms <= now_ms)
                    .then(|| (w.first_stream_seq(), conv.clone()))
            })
            .collect();
        due.sort();
        due.truncate(max);
        let mut out = Vec::with_capacity(due.len());
        for (_, conv) in due {
            let ws = self.by_conv.get_mut(&conv).expect("just seen");
            let w = ws.pop_front().expect("just seen");
            if ws.is_empty() {
                self.by_conv.remove(&conv);
            }
            self.messages -= w.messages.len();
            out.push(w);
        }
        out
    }

    /// When the oldest window opened (the decider's lag), if any.
    pub fn oldest_opened_ms(&self) -> Option<i64> {
        self.by_conv
            .values()
            .filter_map(|ws| ws.front().map(Window::opened_ms))
            .min()
    }
}

/// How much of a message a notification shows (per deployment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preview {
    /// That there is something new, and where.
    None,
    /// Also who sent it.
    Sender,
    /// Also what it says.
    Text,
}

/// Why a member gets nothing for a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Nothing in it by others after the member's own last message.
    Own,
    /// Read past it before the debounce ended.
    Read,
    /// No push device registered.
    NoDevice,
    /// Do not disturb, or the conversation muted.
    Quiet,
    /// Connected at the message's time or since.
    Online,
}

impl Skip {
    pub fn label(self) -> &'static str {
        match self {
            Skip::Own => "own",
            Skip::Read => "read",
            Skip::NoDevice => "no_device",
            Skip::Quiet => "muted",
            Skip::Online => "online",
        }
    }
}

/// What is known of one member when their window is decided.
#[derive(Clone, Debug, Default)]
pub struct Member {
    pub user: String,
    pub devices: Vec<v1::PushDevice>,
    pub quiet: bool,
    pub read_up_to: u64,
    /// A device connected now, or the last one left after the window opened.
    pub online: bool,
    pub badge: u64,
}

/// The messages of `w` that `user` has not seen: by others, after the
/// user's own last message and their read cursor.
pub fn unseen<'a>(w: &'a Window, user: &str, read_up_to: u64) -> Vec<&'a Queued> {
    let own_last = w
        .messages
        .iter()
        .filter(|q| q.msg.sender == user)
        .map(|q| q.msg.conv_seq)
        .max()
        .unwrap_or(0);
    w.messages
        .iter()
        .filter(|q| q.msg.sender != user && q.msg.conv_seq > own_last.max(read_up_to))
        .collect()
}

/// The notification's id, the receiver's `Idempotency-Key`: the same for
/// the same user, conversation and window, whoever decides it and however
/// often.
pub fn notification_id(user: &str, conv: &str, first_conv_seq: u64) -> String {
    let mut h = Sha256::new();
    for part in [
        user.as_bytes(),
        conv.as_bytes(),
        &first_conv_seq.to_be_bytes(),
    ] {
        h.update(part);
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Whether to skip a member, in the order a reason is cheapest to know
/// (the caller asks presence and counts the badge only past the others).
pub fn skip_before_presence(w: &Window, m: &Member) -> Option<Skip> {
    if unseen(w, &m.user, 0).is_empty() {
        return Some(Skip::Own);
    }
    if unseen(w, &m.user, m.read_up_to).is_empty() {
        return Some(Skip::Read);
    }
    if m.devices.is_empty() {
        return Some(Skip::NoDevice);
    }
    m.quiet.then_some(Skip::Quiet)
}

/// The conversation as a notification names it.
pub struct Place<'a> {
    pub title: &'a str,
    /// The display name of a sender, if they set one: clear, or sealed
    /// (opened when sent).
    pub name_of: &'a dyn Fn(&str) -> (String, Option<v1::SealedText>),
}

/// A member's notification for a window, or why none.
pub fn notification_for(
    w: &Window,
    m: &Member,
    place: &Place,
    preview: Preview,
) -> Result<v1::Notification, Skip> {
    if let Some(skip) = skip_before_presence(w, m) {
        return Err(skip);
    }
    if m.online {
        return Err(Skip::Online);
    }
    let unseen = unseen(w, &m.user, m.read_up_to);
    let last = unseen.last().expect("not skipped");
    let (sender_id, (sender_name, sender_name_sealed)) = match preview {
        Preview::None => (String::new(), (String::new(), None)),
        _ => (last.msg.sender.clone(), (place.name_of)(&last.msg.sender)),
    };
    let text_sealed = match (preview, &last.msg.sealed) {
        (Preview::Text, Some(sealed)) => Some(v1::SealedText {
            conversation_id: w.conv.clone(),
            sender: last.msg.sender.clone(),
            sealed: Some(sealed.clone()),
        }),
        _ => None,
    };
    Ok(v1::Notification {
        id: notification_id(&m.user, &w.conv, w.first_conv_seq()),
        user_id: m.user.clone(),
        conversation_id: w.conv.clone(),
        conversation_title: place.title.to_string(),
        sender_id,
        sender_name,
        text: match preview {
            Preview::Text => last.msg.preview.clone(),
            _ => String::new(),
        },
        messages: unseen.len() as u32,
        first_conv_seq: unseen[0].msg.conv_seq,
        last_conv_seq: last.msg.conv_seq,
        at_ms: last.msg.at_ms,
        badge: m.badge,
        devices: m.devices.clone(),
        text_sealed,
        sender_name_sealed,
    })
}

#[cfg(test)]
mod tests;
