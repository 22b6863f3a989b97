import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import { Role } from "@im/sdk";
import type { Conv, Msg, Store } from "./store.js";
import { Avatar, UserAvatar, timeLabel } from "./ui.js";
import { Composer } from "./composer.js";
import { MediaImage } from "./media.js";

export function ConversationView({ store, conv }: { store: Store; conv: Conv }) {
  const [showMembers, setShowMembers] = useState(false);
  const list = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  const loading = useRef(false);

  // Stay at the bottom while new messages arrive, unless the user scrolled
  // up, or a search hit is to be shown: then that message, marked.
  useLayoutEffect(() => {
    const el = list.current;
    const focus = store.focus?.conversationId === conv.id ? store.focus : null;
    const target = focus && el?.querySelector<HTMLElement>(`[data-seq="${focus.seq}"]`);
    if (target) {
      store.focus = null;
      stick.current = false;
      target.scrollIntoView({ block: "center" });
      target.classList.add("found");
      setTimeout(() => target.classList.remove("found"), 2_000);
      return;
    }
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  });

  async function onScroll() {
    const el = list.current;
    if (!el) return;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < 60 && !loading.current && !conv.atStart) {
      loading.current = true;
      const before = el.scrollHeight;
      await store.loadOlder(conv.id);
      el.scrollTop += el.scrollHeight - before; // keep the view where it was
      loading.current = false;
    }
  }

  const typing = store.typingIn(conv).map((u) => store.displayName(u));
  const peer = store.peer(conv);
  const pending = [...store.outgoing.values()].filter((m) => m.conversationId === conv.id);
  return (
    <main class="conversation">
      <header>
        {peer ? <UserAvatar store={store} userId={peer} /> : <Avatar name={store.name(conv)} group={conv.kind === "group"} />}
        <div class="title">
          <strong data-testid="conv-title">{store.name(conv)}</strong>
          <span class="muted small" data-testid="conv-status">
            {conv.kind === "group" ? `${conv.members.size} members` : store.presenceOf(conv) || "direct"}
          </span>
        </div>
        {conv.kind === "group" && (
          <button class="link" onClick={() => setShowMembers(!showMembers)}>
            Members
          </button>
        )}
        {peer && <BlockButton store={store} peer={peer} />}
      </header>
      <div class="body">
        <div class="messages" ref={list} onScroll={onScroll} data-testid="messages">
          {conv.atStart && <div class="notice">This is the start of the conversation</div>}
          {conv.messages.map((m, i) => (
            <Line key={m.seq} store={store} conv={conv} msg={m} prev={conv.messages[i - 1]} />
          ))}
          {pending.map((p) => (
            <div class="msg mine pending" key={p.clientMsgId}>
              <div class="bubble">
                {p.send.body?.case === "text" ? p.send.body.value : "[image]"}
                <span class="meta">{p.status === "failed" || p.status === "rejected" ? `not sent: ${p.reason}` : "sending…"}</span>
              </div>
            </div>
          ))}
        </div>
        {showMembers && <Members store={store} conv={conv} />}
      </div>
      <div class="typing" data-testid="typing">
        {typing.length > 0 ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing…` : ""}
      </div>
      {conv.members.has(store.me) || !conv.membersLoaded ? (
        <Composer store={store} conv={conv} />
      ) : (
        <div class="composer muted">You are not a member of this conversation.</div>
      )}
    </main>
  );
}

function Line({ store, conv, msg, prev }: { store: Store; conv: Conv; msg: Msg; prev?: Msg }) {
  const [editing, setEditing] = useState(false);
  if (msg.notice) return <div class="notice">{msg.notice}</div>;
  const mine = msg.sender === store.me;
  const first = !prev || prev.sender !== msg.sender || !!prev.notice;
  return (
    <div class={mine ? "msg mine" : "msg"} data-seq={msg.seq} data-testid="message">
      {!mine && conv.kind === "group" && first && <div class="sender">{store.displayName(msg.sender)}</div>}
      <div class="bubble">
        {msg.recalled ? (
          <em class="muted">message recalled</em>
        ) : msg.erased ? (
          <em class="muted" data-testid="erased">message {msg.erased}</em>
        ) : editing ? (
          <EditBox store={store} conv={conv} msg={msg} onDone={() => setEditing(false)} />
        ) : (
          <>
            {msg.media && <MediaImage store={store} media={msg.media} />}
            {msg.text && <span class="text">{msg.text}</span>}
          </>
        )}
        <span class="meta">
          {msg.edited && !msg.recalled && <span>edited · </span>}
          {timeLabel(msg.atMs)}
          {mine && !msg.recalled && <Ticks store={store} conv={conv} msg={msg} />}
        </span>
      </div>
      {mine && !msg.recalled && !msg.erased && !editing && (
        <div class="tools">
          {msg.text && (
            <button class="link" onClick={() => setEditing(true)}>
              Edit
            </button>
          )}
          <button class="link" onClick={() => void store.client.http.recall(conv.id, msg.seq, `recall-${conv.id}-${msg.seq}`).catch((e) => alert(String(e)))}>
            Recall
          </button>
        </div>
      )}
    </div>
  );
}

function Ticks({ store, conv, msg }: { store: Store; conv: Conv; msg: Msg }) {
  const readBy = store.readBy(conv, msg).map((u) => store.displayName(u));
  const delivered = store.deliveredTo(conv, msg);
  const status = readBy.length ? "read" : delivered.length ? "delivered" : "stored";
  const title = conv.kind === "group" && readBy.length ? `Read by ${readBy.join(", ")}` : status;
  return (
    <span class={`ticks ${status}`} title={title} data-status={status} data-read-by={readBy.join(",")}>
      {status === "stored" ? " ✓" : " ✓✓"}
      {conv.kind === "group" && readBy.length > 0 && <span class="readby"> read by {readBy.join(", ")}</span>}
    </span>
  );
}

function EditBox({ store, conv, msg, onDone }: { store: Store; conv: Conv; msg: Msg; onDone: () => void }) {
  const [text, setText] = useState(msg.text);
  async function save(e: Event) {
    e.preventDefault();
    if (text.trim() && text !== msg.text) {
      await store.client.http.edit(conv.id, msg.seq, text.trim()).catch((err) => alert(String(err)));
    }
    onDone();
  }
  return (
    <form onSubmit={save} class="edit">
      <input autoFocus value={text} onInput={(e) => setText((e.target as HTMLInputElement).value)} onKeyDown={(e) => e.key === "Escape" && onDone()} />
    </form>
  );
}

function Members({ store, conv }: { store: Store; conv: Conv }) {
  const [user, setUser] = useState("");
  const [error, setError] = useState("");
  const myRole = conv.members.get(store.me) ?? Role.UNSPECIFIED;
  const canManage = myRole === Role.OWNER || myRole === Role.ADMIN;
  useEffect(() => void store.loadMembers(conv.id), [conv.id]);
  async function act(verb: string, target?: string) {
    setError("");
    try {
      await store.client.http.act(conv.id, verb, target, verb === "add-member" ? { role: "member" } : {});
      setUser("");
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }
  const roleName = (r: Role) => (r === Role.OWNER ? "owner" : r === Role.ADMIN ? "admin" : "member");
  return (
    <aside class="members" data-testid="members">
      <h3>Members</h3>
      <ul>
        {[...conv.members].map(([u, r]) => (
          <li key={u}>
            <UserAvatar store={store} userId={u} />
            <span class="name">{store.displayName(u)}</span>
            <span class="muted small">{roleName(r)}</span>
            {canManage && u !== store.me && r !== Role.OWNER && (
              <button class="link danger" onClick={() => void act("remove-member", u)}>
                Remove
              </button>
            )}
          </li>
        ))}
      </ul>
      {canManage && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            void act("add-member", user.trim());
          }}
        >
          <input name="add" placeholder="add by user id" value={user} onInput={(e) => setUser((e.target as HTMLInputElement).value)} />
          <button type="submit" disabled={!user.trim()}>
            Add
          </button>
        </form>
      )}
      {myRole !== Role.OWNER && conv.members.has(store.me) && (
        <button class="link danger" onClick={() => void act("leave")}>
          Leave group
        </button>
      )}
      {error && <p class="error">{error}</p>}
    </aside>
  );
}

/** Blocks (or unblocks) the other person of a direct conversation: neither side may send while it stands. */
function BlockButton({ store, peer }: { store: Store; peer: string }) {
  const blocked = store.blocked(peer);
  const [error, setError] = useState("");
  async function toggle() {
    setError("");
    try {
      await store.contact(peer, blocked ? "unblock" : "block");
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }
  return (
    <>
      <button class="link danger" onClick={() => void toggle()} title={error || undefined}>
        {blocked ? "Unblock" : "Block"}
      </button>
    </>
  );
}
