// Who is signed in, per browser tab (sessionStorage): two tabs can be two users.
export interface Session {
  userId: string;
  token: string;
  /** Signed in through the local stack's development sign-in: renewable. */
  dev?: boolean;
  /** A display name given at sign-in, to set as the profile's. */
  displayName?: string;
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

function claims(token: string): { sub?: string; exp?: number } {
  try {
    const part = token.split(".")[1] ?? "";
    return JSON.parse(atob(part.replace(/-/g, "+").replace(/_/g, "/"))) as { sub?: string; exp?: number };
  } catch {
    return {};
  }
}

/** The user id inside a JWT (its `sub`), without checking it: the gateway does. */
export function userOfToken(token: string): string {
  return String(claims(token).sub ?? "");
}

/** Renew this long before expiry: a reconnect never presents a token about to lapse. */
const RENEW_MARGIN_S = 60;

/**
 * The session's token for each (re)connect: a development token is renewed
 * near its expiry; an expired pasted one throws (`onExpired` signs out).
 */
export function tokenSource(session: Session, onExpired: () => void): () => Promise<string> {
  return async () => {
    const exp = claims(session.token).exp ?? Infinity;
    if (exp - RENEW_MARGIN_S > Date.now() / 1000) return session.token;
    if (!session.dev) {
      onExpired();
      throw new Error("the token has expired: sign in again");
    }
    session.token = await devToken(session.userId);
    saveSession(session);
    return session.token;
  };
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
