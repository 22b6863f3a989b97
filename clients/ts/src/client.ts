// The client of docs/protocol.md: connect with a token, reconnect with
// jittered backoff, sync after every (re)connect, fill gaps from history,
// hand each conversation's events to the app once and in order, keep an
// outbox so a send survives reconnects, acknowledge deliveries, and report
// each send's status SENT -> STORED -> DELIVERED -> READ.
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  AckStatus,
  ErrorCode,
  ReceiptKind,
  type ConversationChange,
  type Envelope,
  type ReceiptUpdate,
  type SendMessageSchema,
  type TypingNotice,
  type PresenceUpdate,
} from "./gen/im/v1/client_pb.js";
import type { MediaRef } from "./gen/im/v1/common_pb.js";
import type { ConvEvent } from "./gen/im/v1/events_pb.js";
import type { Profile } from "./gen/im/v1/readmodel_pb.js";
import { backoffDelay, DEFAULT_BACKOFF, type Backoff } from "./backoff.js";
import { ConversationLog, type LogEvent } from "./conversation.js";
import { Emitter } from "./emitter.js";
import { HttpApi, type FetchLike, type SearchKind, type SearchOptions } from "./http.js";
import type { SearchPage } from "./gen/im/v1/query_pb.js";
import { Outbox, type OutgoingMessage } from "./outbox.js";
import { decodeFrame, encodeFrame, subprotocol, type Wire } from "./wire.js";
import { Recovery } from "./recovery.js";

/** The part of the WebSocket API the client uses (browsers' and `ws`'s both fit). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export interface ClientOptions {
  /** The gateway's base URL, e.g. `http://127.0.0.1:8080`. */
  url: string;
  /** A JWT, or a function asked for one before every (re)connect. */
  token: string | (() => string | Promise<string>);
  deviceId?: string;
  wire?: Wire;
  /** Last conv_seq held per conversation, as `known()` returned it before. */
  known?: Record<string, number>;
  backoff?: Backoff;
  /** Heartbeat period: the gateway drops a connection silent for 45 s. */
  heartbeatMs?: number;
  /** Events a conversation new to this client starts with (its latest). */
  tailSize?: number;
  webSocket?: (url: string, protocols: string[]) => WebSocketLike;
  /**
   * Where `online`/`offline` events come from (the browser's `window` by
   * default): offline closes the connection and stops retrying, online
   * reconnects at once and syncs. None outside a browser.
   */
  network?: EventTarget;
  fetch?: FetchLike;
  random?: () => number;
}

export interface ClientEvents {
  connected: { userId: string; deviceId: string };
  disconnected: { code: number; reason: string; retryInMs: number };
  /** A conversation event, once, in conv_seq order per conversation. */
  event: LogEvent;
  /** A send's status changed. */
  status: OutgoingMessage;
  receipt: ReceiptUpdate;
  typing: TypingNotice;
  /** A contact (someone sharing a conversation) came online or went offline. */
  presence: PresenceUpdate;
  /**
   * People news from the log: a contact request to or from this user, its
   * acceptance or decline, a contact ended, a block of this user's own or a
   * profile or privacy change of their own (from another device). `other`
   * is the other user of the pair (empty for the user's own log).
   */
  people: { type: string; actor: string; other: string; event: ConvEvent };
  /** A contact's profile changed. */
  profile: Profile;
  /** Conversations changed since last known, with the server's unread counts. */
  sync: ConversationChange[];
  /** An error not tied to one send (a failed history page, a bad frame). */
  error: { code: string; message: string };
}

export interface SendOptions {
  conversationId?: string;
  toUserId?: string;
  text?: string;
  media?: MediaRef;
  /** Free-form strings kept with the message; search reads `name` and `caption` of a media message. */
  meta?: Record<string, string>;
  /** The idempotency key; one is made when absent. */
  clientMsgId?: string;
}

/** Ids of a user's own log and of a pair's (docs/protocol.md "People"): not conversations. */
export function isPeopleLog(conversationId: string): boolean {
  return conversationId.startsWith("us_") || conversationId.startsWith("ct_");
}

/** 15 s: a third of the gateway's 45 s idle cut, as docs/protocol.md asks. */
export const HEARTBEAT_MS = 15_000;
/** Deliveries acknowledged together: one cumulative ack per conversation per window. */
export const ACK_DEBOUNCE_MS = 250;
/** The gateway closes a connection on a larger frame (1009): refused here instead. */
export const FRAME_BYTES_MAX = 64 * 1024;
/** Sends of one message before it is reported failed: a gateway that keeps refusing it for minutes. */
export const SEND_ATTEMPTS_MAX = 20;
/** Error codes after which a send is retried with its id: the outcome is unknown or was not reached. */
const RETRYABLE = new Set([ErrorCode.UNAVAILABLE, ErrorCode.CONFLICT, ErrorCode.TIMEOUT, ErrorCode.RATE_LIMITED]);

