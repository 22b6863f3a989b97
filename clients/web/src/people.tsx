// People: the profile editor and the contacts panel (requests to accept
// or decline, contacts, blocks), over the store's people calls.
import { useState } from "preact/hooks";
import { ContactState, type ContactEntry } from "@im/sdk";
import type { Store } from "./store.js";
import { UserAvatar } from "./ui.js";

/** A call's failure as one line for the panel. */
function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function ProfileDialog({ store, onDone }: { store: Store; onDone: () => void }) {
  const mine = store.profiles.get(store.me);
  const [name, setName] = useState(mine?.displayName ?? "");
  const [status, setStatus] = useState(mine?.status ?? "");
  const [direct, setDirect] = useState(store.privacy.directChats);
  const [groups, setGroups] = useState(store.privacy.groupAdds);
  const [image, setImage] = useState<File | undefined>(undefined);
  const [error, setError] = useState("");
  async function save(e: Event) {
    e.preventDefault();
    setError("");
    try {
      await store.saveProfile(name, status, image);
      if (direct !== store.privacy.directChats || groups !== store.privacy.groupAdds) {
        await store.savePrivacy({ directChats: direct, groupAdds: groups });
      }
      onDone();
    } catch (err) {
      setError(message(err));
    }
  }
  const audience = (value: string, set: (v: "everyone" | "contacts") => void) => (
    <select value={value} onChange={(e) => set((e.target as HTMLSelectElement).value as "everyone" | "contacts")}>
      <option value="everyone">everyone</option>
      <option value="contacts">contacts only</option>
    </select>
  );
  return (
    <form class="dialog" onSubmit={save} data-testid="profile">
      <input name="displayName" autoFocus placeholder="display name" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      <input name="status" placeholder="status" value={status} onInput={(e) => setStatus((e.target as HTMLInputElement).value)} />
      <label class="small">
        Avatar <input name="avatar" type="file" accept="image/png,image/jpeg,image/gif,image/webp" onChange={(e) => setImage((e.target as HTMLInputElement).files?.[0])} />
      </label>
      <label class="small">Who may start a chat with me {audience(direct, setDirect)}</label>
      <label class="small">Who may add me to groups {audience(groups, setGroups)}</label>
      <div class="row">
        <button type="submit" disabled={!name.trim()}>
          Save
        </button>
        <button type="button" class="link" onClick={onDone}>
          Cancel
        </button>
      </div>
      {error && <p class="error">{error}</p>}
    </form>
  );
}

export function ContactsPanel({ store }: { store: Store }) {
  const [user, setUser] = useState("");
  const [error, setError] = useState("");
  async function act(userId: string, verb: Parameters<Store["contact"]>[1]) {
    setError("");
    try {
      await store.contact(userId, verb);
      if (verb === "request") setUser("");
    } catch (e) {
      setError(message(e));
    }
  }
  const section = (title: string, testId: string, entries: ContactEntry[], tools: (c: ContactEntry) => preact.JSX.Element) =>
    entries.length > 0 && (
      <>
        <h4>{title}</h4>
        <ul data-testid={testId}>
          {entries.map((c) => (
            <li key={c.userId} data-user={c.userId}>
              <UserAvatar store={store} userId={c.userId} />
              <span class="name">{store.displayName(c.userId)}</span>
              {tools(c)}
            </li>
          ))}
        </ul>
      </>
    );
  const button = (label: string, run: () => void, danger = false) => (
    <button class={danger ? "link danger" : "link"} onClick={run}>
      {label}
    </button>
  );
  return (
    <div class="dialog people" data-testid="contacts-panel">
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          void act(user.trim(), "request");
        }}
      >
        <input name="contact" placeholder="add by user id" value={user} onInput={(e) => setUser((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={!user.trim()}>
          Ask
        </button>
      </form>
      {section("Requests", "incoming", store.contactsIn(ContactState.INCOMING), (c) => (
        <>
          {button("Accept", () => void act(c.userId, "accept"))}
          {button("Decline", () => void act(c.userId, "decline"), true)}
        </>
      ))}
      {section("Contacts", "contacts", store.contactsIn(ContactState.CONTACT), (c) => (
        <>
          {button("Chat", () => store.startChat(c.userId, "👋"))}
          {button("Remove", () => void act(c.userId, "remove"), true)}
        </>
      ))}
      {section("Asked", "outgoing", store.contactsIn(ContactState.OUTGOING), (c) => (
        <>{button("Withdraw", () => void act(c.userId, "remove"), true)}</>
      ))}
      {section("Blocked", "blocked", store.contacts.filter((c) => c.blocked), (c) => (
        <>{button("Unblock", () => void act(c.userId, "unblock"))}</>
      ))}
      {store.contacts.length === 0 && <p class="muted small">No contacts yet: ask someone by their user id.</p>}
      {error && <p class="error">{error}</p>}
    </div>
  );
}
