import { useEffect, useState } from "preact/hooks";
import { AdminError, rebuild, status, type Status } from "./api.js";

/** How often the page asks for the status: a projection's checkpoint moves visibly. */
const POLL_MS = 2_000;
const KEY = "im.operator";

export function Ops() {
  const [token, setToken] = useState(() => sessionStorage.getItem(KEY) ?? "");
  if (!token) {
    return (
      <TokenForm
        onToken={(t) => {
          sessionStorage.setItem(KEY, t);
          setToken(t);
        }}
      />
    );
  }
  return (
    <Dashboard
      token={token}
      onUnauthorized={() => {
        sessionStorage.removeItem(KEY);
        setToken("");
      }}
    />
  );
}

function TokenForm({ onToken }: { onToken: (t: string) => void }) {
  const [value, setValue] = useState("");
  return (
    <div class="login">
      <form
        onSubmit={(e) => {
          e.preventDefault();
          onToken(value.trim());
        }}
      >
        <h1>im · ops</h1>
        <p class="muted">The operator token is in the stack's data dir: <code>cat data/operator-token</code></p>
        <input name="token" type="password" autoFocus placeholder="operator token" value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={!value.trim()}>
          Open
        </button>
      </form>
    </div>
  );
}

function Dashboard({ token, onUnauthorized }: { token: string; onUnauthorized: () => void }) {
  const [st, setSt] = useState<Status | null>(null);
  const [error, setError] = useState("");
  const [updated, setUpdated] = useState(0);
  useEffect(() => {
    let alive = true;
    let timer: ReturnType<typeof setTimeout>;
    const tick = async () => {
      try {
        const s = await status(token);
        if (!alive) return;
        setSt(s);
        setError("");
        setUpdated(Date.now());
      } catch (e) {
        if (e instanceof AdminError && e.status === 401) return onUnauthorized();
        if (alive) setError(e instanceof Error ? e.message : String(e));
      }
      if (alive) timer = setTimeout(tick, POLL_MS);
    };
    void tick();
    return () => {
      alive = false;
      clearTimeout(timer);
    };
  }, [token]);

  async function startRebuild(instance: string, projection: string) {
    try {
      await rebuild(token, instance, projection);
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  return (
    <div class="ops">
      <header>
        <h1>im · ops</h1>
        <span class="muted small" data-testid="updated">
          {updated ? `updated ${new Date(updated).toLocaleTimeString()}` : "loading…"}
        </span>
        <button class="link" onClick={onUnauthorized}>
          Sign out
        </button>
      </header>
      {error && <p class="error">{error}</p>}
      {st && (
        <>
          <Projections st={st} onRebuild={startRebuild} />
          <Partitions st={st} />
          <Notifiers st={st} />
          <Rebuilds st={st} />
          <Streams st={st} />
        </>
      )}
    </div>
  );
}

function Projections({ st, onRebuild }: { st: Status; onRebuild: (i: string, p: string) => void }) {
  return (
    <section>
      <h2>Projections</h2>
      <table data-testid="projections">
        <thead>
          <tr>
            <th>instance</th>
            <th>projection</th>
            <th class="num">checkpoint</th>
            <th class="num">stream last</th>
            <th class="num">lag</th>
            <th class="num">events/s</th>
            <th class="num">dead letters</th>
            <th />
          </tr>
        </thead>
        <tbody>
          {st.projections.map((r) => (
            <tr key={`${r.instance}/${r.projection}`} data-projection={r.projection}>
              <td>{r.instance}</td>
              <td>{r.projection}</td>
              <td class="num" data-testid="checkpoint">
                {r.checkpoint}
              </td>
              <td class="num">{r.stream_last_seq}</td>
              <td class={r.lag > 0 ? "num warn" : "num"}>{r.lag}</td>
              <td class="num">{Math.round(r.events_per_s)}</td>
              <td class={r.dead_letters > 0 ? "num warn" : "num"}>{r.dead_letters}</td>
              <td>
                <button class="link" onClick={() => onRebuild(r.instance, r.projection)}>
                  Rebuild
                </button>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Partitions({ st }: { st: Status }) {
  if (st.partitions.length === 0) return null;
  return (
    <section>
      <h2>Partitions</h2>
      <table data-testid="partitions">
        <thead>
          <tr>
            <th class="num">partition</th>
            <th>owner</th>
            <th class="num">epoch</th>
            <th class="num">lease age</th>
            <th class="num">lag</th>
            <th>followers (behind the claim)</th>
          </tr>
        </thead>
        <tbody>
          {st.partitions.map((p) => (
            <tr key={p.partition} data-partition={p.partition}>
              <td class="num">{p.partition}</td>
              <td class={p.stale ? "warn" : ""} data-testid="owner">
                {p.owner}
                {p.stale ? " (stale)" : p.moved_to && p.moved_to !== p.owner ? ` → ${p.moved_to}` : ""}
              </td>
              <td class="num">{p.epoch}</td>
              <td class="num">{(p.lease_age_ms / 1000).toFixed(1)} s</td>
              <td class={p.lag > 0 ? "num warn" : "num"}>{p.lag}</td>
              <td>{p.followers.map((f) => `${f.instance} (${Math.max(0, p.claimed - f.applied)})`).join(", ")}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

/** Offline notifications: how far behind each notifier is, and what it gave up. */
function Notifiers({ st }: { st: Status }) {
  if (!st.notifiers || st.notifiers.length === 0) return null;
  return (
    <section>
      <h2>Notifications</h2>
      <table data-testid="notifiers">
        <thead>
          <tr>
            <th>notifier</th>
            <th class="num">lag</th>
            <th class="num">waiting</th>
            <th class="num">in windows</th>
            <th class="num">sent</th>
            <th class="num">retries</th>
            <th class="num">dead letters</th>
            <th class="num">tokens ended</th>
          </tr>
        </thead>
        <tbody>
          {st.notifiers.map((n) => (
            <tr key={n.instance} data-notifier={n.instance}>
              <td>{n.instance}</td>
              <td class={n.lagMs > 10_000 ? "num warn" : "num"}>{(n.lagMs / 1000).toFixed(1)} s</td>
              <td class="num">{n.outbox}</td>
              <td class="num">{n.pendingMessages}</td>
              <td class="num" data-testid="sent">
                {n.sent}
              </td>
              <td class="num">{n.retries}</td>
              <td class={n.deadLetters > 0 ? "num warn" : "num"}>{n.deadLetters}</td>
              <td class="num">{n.unregistered}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Rebuilds({ st }: { st: Status }) {
  if (st.rebuilds.length === 0) return null;
  return (
    <section>
      <h2>Rebuilds</h2>
      <table data-testid="rebuilds">
        <tbody>
          {st.rebuilds.map((r) => {
            const total = r.folded + r.remaining;
            const pct = r.phase === "building" ? (total ? Math.floor((100 * r.folded) / total) : 0) : 100;
            return (
              <tr key={`${r.instance}/${r.projection}/${r.generation}`} data-rebuild={r.projection}>
                <td>
                  {r.instance}/{r.projection} #{r.generation}
                </td>
                <td class="phase">{r.phase}</td>
                <td class="bar">
                  <progress max={100} value={pct} />
                </td>
                <td class="num">
                  {r.folded}/{total}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </section>
  );
}

function Streams({ st }: { st: Status }) {
  return (
    <section>
      <h2>Streams</h2>
      {st.streams.map((s) => (
        <div class="stream" key={s.name} data-stream={s.name}>
          <h3>
            {s.name} <span class="muted small">
              {s.messages} messages · {(s.bytes / 1024).toFixed(0)} KiB · seq {s.first_seq}..{s.last_seq}
            </span>
          </h3>
          <table>
            <thead>
              <tr>
                <th>consumer</th>
                <th class="num">pending</th>
                <th class="num">ack pending</th>
                <th class="num">delivered</th>
              </tr>
            </thead>
            <tbody>
              {s.consumers.map((c) => (
                <tr key={c.name}>
                  <td>{c.name}</td>
                  <td class="num">{c.pending}</td>
                  <td class="num">{c.ack_pending}</td>
                  <td class="num">{c.delivered_stream_seq}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </section>
  );
}
