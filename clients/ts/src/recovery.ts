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

export interface RecoverySink {
  deliver(e: LogEvent): void;
  error(message: string): void;
}

export class Recovery {
  private logs = new Map<string, ConversationLog>();
  private chains = new Map<string, Promise<unknown>>();
  /** Fills asked for and not started yet: asking again adds nothing. */
  private queued = new Set<string>();

  constructor(
    private readonly http: HttpApi,
    known: Record<string, number>,
    private readonly tailSize: number,
    private readonly sink: RecoverySink,
  ) {
    for (const [conv, seq] of Object.entries(known)) this.logs.set(conv, new ConversationLog(seq));
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
      const log = this.logs.get(c.conversationId);
      if (!log) void this.tail(c.conversationId, 0);
      else if (Number(c.lastSeq) > log.known) void this.fill(c.conversationId, 0);
    }
  }

  onDeliver(d: Deliver): void {
    const conv = d.conversationId;
    const seq = Number(d.convSeq);
    const streamSeq = Number(d.streamSeq);
    let log = this.logs.get(conv);
    if (!log) {
      // New to this client: a brand-new conversation starts here; an older one at its tail.
      if (seq > 1 || !d.event) return void this.tail(conv, streamSeq);
      log = new ConversationLog();
      this.logs.set(conv, log);
    }
    // A notification (a large group) carries no event: page it (step 3).
    if (!d.event) return void this.fill(conv, streamSeq);
    this.offer(log, { conversationId: conv, seq, streamSeq, event: d.event });
    if (log.hasGap()) void this.fill(conv, 0);
  }

  async open(conv: string): Promise<ConversationLog> {
    if (!this.logs.has(conv)) await this.tail(conv, 0);
    await this.chains.get(conv);
    return this.logs.get(conv) ?? this.create(conv);
  }

  older(conv: string, limit: number): Promise<LogEvent[]> {
    return this.serial(conv, async () => {
      const log = this.logs.get(conv);
      if (!log || log.oldest <= 1) return [];
      const page = await this.http.history(conv, { fromSeq: log.oldest - 1, limit, backward: true });
      const events = ascending(conv, page.entries);
      if (events.length > 0) log.reachedBack(events[0]!.seq);
      return events;
    }, []);
  }

  /** Pages forward from the first missing seq until the log's end (`minPosition` reached). */
  private fill(conv: string, minPosition: number): Promise<void> {
    if (this.queued.has(conv)) return Promise.resolve();
    this.queued.add(conv);
    return this.serial(conv, async () => {
      this.queued.delete(conv);
      const log = this.logs.get(conv) ?? this.create(conv);
      for (;;) {
        const position = Math.max(minPosition, log.heldPosition());
        const page = await this.http.history(conv, { fromSeq: log.known + 1, limit: FILL_PAGE, minPosition: position });
        for (const e of ascending(conv, page.entries)) this.offer(log, e);
        if (page.nextSeq === 0n || page.entries.length === 0) return;
      }
    }, undefined);
  }

  /** A conversation new to this client: its latest events, then whatever follows. */
  private tail(conv: string, minPosition: number): Promise<void> {
    if (this.logs.has(conv)) return this.fill(conv, minPosition);
    return this.serial(conv, async () => {
      if (this.logs.has(conv)) return;
      const page = await this.http.history(conv, { limit: this.tailSize, backward: true, minPosition });
      const events = ascending(conv, page.entries);
      // A brand-new conversation may have started from its first delivery meanwhile: join it.
      let log = this.logs.get(conv);
      if (!log) {
        log = this.create(conv);
        if (events.length > 0) log.startAt(events[0]!.seq);
      }
      for (const e of events) this.offer(log, e);
      if (log.hasGap()) void this.fill(conv, 0);
    }, undefined);
  }

  private create(conv: string): ConversationLog {
    const log = new ConversationLog();
    this.logs.set(conv, log);
    return log;
  }

  private offer(log: ConversationLog, e: LogEvent): void {
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
