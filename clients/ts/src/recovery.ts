// Recovery (docs/protocol.md "Recovery", steps 2-4): page history after a
// sync, on a gap and on a notification; start conversations new to this
// client at their tail; scroll back on demand. Work on one conversation runs
// one step at a time, so pages and deliveries meet in one ordered log.
import type { ConversationChange, Deliver } from "./gen/im/v1/client_pb.js";
import type { HistoryEntry } from "./gen/im/v1/readmodel_pb.js";
import { ConversationLog, type LogEvent } from "./conversation.js";
import type { HttpApi } from "./http.js";

/** A history page's size while filling: the gateway's cap on one page. */
export const FILL_PAGE = 100;
/**
 * Pages that end short of what the conversation is known to hold (history
 * is projected apart from the conversation list, and may lag it): asked
 * again this many times, `FILL_STALE_WAIT_MS` apart, then reported.
 */
export const FILL_STALE_RETRIES = 20;
export const FILL_STALE_WAIT_MS = 500;

export interface RecoverySink {
  deliver(e: LogEvent): void;
  error(message: string): void;
}

/** What a conversation is known to hold: a page must reach both. */
interface Want {
  /** A stream position (`minPosition`) the history must have applied. */
  position: number;
  /** A conv_seq that exists. */
  seq: number;
}

export class Recovery {
  private logs = new Map<string, ConversationLog>();
  private chains = new Map<string, Promise<unknown>>();
  /** Fills asked for and not started yet; asking again raises what they must reach. */
  private queued = new Map<string, Want>();
  /** The client stopped: pages in flight land nowhere. */
  private paused = false;

  constructor(
    private readonly http: HttpApi,
    known: Record<string, number>,
    private readonly tailSize: number,
    private readonly sink: RecoverySink,
  ) {
    for (const [conv, seq] of Object.entries(known)) this.logs.set(conv, new ConversationLog(seq));
  }

  pause(paused: boolean): void {
    this.paused = paused;
  }

  known(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [conv, log] of this.logs) if (log.known > 0) out[conv] = log.known;
    return out;
  }

  log(conv: string): ConversationLog | undefined {
    return this.logs.get(conv);
  }

  onSync(changes: ConversationChange[]): void {
    for (const c of changes) {
      const want = { position: 0, seq: Number(c.lastSeq) };
      const log = this.logs.get(c.conversationId);
      if (!log) void this.tail(c.conversationId, want);
      else if (want.seq > log.known) void this.fill(c.conversationId, want);
    }
  }

  onDeliver(d: Deliver): void {
    const conv = d.conversationId;
    const seq = Number(d.convSeq);
    const streamSeq = Number(d.streamSeq);
    let log = this.logs.get(conv);
    if (!log) {
      // New to this client: a brand-new conversation starts here; an older one at its tail.
      if (seq > 1 || !d.event) return void this.tail(conv, { position: streamSeq, seq });
      log = this.create(conv);
    }
    // A notification (a large group) carries no event: page it (step 3).
    if (!d.event) return void this.fill(conv, { position: streamSeq, seq });
    this.offer(log, { conversationId: conv, seq, streamSeq, event: d.event, live: true });
    if (log.hasGap()) void this.fill(conv, { position: streamSeq, seq });
  }

  /** The conversation's log once its latest events are loaded (unregistered and empty if they could not be). */
  async open(conv: string): Promise<ConversationLog> {
    if (!this.logs.has(conv)) await this.tail(conv, { position: 0, seq: 0 });
    await this.chains.get(conv);
    return this.logs.get(conv) ?? new ConversationLog();
  }

  older(conv: string, limit: number): Promise<LogEvent[]> {
    return this.serial(
      conv,
      async () => {
        const log = this.logs.get(conv);
        if (!log || log.oldest <= 1) return [];
        const page = await this.http.history(conv, { fromSeq: log.oldest - 1, limit, backward: true });
        const events = ascending(conv, page.entries);
        if (events.length > 0) log.reachedBack(events[0]!.seq);
        return events;
      },
      [],
    );
  }

  private fill(conv: string, want: Want): Promise<void> {
    const queued = this.queued.get(conv);
    if (queued) {
      queued.position = Math.max(queued.position, want.position);
      queued.seq = Math.max(queued.seq, want.seq);
      return Promise.resolve();
    }
    this.queued.set(conv, { ...want });
    return this.serial(conv, () => this.page(conv, this.take(conv, want)), undefined);
  }

  /** A conversation new to this client: its latest events, then whatever follows. */
  private tail(conv: string, want: Want): Promise<void> {
    return this.serial(
      conv,
      async () => {
        if (this.logs.has(conv)) return this.page(conv, want); // loaded meanwhile: fill forward
        const page = await this.http.history(conv, { limit: this.tailSize, backward: true, minPosition: want.position });
        if (this.paused) return;
        const events = ascending(conv, page.entries);
        // A brand-new conversation may have started from its first delivery meanwhile: join it.
        let log = this.logs.get(conv);
        if (!log) {
          log = this.create(conv);
          if (events.length > 0) log.startAt(events[0]!.seq);
        }
        for (const e of events) this.offer(log, e);
        if (log.known < want.seq || log.hasGap()) await this.page(conv, want);
      },
      undefined,
    );
  }

  /** Pages forward from the first missing seq until `want` is reached (bounded when history lags). */
  private async page(conv: string, want: Want): Promise<void> {
    const log = this.logs.get(conv) ?? this.create(conv);
    for (let stale = 0; ; ) {
      const before = log.known;
      const position = Math.max(want.position, log.heldPosition());
      const page = await this.http.history(conv, { fromSeq: log.known + 1, limit: FILL_PAGE, minPosition: position });
      if (this.paused) return;
      for (const e of ascending(conv, page.entries)) this.offer(log, e);
      const more = page.nextSeq !== 0n && page.entries.length > 0;
      if (more && log.known > before) continue;
      if (log.known >= want.seq && !log.hasGap()) return;
      if (++stale > FILL_STALE_RETRIES) {
        throw new Error(`history stops at ${log.known}, the conversation has ${Math.max(want.seq, log.known + 1)}`);
      }
      await new Promise((r) => setTimeout(r, FILL_STALE_WAIT_MS));
    }
  }

  private take(conv: string, fallback: Want): Want {
    const want = this.queued.get(conv) ?? fallback;
    this.queued.delete(conv);
    return want;
  }

  private create(conv: string): ConversationLog {
    const log = new ConversationLog();
    this.logs.set(conv, log);
    return log;
  }

  private offer(log: ConversationLog, e: LogEvent): void {
    if (this.paused) return;
    for (const ready of log.offer(e)) this.sink.deliver(ready);
  }

  /** Runs `step` after the conversation's earlier steps; a failure is reported, not thrown. */
  private serial<T>(conv: string, step: () => Promise<T>, onError: T): Promise<T> {
    const run = (this.chains.get(conv) ?? Promise.resolve()).then(step).catch((e: unknown) => {
      this.queued.delete(conv);
      this.sink.error(`${conv}: ${e instanceof Error ? e.message : String(e)}`);
      return onError;
    });
    this.chains.set(conv, run);
    return run;
  }
}

function ascending(conv: string, entries: HistoryEntry[]): LogEvent[] {
  return entries
    .filter((h) => h.event)
    .map((h) => ({
      conversationId: conv,
      seq: Number(h.event!.convSeq),
      streamSeq: Number(h.streamSeq),
      event: h.event!,
      recalled: h.recalled,
      edited: h.edited,
    }))
    .sort((a, b) => a.seq - b.seq);
}
