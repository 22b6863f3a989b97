// Per-conversation ordering (docs/protocol.md "Recovery"): events are handed
// to the app exactly once and in conv_seq order; anything that arrives past a
// gap waits here until history fills the gap.
import type { ConvEvent } from "./gen/im/v1/events_pb.js";

/** One event of a conversation's log as the app sees it. */
export interface LogEvent {
  conversationId: string;
  seq: number;
  /** IM_CONV stream sequence: a read position (`minPosition`). */
  streamSeq: number;
  event: ConvEvent;
  /** From history only: the message was recalled later (its body is gone). */
  recalled?: boolean;
  /** From history only: the text is the latest edit's. */
  edited?: boolean;
  /** Came as a live delivery (new to everyone), not from a history page. */
  live?: boolean;
}

/**
 * Events held past a gap, per conversation. Past it the highest are dropped:
 * they are in the log, and the gap fill pages them in again.
 */
export const PENDING_MAX = 1_000;

export class ConversationLog {
  /** The highest seq handed out with every lower one (0: none yet). */
  known: number;
  /** The lowest seq handed out (0: none): where scroll-back continues. */
  oldest = 0;
  private pending = new Map<number, LogEvent>();

  constructor(known = 0) {
    this.known = known;
  }

  /** Takes an event from any source; returns those now in order, once each. */
  offer(e: LogEvent): LogEvent[] {
    if (e.seq <= this.known || this.pending.has(e.seq)) return [];
    this.pending.set(e.seq, e);
    if (this.pending.size > PENDING_MAX) {
      this.pending.delete(Math.max(...this.pending.keys()));
    }
    const out: LogEvent[] = [];
    for (let next = this.pending.get(this.known + 1); next; next = this.pending.get(this.known + 1)) {
      this.pending.delete(next.seq);
      this.known = next.seq;
      out.push(next);
    }
    if (this.oldest === 0 && out.length > 0) this.oldest = out[0]!.seq;
    return out;
  }

  /** Something past `known` is held: `known + 1` is missing. */
  hasGap(): boolean {
    return this.pending.size > 0;
  }

  /** The highest stream position held: a history page must reach it. */
  heldPosition(): number {
    let max = 0;
    for (const e of this.pending.values()) max = Math.max(max, e.streamSeq);
    return max;
  }

  /** Start at the tail: what lies before `seq` is scroll-back, not a gap. */
  startAt(seq: number): void {
    if (this.known === 0 && seq > 1) this.known = seq - 1;
  }

  /** Older events were loaded by scroll-back, down to `seq`. */
  reachedBack(seq: number): void {
    this.oldest = this.oldest === 0 ? seq : Math.min(this.oldest, seq);
  }
}
