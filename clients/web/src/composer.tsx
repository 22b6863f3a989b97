import { useRef, useState } from "preact/hooks";
import type { Conv, Store } from "./store.js";

/** A typing notice is repeated this often while typing (receivers show one for 6 s). */
const TYPING_REPEAT_MS = 3_000;
/** Idle this long and the others see typing stop. */
const TYPING_IDLE_MS = 4_000;

export function Composer({ store, conv }: { store: Store; conv: Conv }) {
  const [text, setText] = useState("");
  const [uploading, setUploading] = useState(false);
  const lastTyping = useRef(0);
  const idle = useRef<ReturnType<typeof setTimeout>>();
  const file = useRef<HTMLInputElement>(null);

  function typed(value: string) {
    setText(value);
    const now = Date.now();
    if (now - lastTyping.current > TYPING_REPEAT_MS) {
      lastTyping.current = now;
      store.client.setTyping(conv.id, true);
    }
    clearTimeout(idle.current);
    idle.current = setTimeout(() => stopTyping(), TYPING_IDLE_MS);
  }

  function stopTyping() {
    if (lastTyping.current) store.client.setTyping(conv.id, false);
    lastTyping.current = 0;
  }

  function send(e: Event) {
    e.preventDefault();
    const t = text.trim();
    if (!t) return;
    store.client.send({ conversationId: conv.id, text: t });
    setText("");
    clearTimeout(idle.current);
    stopTyping();
  }

  async function attach() {
    const f = file.current?.files?.[0];
    if (!f) return;
    setUploading(true);
    try {
      const media = await store.client.http.upload(f, f.type);
      // The file's name (at most 120 characters: a meta value is 512 bytes at
      // most): what search finds an image or a file by.
      store.client.send({ conversationId: conv.id, media, meta: { name: [...f.name].slice(0, 120).join("") } });
    } catch (err) {
      store.error = `upload failed: ${err instanceof Error ? err.message : String(err)}`;
      store.changed();
    } finally {
      setUploading(false);
      if (file.current) file.current.value = "";
    }
  }

  return (
    <form class="composer" onSubmit={send}>
      <input ref={file} type="file" accept="image/png,image/jpeg,image/gif,image/webp" hidden onChange={attach} data-testid="attach" />
      <button type="button" class="icon" title="Send an image" disabled={uploading} onClick={() => file.current?.click()}>
        {uploading ? "…" : <ImageIcon />}
      </button>
      <input
        name="message"
        autoComplete="off"
        placeholder="Write a message"
        value={text}
        onInput={(e) => typed((e.target as HTMLInputElement).value)}
      />
      <button type="submit" disabled={!text.trim()}>
        Send
      </button>
    </form>
  );
}

/** A picture glyph drawn inline: no emoji font needed. */
function ImageIcon() {
  return (
    <svg width="22" height="22" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.8" aria-hidden="true">
      <rect x="3" y="4" width="18" height="16" rx="2" />
      <circle cx="9" cy="10" r="2" />
      <path d="M21 17l-5-5-8 8" />
    </svg>
  );
}
