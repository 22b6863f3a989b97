// The admin API of `imctl admin` / `imctl up` (ops/src/cmd/admin).

export interface StreamStatus {
  name: string;
  messages: number;
  bytes: number;
  first_seq: number;
  last_seq: number;
  consumers: { name: string; pending: number; ack_pending: number; delivered_stream_seq: number }[];
}

export interface ProjectionRow {
  instance: string;
  projection: string;
  checkpoint: number;
  stream_last_seq: number;
  lag: number;
  events_per_s: number;
  dead_letters: number;
}

export interface Rebuild {
  instance: string;
  projection: string;
  generation: number;
  phase: string;
  folded: number;
  remaining: number;
  startedMs: number;
  finishedMs: number;
}

/** A partition of the projector pool, from the lease bucket (none for pinned instances). */
export interface PartitionRow {
  partition: number;
  owner: string;
  epoch: number;
  lease_age_ms: number;
  stale: boolean;
  claimed: number;
  lag: number;
  followers: { instance: string; applied: number }[];
  moved_to: string | null;
}

/** A running notifier (`im-notifier`): its backlog and what it sent. */
export interface NotifierRow {
  instance: string;
  outbox: number;
  pendingMessages: number;
  lagMs: number;
  sent: number;
  retries: number;
  deadLetters: number;
  unregistered: number;
}

export interface Status {
  streams: StreamStatus[];
  projections: ProjectionRow[];
  partitions: PartitionRow[];
  rebuilds: Rebuild[];
  notifiers: NotifierRow[];
}

export class AdminError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function call<T>(token: string, path: string, init: RequestInit = {}): Promise<T> {
  const res = await fetch(path, {
    ...init,
    headers: { ...(init.headers as Record<string, string>), authorization: `Bearer ${token}` },
  });
  const body = (await res.json().catch(() => ({}))) as { message?: string };
  if (!res.ok) throw new AdminError(res.status, body.message ?? `HTTP ${res.status}`);
  return body as T;
}

export function status(token: string): Promise<Status> {
  return call(token, "/admin/v1/status");
}

export function rebuild(token: string, instance: string, projection: string): Promise<{ rebuilds: Rebuild[] }> {
  return call(token, "/admin/v1/rebuild", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ instance, projections: [projection] }),
  });
}
