import { useState } from "preact/hooks";
import { devToken, userOfToken, type Session } from "./session.js";

export function Login({ onSignedIn }: { onSignedIn: (s: Session) => void }) {
  const [user, setUser] = useState("");
  const [name, setName] = useState("");
  const [token, setToken] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function signIn(e: Event) {
    e.preventDefault();
    setError("");
    setBusy(true);
    try {
      const displayName = name.trim() || undefined;
      if (token.trim()) {
        const userId = userOfToken(token.trim());
        if (!userId) throw new Error("that does not look like a token (no user id in it)");
        onSignedIn({ userId, token: token.trim(), displayName });
      } else {
        onSignedIn({ userId: user.trim(), token: await devToken(user.trim()), dev: true, displayName });
      }
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <div class="login">
      <form onSubmit={signIn}>
        <h1>im</h1>
        <p class="muted">Sign in to chat</p>
        <label>
          User id
          <input
            name="user"
            autoFocus
            placeholder="alice"
            value={user}
            pattern="[A-Za-z0-9_\-]{1,64}"
            onInput={(e) => setUser((e.target as HTMLInputElement).value)}
          />
        </label>
        <label>
          Display name <span class="muted small">(optional: what others see, any language)</span>
          <input name="displayName" placeholder="李雷" maxLength={256} value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <details>
          <summary>Sign in with a token instead</summary>
          <textarea name="token" rows={3} placeholder="eyJ…" value={token} onInput={(e) => setToken((e.target as HTMLTextAreaElement).value)} />
        </details>
        <button type="submit" disabled={busy || (!user.trim() && !token.trim())}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
        {error && <p class="error">{error}</p>}
        <p class="muted small">On a local stack (<code>scripts/up.sh</code>) any user id signs in.</p>
      </form>
    </div>
  );
}
