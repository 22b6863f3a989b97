// A scripted gateway for unit tests: sockets whose frames the test reads and
import { expect } from "vitest";
// writes, and a history endpoint over an in-memory log. Only the SDK under
// test is real; the integration tests run against the real stack.
import { create, toJson, type MessageInitShape } from "@bufbuild/protobuf";
import { EnvelopeSchema, type Envelope } from "../../src/gen/im/v1/client_pb.js";
import { ConvEventSchema, type ConvEvent } from "../../src/gen/im/v1/events_pb.js";
import { HistoryPageSchema } from "../../src/gen/im/v1/query_pb.js";
import { decodeFrame, encodeFrame, type Wire } from "../../src/wire.js";
import type { WebSocketLike } from "../../src/client.js";

type Payload = MessageInitShape<typeof EnvelopeSchema>["payload"];

export class FakeSocket implements WebSocketLike {
  binaryType = "blob";
  readyState = 0;
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  /** Every envelope the client sent, decoded. */
  readonly sent: Envelope[] = [];

  constructor(
    readonly url: string,
    readonly wire: Wire,
  ) {}

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(...decodeFrame(data));
  }

  close(code = 1000, reason = ""): void {
    this.drop(code, reason);
  }

  /** The server accepts: open, then `Connected`. */
  accept(userId = "alice"): void {
    this.readyState = 1;
    this.onopen?.({});
    this.push({ case: "connected", value: { userId, deviceId: "d1" } });
  }

  /** One server frame holding `payloads` (several per frame, as the gateway batches). */
  push(...payloads: Payload[]): void {
    if (this.wire === "json") {
      for (const p of payloads) this.onmessage?.({ data: encodeFrame("json", p) });
      return;
    }
    const parts = payloads.map((p) => encodeFrame("proto", p) as Uint8Array);
    const frame = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      frame.set(p, at);
      at += p.length;
    }
    this.onmessage?.({ data: frame.buffer });
  }

  drop(code = 1006, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The payloads sent of one kind. */
  sentOf<K extends NonNullable<Envelope["payload"]["case"]>>(kind: K) {
    type Of = Extract<Envelope["payload"], { case: K; value: unknown }>["value"];
    return this.sent
      .map((e) => e.payload)
      .filter((p) => p.case === kind)
      .map((p) => p.value as Of);
  }
}

export class FakeGateway {
  readonly sockets: FakeSocket[] = [];
  /** Each conversation's log; an event's stream seq is 1000 + its index in `all`. */
  readonly logs = new Map<string, ConvEvent[]>();
  private streamSeqs = new Map<ConvEvent, number>();
  private nextStreamSeq = 1000;
  readonly historyCalls: URLSearchParams[] = [];
  /** While set, history answers wait for it: a page in flight. */
  gate: Promise<void> | undefined;
  /**
   * The history projection's applied position: events past it are not in
   * pages yet, and a `minPosition` past it is answered 503 (not yet).
   */
  historyAt = Infinity;

  constructor(readonly wire: Wire = "proto") {}

  socket = (url: string, protocols: string[]): WebSocketLike => {
    expect(protocols).toEqual([this.wire === "proto" ? "im.v1.proto" : "im.v1.json"]);
    const s = new FakeSocket(url, this.wire);
    this.sockets.push(s);
    return s;
  };

  get last(): FakeSocket {
    return this.sockets[this.sockets.length - 1]!;
  }

  /** Appends a text message to `conv`; returns the event and its stream seq. */
  append(conv: string, text: string, actor = "bob", clientMsgId = ""): { event: ConvEvent; streamSeq: number } {
    const log = this.logs.get(conv) ?? [];
    this.logs.set(conv, log);
    const event = create(ConvEventSchema, {
      conversationId: conv,
      convSeq: BigInt(log.length + 1),
      actor,
      clientMsgId,
      kind: { case: "messageSent", value: { body: { case: "text", value: text } } },
    });
    log.push(event);
    const streamSeq = this.nextStreamSeq++;
    this.streamSeqs.set(event, streamSeq);
    return { event, streamSeq };
  }

  /** The `deliver` payload of an appended event. */
  deliverOf(x: { event: ConvEvent; streamSeq: number }, withEvent = true): Payload {
    return {
      case: "deliver",
      value: {
        conversationId: x.event.conversationId,
        convSeq: x.event.convSeq,
        streamSeq: BigInt(x.streamSeq),
        eventType: "message_sent",
        event: withEvent ? x.event : undefined,
      },
    };
  }

  fetch = async (input: string): Promise<Response> => {
    const url = new URL(input);
    expect(url.pathname).toBe("/v1/history");
    const q = url.searchParams;
    this.historyCalls.push(q);
    await this.gate;
    if (Number(q.get("minPosition") ?? 0) > this.historyAt) {
      return new Response('{"code":"ERROR_CODE_UNAVAILABLE"}', { status: 503, headers: { "retry-after": "1" } });
    }
    const log = (this.logs.get(q.get("conversationId")!) ?? []).filter((e) => this.streamSeqs.get(e)! <= this.historyAt);
    const limit = Number(q.get("limit") ?? 50);
    let from = Number(q.get("fromSeq") ?? 0);
    let entries: ConvEvent[];
    let nextSeq = 0;
    if (q.get("direction") === "backward") {
      if (from === 0) from = log.length;
      entries = log.slice(Math.max(0, from - limit), from).reverse();
      nextSeq = Math.max(0, from - limit);
    } else {
      from = Math.max(from, 1);
      entries = log.slice(from - 1, from - 1 + limit);
      nextSeq = from - 1 + limit < log.length ? from + limit : 0;
    }
    const page = create(HistoryPageSchema, {
      entries: entries.map((event) => ({ event, streamSeq: BigInt(this.streamSeqs.get(event)!) })),
      nextSeq: BigInt(nextSeq),
    });
    return new Response(JSON.stringify(toJson(HistoryPageSchema, page)), {
      status: 200,
      headers: { "content-type": "application/json" },
    });
  };
}
