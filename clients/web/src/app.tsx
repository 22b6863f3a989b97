import { useEffect, useMemo, useReducer, useState } from "preact/hooks";
import { Store } from "./store.js";
import { loadSession, saveSession, tokenSource, type Session } from "./session.js";
import { Login } from "./login.js";
import { Sidebar } from "./sidebar.js";
import { ConversationView } from "./conversation.js";

export function App() {
  const [session, setSession] = useState<Session | null>(loadSession);
  if (!session) {
    return (
      <Login
        onSignedIn={(s) => {
          saveSession(s);
          setSession(s);
        }}
      />
    );
  }
  return (
    <Chat
      session={session}
      onSignOut={() => {
        saveSession(null);
        setSession(null);
      }}
    />
  );
}

function Chat({ session, onSignOut }: { session: Session; onSignOut: () => void }) {
  const store = useMemo(() => {
    const name = session.displayName;
    // Set once: a reload keeps the profile on the log, not this.
    if (name) saveSession({ ...session, displayName: undefined });
    return new Store(location.origin, tokenSource(session, onSignOut), session.userId, name);
  }, [session]);
  const [, bump] = useReducer((n: number) => n + 1, 0);
  const rerender = () => bump(undefined);
  useEffect(() => {
    const off = store.subscribe(rerender);
    store.start();
    return () => {
      off();
      store.stop();
    };
  }, [store]);
  const open = store.openId ? store.conv(store.openId) : null;
  return (
    <div class="chat">
      <Sidebar store={store} onSignOut={onSignOut} />
      {open ? <ConversationView key={open.id} store={store} conv={open} /> : <Empty store={store} />}
    </div>
  );
}

function Empty({ store }: { store: Store }) {
  return (
    <main class="empty">
      <div>
        <h2>Hello, {store.displayName(store.me)}</h2>
        <p>Pick a conversation, or start one with “New chat”.</p>
      </div>
    </main>
  );
}