export class ImClient extends Emitter<ClientEvents> {
  readonly http: HttpApi;
  readonly deviceId: string;
  userId = "";
  private readonly opts: Required<Pick<ClientOptions, "wire" | "backoff" | "heartbeatMs" | "random">> & ClientOptions;
  private ws: WebSocketLike | undefined;
  private live = false;
  private stopped = true;
  /** The device is offline: no attempts until it is back. */
  private offline = false;
  private readonly onOffline = () => this.goOffline();
  private readonly onOnline = () => this.goOnline();
  private attempt = 0;
  private lastFrameAt = 0;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private acks = new Map<string, ReturnType<typeof setTimeout>>();
  private readonly outbox = new Outbox();
  private readonly recovery: Recovery;

  constructor(opts: ClientOptions) {
    super();
    this.opts = { wire: "proto", backoff: DEFAULT_BACKOFF, heartbeatMs: HEARTBEAT_MS, random: Math.random, ...opts };
    this.deviceId = opts.deviceId ?? "web";
    const fetchFn = opts.fetch ?? ((i: string, init?: RequestInit) => globalThis.fetch(i, init));
    this.http = new HttpApi(opts.url.replace(/\/$/, ""), () => this.token(), fetchFn);
    this.recovery = new Recovery(this.http, opts.known ?? {}, opts.tailSize ?? 50, {
      deliver: (e) => this.deliverToApp(e),
      error: (message) => this.emit("error", { code: "history", message }),
    });
  }

  /** Connects, and keeps connecting until `stop`. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.recovery.pause(false);
    this.network()?.addEventListener("offline", this.onOffline);
    this.network()?.addEventListener("online", this.onOnline);
    void this.connect();
  }

  /** Closes for good: no reconnect. Unanswered sends stay in the outbox. */
  stop(): void {
    this.stopped = true;
    this.recovery.pause(true);
    this.network()?.removeEventListener("offline", this.onOffline);
    this.network()?.removeEventListener("online", this.onOnline);
    this.cancelTimers();
    for (const t of this.acks.values()) clearTimeout(t);
    this.acks.clear();
    this.drop(1000, "client stopped");
  }

