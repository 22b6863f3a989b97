// Who is signed in, per browser tab (sessionStorage): two tabs can be two users.
export interface Session {
  userId: string;
  token: string;
}

const KEY = "im.session";

export function loadSession(): Session | null {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) ?? "null") as Session | null;
    return s && s.token && s.userId ? s : null;
  } catch {
    return null;
  }
}

export function saveSession(s: Session | null): void {
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

/** The user id inside a JWT (its `sub`), without checking it: the gateway does. */
export function userOfToken(token: string): string {
  try {
    const part = token.split(".")[1] ?? "";
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    return String((JSON.parse(json) as { sub?: string }).sub ?? "");
  } catch {
    return "";
  }
}

/** A development token from the local stack (`imctl up`); null when it has none to give. */
export async function devToken(userId: string): Promise<string> {
  const res = await fetch("/v1/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  const body = (await res.json().catch(() => ({}))) as { token?: string; message?: string };
  if (!res.ok || !body.token) throw new Error(body.message ?? `sign-in failed (${res.status})`);
  return body.token;
}
