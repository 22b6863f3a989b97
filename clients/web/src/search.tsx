import { useEffect, useRef, useState } from "preact/hooks";
import { ImHttpError, type SearchHit, type SearchPage } from "@im/sdk";
import type { Store } from "./store.js";
import { timeLabel } from "./ui.js";

/** Keystrokes settle this long before a search is sent. */
const TYPING_PAUSE_MS = 250;

/** A search box; while it holds a query, its hits replace the conversation list. */
export function SearchBox({ q, setQ }: { q: string; setQ: (q: string) => void }) {
  return (
    <div class="search">
      <input
        type="search"
        data-testid="search"
        placeholder="Search messages and chats"
        value={q}
        onInput={(e) => setQ((e.target as HTMLInputElement).value)}
        onKeyDown={(e) => e.key === "Escape" && setQ("")}
      />
      {q && (
        <button class="link" title="Clear" onClick={() => setQ("")}>
          ✕
        </button>
      )}
    </div>
  );
}

interface Found {
  messages: SearchHit[];
  chats: SearchHit[];
  next: string;
  error: string;
}

export function SearchResults({ store, q, onOpen }: { store: Store; q: string; onOpen: () => void }) {
  const [found, setFound] = useState<Found | null>(null);
  const [more, setMore] = useState(false);
  const qNow = useRef(q);
  qNow.current = q;
  useEffect(() => {
    let stale = false;
    const timer = setTimeout(async () => {
      try {
        const [messages, chats] = await Promise.all([store.client.search(q, "messages"), store.client.search(q, "conversations")]);
        if (!stale) setFound({ messages: messages.hits, chats: chats.hits, next: messages.next, error: "" });
      } catch (e) {
        if (!stale) setFound({ messages: [], chats: [], next: "", error: e instanceof ImHttpError ? e.message : String(e) });
      }
    }, TYPING_PAUSE_MS);
    return () => {
      stale = true;
      clearTimeout(timer);
    };
  }, [q]);
  async function loadMore() {
    if (!found?.next || more) return;
    const asked = q;
    setMore(true);
    try {
      const page: SearchPage = await store.client.search(asked, "messages", { before: found.next });
      // A page of a query since replaced is dropped.
      setFound((f) => (f && asked === qNow.current ? { ...f, messages: [...f.messages, ...page.hits], next: page.next } : f));
    } catch (e) {
      setFound((f) => (f ? { ...f, next: "", error: e instanceof ImHttpError ? e.message : String(e) } : f));
    } finally {
      setMore(false);
    }
  }
  if (!found) return <p class="muted pad">Searching…</p>;
  if (found.error) return <p class="error pad" data-testid="search-error">{found.error}</p>;
  const open = (hit: SearchHit, seq?: number) => {
    onOpen();
    void (seq ? store.openAt(hit.conversationId, seq) : store.open(hit.conversationId));
  };
  return (
    <ul class="convs" data-testid="search-results">
      {found.chats.map((h) => (
        <li class="conv hit" key={`c-${h.conversationId}`} onClick={() => open(h)}>
          <div class="summary">
            <div class="line">
              <Snippet hit={h} />
            </div>
          </div>
        </li>
      ))}
      {found.messages.map((h) => (
        <li class="conv hit" key={`m-${h.streamSeq}`} data-testid="search-hit" onClick={() => open(h, Number(h.convSeq))}>
          <div class="summary">
            <div class="line">
              <span class="name">{store.name(store.conv(h.conversationId))}</span>
              <span class="time">{timeLabel(Number(h.atMs))}</span>
            </div>
            <div class="line">
              <span class="preview">
                {store.displayName(h.senderId)}: <Snippet hit={h} />
              </span>
            </div>
          </div>
        </li>
      ))}
      {found.messages.length + found.chats.length === 0 && <li class="muted pad">Nothing found</li>}
      {found.next && (
        <li class="pad">
          <button class="link" onClick={() => void loadMore()}>
            More
          </button>
        </li>
      )}
    </ul>
  );
}

function Snippet({ hit }: { hit: SearchHit }) {
  return <>{hit.snippet.map((p, i) => (p.hit ? <mark key={i}>{p.text}</mark> : <span key={i}>{p.text}</span>))}</>;
}
