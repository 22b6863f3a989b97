import { useState } from "preact/hooks";
import type { Store, Conv } from "./store.js";
import { Avatar, UserAvatar, timeLabel } from "./ui.js";
import { ContactsPanel, ProfileDialog } from "./people.js";
import { ContactState } from "@im/sdk";
import { SearchBox, SearchResults } from "./search.js";

export function Sidebar({ store, onSignOut }: { store: Store; onSignOut: () => void }) {
  const [dialog, setDialog] = useState<"chat" | "group" | "profile" | "contacts" | null>(null);
  const [q, setQ] = useState("");
  const incoming = store.contactsIn(ContactState.INCOMING).length;
  const toggle = (d: typeof dialog) => setDialog(dialog === d ? null : d);
  return (
    <aside class="sidebar">
      <header>
        <UserAvatar store={store} userId={store.me} />
        <div class="me">
          <strong data-testid="my-name">{store.displayName(store.me)}</strong>
          <span class={store.client.connected ? "online" : "offline"}>{store.client.connected ? "online" : "connecting…"}</span>
        </div>
        <button class="link" onClick={onSignOut} title="Sign out">
          Sign out
        </button>
      </header>
      <SearchBox q={q} setQ={setQ} />
      <div class="actions">
        <button onClick={() => setDialog("chat")}>New chat</button>
        <button onClick={() => setDialog("group")}>New group</button>
      </div>
      <div class="actions">
        <button onClick={() => toggle("contacts")}>
          Contacts{incoming > 0 && <span class="badge" data-testid="requests">{incoming}</span>}
        </button>
        <button onClick={() => toggle("profile")}>Profile</button>
      </div>
      {dialog === "profile" && <ProfileDialog store={store} onDone={() => setDialog(null)} />}
      {dialog === "contacts" && <ContactsPanel store={store} />}
      {dialog === "chat" && <NewChat store={store} onDone={() => setDialog(null)} />}
      {dialog === "group" && <NewGroup store={store} onDone={() => setDialog(null)} />}
      {q.trim() ? (
        <SearchResults store={store} q={q} onOpen={() => setQ("")} />
      ) : (
        <ul class="convs" data-testid="conversations">
          {store.list().map((c) => (
            <ConvItem key={c.id} store={store} conv={c} />
          ))}
        </ul>
      )}
    </aside>
  );
}

function ConvItem({ store, conv }: { store: Store; conv: Conv }) {
  const name = store.name(conv);
  const typing = store.typingIn(conv);
  return (
    <li class={store.openId === conv.id ? "conv open" : "conv"} data-conv={conv.id} onClick={() => void store.open(conv.id)}>
      {store.peer(conv) ? <UserAvatar store={store} userId={store.peer(conv)!} /> : <Avatar name={name} group={conv.kind === "group"} />}
      <div class="summary">
        <div class="line">
          <span class="name">{name}</span>
          <span class="time">{conv.lastActivityMs ? timeLabel(conv.lastActivityMs) : ""}</span>
        </div>
        <div class="line">
          <span class="preview">{typing.length ? `${typing.map((u) => store.displayName(u)).join(", ")} typing…` : conv.preview}</span>
          {conv.unread > 0 && (
            <span class="badge" data-testid="unread">
              {conv.unread > 99 ? "99+" : conv.unread}
            </span>
          )}
        </div>
      </div>
    </li>
  );
}

function NewChat({ store, onDone }: { store: Store; onDone: () => void }) {
  const [user, setUser] = useState("");
  const [text, setText] = useState("");
  function start(e: Event) {
    e.preventDefault();
    store.startChat(user.trim(), text.trim() || "👋");
    onDone();
  }
  return (
    <form class="dialog" onSubmit={start}>
      <input name="to" autoFocus placeholder="user id" value={user} onInput={(e) => setUser((e.target as HTMLInputElement).value)} />
      <input name="first" placeholder="say hello" value={text} onInput={(e) => setText((e.target as HTMLInputElement).value)} />
      <div class="row">
        <button type="submit" disabled={!user.trim()}>
          Start
        </button>
        <button type="button" class="link" onClick={onDone}>
          Cancel
        </button>
      </div>
    </form>
  );
}

function NewGroup({ store, onDone }: { store: Store; onDone: () => void }) {
  const [title, setTitle] = useState("");
  const [members, setMembers] = useState("");
  const [error, setError] = useState("");
  async function create(e: Event) {
    e.preventDefault();
    const id = `g-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
    const users = members.split(/[\s,]+/).filter((u) => u && u !== store.me);
    try {
      const r = await store.client.http.createGroup(id, title.trim(), users, id);
      await store.client.http.members(id, r.streamSeq);
      onDone();
      await store.open(id);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    }
  }
  return (
    <form class="dialog" onSubmit={create}>
      <input name="title" autoFocus placeholder="group name" value={title} onInput={(e) => setTitle((e.target as HTMLInputElement).value)} />
      <input name="members" placeholder="members: bob, carol" value={members} onInput={(e) => setMembers((e.target as HTMLInputElement).value)} />
      <div class="row">
        <button type="submit" disabled={!title.trim()}>
          Create
        </button>
        <button type="button" class="link" onClick={onDone}>
          Cancel
        </button>
      </div>
      {error && <p class="error">{error}</p>}
    </form>
  );
}
