// Small shared pieces: avatars and time labels.
import type { Store } from "./store.js";
const COLORS = ["#5b8def", "#e5734a", "#3fb68b", "#b65bd6", "#d6a23f", "#4ab3c7", "#e05a8a"];

export function Avatar({ name, group = false }: { name: string; group?: boolean }) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  const initials = firstCharacters(name.replace(/^dm_/, ""), 2).toUpperCase();
  return (
    <span class={group ? "avatar group" : "avatar"} style={{ background: COLORS[h % COLORS.length] }}>
      {initials}
    </span>
  );
}

/** A user's avatar: their image when their profile has one, else their name's initials. */
export function UserAvatar({ store, userId }: { store: Store; userId: string }) {
  const url = store.avatarOf(userId);
  if (url) return <img class="avatar" src={url} alt="" data-testid="avatar-image" />;
  return <Avatar name={store.displayName(userId)} />;
}

export function timeLabel(ms: number): string {
  const d = new Date(ms);
  const today = new Date();
  return d.toDateString() === today.toDateString()
    ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : d.toLocaleDateString([], { month: "short", day: "numeric" });
}

/** The first `n` user-perceived characters: never half an emoji or of a combined letter. */
function firstCharacters(text: string, n: number): string {
  const segmenter = typeof Intl !== "undefined" && "Segmenter" in Intl ? new Intl.Segmenter() : undefined;
  const parts = segmenter ? Array.from(segmenter.segment(text), (s) => s.segment) : Array.from(text);
  return parts.slice(0, n).join("");
}
