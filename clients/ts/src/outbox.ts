// Sends the app asked for, kept until the gateway answers them: a send
// survives a reconnect and is retried with the same client_msg_id, so it is
// stored exactly once (docs/protocol.md "What the gateway guarantees").
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { SendMessageSchema } from "./gen/im/v1/client_pb.js";

export type SendStatus = "queued" | "sent" | "stored" | "delivered" | "read" | "rejected" | "failed";

export interface OutgoingMessage {
  clientMsgId: string;
  send: MessageInitShape<typeof SendMessageSchema>;
  status: SendStatus;
  conversationId: string;
  convSeq: number;
  streamSeq: number;
  reason: string;
  /** Attempts so far (resends after a retryable error or a reconnect). */
  attempts: number;
  /** Not sent again before this time (ms): a retry's backoff. */
  retryAt: number;
}

/**
 * Sends waiting for an answer. A full outbox refuses new sends at once
 * (`send` throws) rather than holding unbounded memory while offline.
 */
export const OUTBOX_MAX = 1_000;

/** Stored sends whose delivered/read status is still followed. */
export const TRACKED_MAX = 2_000;

export class Outbox {
  private waiting = new Map<string, OutgoingMessage>();
  private stored = new Map<string, OutgoingMessage>();

  add(msg: OutgoingMessage): void {
    if (this.waiting.has(msg.clientMsgId) || this.stored.has(msg.clientMsgId)) {
      throw new Error(`client_msg_id ${msg.clientMsgId} is already in use`);
    }
    if (this.waiting.size >= OUTBOX_MAX) throw new Error(`outbox full (${OUTBOX_MAX} unanswered sends)`);
    this.waiting.set(msg.clientMsgId, msg);
  }

  get(id: string): OutgoingMessage | undefined {
    return this.waiting.get(id) ?? this.stored.get(id);
  }

  /** Unanswered sends, oldest first. */
  unanswered(): OutgoingMessage[] {
    return [...this.waiting.values()];
  }

  /**
   * The oldest unanswered send of each lane: what goes out now. Sends of one
   * conversation go one at a time, so a retried send (rate limited, timed
   * out) is never overtaken by a later one: the log keeps the order the user
   * typed.
   */
  heads(): OutgoingMessage[] {
    const seen = new Set<string>();
    return this.unanswered().filter((m) => !seen.has(lane(m)) && seen.add(lane(m)));
  }

  /** The oldest unanswered send in `msg`'s lane. */
  headOf(msg: OutgoingMessage): OutgoingMessage | undefined {
    const l = lane(msg);
    return this.unanswered().find((m) => lane(m) === l);
  }

  /** The gateway stored it: follow it for delivered/read. */
  markStored(msg: OutgoingMessage): void {
    this.waiting.delete(msg.clientMsgId);
    this.stored.set(msg.clientMsgId, msg);
    if (this.stored.size > TRACKED_MAX) {
      this.stored.delete(this.stored.keys().next().value!);
    }
  }

  /** Answered for good (rejected, failed): forget it. */
  settle(msg: OutgoingMessage): void {
    this.waiting.delete(msg.clientMsgId);
  }

  /** Stored sends of `conv` at or below `upTo` that are behind `status`. */
  storedUpTo(conv: string, upTo: number): OutgoingMessage[] {
    return [...this.stored.values()].filter((m) => m.conversationId === conv && m.convSeq <= upTo);
  }
}

/** Sends that must keep their order: one conversation, or one recipient before the conversation exists. */
function lane(m: OutgoingMessage): string {
  return m.send.conversationId ? `c:${m.send.conversationId}` : `u:${m.send.toUserId ?? ""}`;
}