  /**
   * Closes the socket and treats it as closed at once: a browser's close on
   * a dead link waits for a handshake that may take tens of seconds.
   */
  private drop(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      // already closing
    }
    this.onClosed(code, reason);
  }

  private network(): EventTarget | undefined {
    return this.opts.network ?? (typeof window === "undefined" ? undefined : window);
  }

  private goOffline(): void {
    this.offline = true;
    this.cancelTimers();
    this.drop(4001, "device offline");
  }

  private goOnline(): void {
    if (!this.offline) return;
    this.offline = false;
    this.attempt = 0;
    this.cancelTimers();
    if (!this.ws && !this.stopped) void this.connect();
  }

  private cancelTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }

  get connected(): boolean {
    return this.live;
  }

  /** Last conv_seq held per conversation: persist it, pass it back as `known`. */
  known(): Record<string, number> {
    return this.recovery.known();
  }

  /** The log of one conversation as this client holds it. */
  conversation(conversationId: string): ConversationLog | undefined {
    return this.recovery.log(conversationId);
  }

  /** Queues a send; it goes out now or on the next connect, with the same id until answered. */
  send(o: SendOptions): OutgoingMessage {
    const body: MessageInitShape<typeof SendMessageSchema>["body"] = o.media
      ? { case: "media", value: o.media }
      : { case: "text", value: o.text ?? "" };
    const clientMsgId = o.clientMsgId ?? newId(this.opts.random);
    const send = { conversationId: o.conversationId ?? "", toUserId: o.toUserId ?? "", clientMsgId, body, meta: o.meta ?? {} };
    const bytes = encodeFrame(this.opts.wire, { case: "send", value: send });
    const size = typeof bytes === "string" ? new TextEncoder().encode(bytes).length : bytes.length;
    if (size > FRAME_BYTES_MAX) throw new Error(`message too large: ${size} bytes, at most ${FRAME_BYTES_MAX}`);
    const msg: OutgoingMessage = {
      clientMsgId,
      send,
      status: "queued",
      conversationId: o.conversationId ?? "",
      convSeq: 0,
      streamSeq: 0,
      reason: "",
      attempts: 0,
      retryAt: 0,
    };
    this.outbox.add(msg);
    this.emit("status", msg);
    this.next(msg);
    return msg;
  }

  /** The user has read `conversationId` up to `upTo` (default: all it holds). */
  markRead(conversationId: string, upTo?: number): void {
    const upToSeq = BigInt(upTo ?? this.recovery.log(conversationId)?.known ?? 0);
    if (upToSeq > 0n) this.write({ case: "read", value: { conversationId, upToSeq } });
  }

  setTyping(conversationId: string, typing: boolean): void {
    this.write({ case: "typing", value: { conversationId, typing } });
  }

  /** Makes sure `conversationId` is loaded (its latest events) and returns its log. */
  open(conversationId: string): Promise<ConversationLog> {
    return this.recovery.open(conversationId);
  }

  /** Full-text search (`HttpApi.search`): messages, conversations or people. */
  search(q: string, kind?: SearchKind, o?: SearchOptions): Promise<SearchPage> {
    return this.http.search(q, kind, o);
  }

  /** Scroll-back: up to `limit` events before the oldest held, oldest first. */
  loadOlder(conversationId: string, limit = 50): Promise<LogEvent[]> {
    return this.recovery.older(conversationId, limit);
  }

  private async token(): Promise<string> {
    const t = this.opts.token;
    return typeof t === "string" ? t : await t();
  }

  private async connect(): Promise<void> {
    if (this.stopped || this.offline || this.ws) return;
    let token: string;
    try {
      token = await this.token();
    } catch (e) {
      this.emit("error", { code: "token", message: String(e) });
      return this.reconnectLater(0, "no token");
    }
    if (this.stopped || this.offline || this.ws) return;
    const base = this.opts.url.replace(/^http/, "ws").replace(/\/$/, "");
    const url = `${base}/v1/ws?device_id=${encodeURIComponent(this.deviceId)}&access_token=${encodeURIComponent(token)}`;
    const make = this.opts.webSocket ?? ((u: string, p: string[]) => new WebSocket(u, p) as unknown as WebSocketLike);
    const ws = make(url, [subprotocol(this.opts.wire)]);
    if (this.stopped || this.offline) return ws.close(1000, "client stopped");
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let first = true;
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastFrameAt = Date.now();
      for (const env of decodeFrame(ev.data as string | ArrayBuffer)) {
        this.handle(env, first);
        if (env.payload.case === "connected") first = false;
      }
    };
    ws.onclose = (ev) => {
      if (ws === this.ws) this.onClosed(ev.code, ev.reason);
    };
    ws.onerror = () => {};
  }

  private onClosed(code: number, reason: string): void {
    this.live = false;
    this.ws = undefined;
    clearInterval(this.heartbeat);
    for (const msg of this.outbox.unanswered()) msg.status = "queued";
    if (this.stopped) return this.emit("disconnected", { code, reason, retryInMs: -1 });
    this.reconnectLater(code, reason);
  }

  private reconnectLater(code: number, reason: string): void {
    if (this.offline) return this.emit("disconnected", { code, reason, retryInMs: -1 });
    const delay = backoffDelay(this.attempt++, this.opts.backoff, this.opts.random);
    this.emit("disconnected", { code, reason, retryInMs: delay });
    this.later(delay, () => void this.connect());
  }

  private handle(env: Envelope, firstConnected: boolean): void {
    const p = env.payload;
    switch (p.case) {
      case "connected":
        return this.onConnected(p.value.userId, firstConnected);
      case "syncResponse":
        this.emit("sync", p.value.changed);
        return this.recovery.onSync(p.value.changed);
      case "deliver":
        // A user's or a pair's log is news, not a conversation to fill.
        if (isPeopleLog(p.value.conversationId)) return this.onPeople(p.value.eventType, p.value.event);
        return this.recovery.onDeliver(p.value);
      case "sendAck":
        return this.onAck(p.value.clientMsgId, p.value);
      case "receiptUpdate":
        return this.onReceipt(p.value);
      case "typingNotice":
        return this.emit("typing", p.value);
      case "presence":
        return this.emit("presence", p.value);
      case "profile":
        return this.emit("profile", p.value);
      case "error":
        return this.onError(p.value.clientMsgId, p.value.code, p.value.message);
      default:
        return;
    }
  }

  private onPeople(type: string, event: ConvEvent | undefined): void {
    if (!event) return;
    const named = event.kind.value && "userId" in event.kind.value ? String(event.kind.value.userId) : "";
    const other = named === this.userId ? event.actor : named;
    this.emit("people", { type, actor: event.actor, other, event });
  }

  private onConnected(userId: string, firstOnSocket: boolean): void {
    this.live = true;
    this.attempt = 0;
    this.userId = userId;
    this.emit("connected", { userId, deviceId: this.deviceId });
    // Deliveries made while the link was down may be missed: sync (step 1).
    const known = Object.fromEntries(Object.entries(this.known()).map(([c, s]) => [c, BigInt(s)]));
    this.write({ case: "sync", value: { known } });
    if (firstOnSocket) {
      for (const msg of this.outbox.heads()) this.transmit(msg);
      clearInterval(this.heartbeat);
      this.heartbeat = setInterval(() => this.beat(), this.opts.heartbeatMs);
    }
  }

  private beat(): void {
    // Three periods without a frame (acks included): the link is dead though TCP has not said so.
    if (Date.now() - this.lastFrameAt > 3 * this.opts.heartbeatMs) {
      this.drop(4000, "no answer to heartbeats");
      return;
    }
    this.write({ case: "heartbeat", value: { clientTimeMs: BigInt(Date.now()) } });
  }

  private onAck(clientMsgId: string, a: { status: AckStatus; conversationId: string; convSeq: bigint; streamSeq: bigint; reason: string }): void {
    const msg = this.outbox.get(clientMsgId);
    if (!msg || msg.status === "stored" || msg.status === "delivered" || msg.status === "read") return;
    if (a.status === AckStatus.REJECTED) {
      msg.status = "rejected";
      msg.reason = a.reason;
      this.outbox.settle(msg);
    } else {
      msg.status = "stored";
      msg.conversationId = a.conversationId;
      msg.convSeq = Number(a.convSeq);
      msg.streamSeq = Number(a.streamSeq);
      this.outbox.markStored(msg);
    }
    this.emit("status", msg);
    this.next(msg);
  }

  /** Sends the head of `msg`'s lane if it waits and the connection is live. */
  private next(msg: OutgoingMessage): void {
    const head = this.outbox.headOf(msg);
    if (this.live && head?.status === "queued" && head.retryAt <= Date.now()) this.transmit(head);
  }

  private onReceipt(r: ReceiptUpdate): void {
    this.emit("receipt", r);
    if (r.userId === this.userId) return;
    const to = r.kind === ReceiptKind.READ ? "read" : "delivered";
    for (const msg of this.outbox.storedUpTo(r.conversationId, Number(r.upToSeq))) {
      if (msg.status === "read" || msg.status === to) continue;
      msg.status = to;
      this.emit("status", msg);
    }
  }

  private onError(clientMsgId: string, code: ErrorCode, message: string): void {
    const msg = clientMsgId ? this.outbox.get(clientMsgId) : undefined;
    if (!msg || msg.status !== "sent") {
      return this.emit("error", { code: ErrorCode[code] ?? String(code), message });
    }
    if (RETRYABLE.has(code) && msg.attempts < SEND_ATTEMPTS_MAX) {
      const delay = backoffDelay(msg.attempts, this.opts.backoff, this.opts.random);
      msg.status = "queued";
      msg.retryAt = Date.now() + delay;
      // The timer may fire a hair before the clock reads retryAt: it ends the wait itself.
      this.later(delay, () => {
        msg.retryAt = 0;
        this.next(msg);
      });
      return;
    }
    msg.status = "failed";
    msg.reason = `${ErrorCode[code] ?? code}: ${message}`;
    this.outbox.settle(msg);
    this.emit("status", msg);
    this.next(msg);
  }

  private transmit(msg: OutgoingMessage): void {
    msg.attempts++;
    if (this.write({ case: "send", value: msg.send })) {
      msg.status = "sent";
      this.emit("status", msg);
    }
  }

  private deliverToApp(e: LogEvent): void {
    this.emit("event", e);
    if (this.acks.has(e.conversationId)) return;
    this.acks.set(
      e.conversationId,
      setTimeout(() => {
        this.acks.delete(e.conversationId);
        const upToSeq = BigInt(this.recovery.log(e.conversationId)?.known ?? 0);
        this.write({ case: "deliveryAck", value: { conversationId: e.conversationId, upToSeq, deviceId: this.deviceId } });
      }, ACK_DEBOUNCE_MS),
    );
  }

  private write(payload: Parameters<typeof encodeFrame>[1]): boolean {
    if (!this.live || !this.ws) return false;
    this.ws.send(encodeFrame(this.opts.wire, payload));
    return true;
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }
}

function newId(random: () => number): string {
  return `c-${Date.now().toString(36)}-${Math.floor(random() * 2 ** 48).toString(36)}`;
}
