// The recovery algorithm of docs/protocol.md, against a scripted gateway.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ImClient, SEND_ATTEMPTS_MAX, type ClientOptions } from "../../src/client.js";
import type { LogEvent } from "../../src/conversation.js";
import type { OutgoingMessage, SendStatus } from "../../src/outbox.js";
import { AckStatus, ErrorCode, ReceiptKind } from "../../src/gen/im/v1/client_pb.js";
import { FakeGateway } from "./fake.js";
import { create } from "@bufbuild/protobuf";
import { ConvEventSchema } from "../../src/gen/im/v1/events_pb.js";

/** Lets promises and due timers run (fake clock). */
async function settle(ms = 0): Promise<void> {
  for (let i = 0; i < 10; i++) await vi.advanceTimersByTimeAsync(i === 0 ? ms : 0);
}

function setup(opts: Partial<ClientOptions> = {}, gw = new FakeGateway()) {
  const client = new ImClient({
    url: "http://gw.test",
    token: "t",
    webSocket: gw.socket,
    fetch: gw.fetch,
    random: () => 0.5,
    ...opts,
  });
  const events: LogEvent[] = [];
  const statuses: [string, SendStatus][] = [];
  client.on("event", (e) => events.push(e));
  client.on("status", (m: OutgoingMessage) => statuses.push([m.clientMsgId, m.status]));
  const texts = () => events.map((e) => `${e.conversationId}#${e.seq}`);
  return { client, gw, events, statuses, texts };
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("connecting", () => {
  it("syncs after Connected and again after every reconnect, with what it holds", async () => {
    const { client, gw } = setup();
    client.start();
    await settle();
    expect(gw.last.url).toContain("/v1/ws?device_id=web&access_token=t");
    gw.last.accept();
    expect(gw.last.sentOf("sync")).toEqual([expect.objectContaining({ known: {} })]);
    const a = gw.append("c1", "one");
    gw.last.push(gw.deliverOf(a));
    gw.last.drop();
    await settle(60_000);
    expect(gw.sockets).toHaveLength(2);
    gw.last.accept();
    expect(gw.last.sentOf("sync")[0]!.known).toEqual({ c1: 1n });
  });

  it("waits a jittered, doubling, capped delay between attempts and resets once connected", async () => {
    const delays: number[] = [];
    let r = 0;
    const randoms = [0, 1];
    const { client, gw } = setup({ backoff: { initialMs: 100, maxMs: 1_000 }, random: () => randoms[r++ % 2]! });
    client.on("disconnected", (d) => delays.push(d.retryInMs));
    client.start();
    await settle();
    for (let i = 0; i < 6; i++) {
      gw.last.drop();
      await settle(1_000);
    }
    // Ceilings 100, 200, 400, 800, 1000, 1000; random 0 gives half, 1 the ceiling.
    expect(delays).toEqual([50, 200, 200, 800, 500, 1_000]);
    gw.last.accept();
    gw.last.drop();
    expect(delays[6]).toBeLessThanOrEqual(100);
  });

  it("goes quiet while the device is offline and reconnects at once when it is back", async () => {
    const network = new EventTarget();
    const { client, gw } = setup({ network });
    client.start();
    await settle();
    gw.last.accept();
    network.dispatchEvent(new Event("offline"));
    expect(gw.last.readyState).toBe(3);
    await settle(120_000);
    expect(gw.sockets).toHaveLength(1); // no attempts while offline
    network.dispatchEvent(new Event("online"));
    await settle();
    expect(gw.sockets).toHaveLength(2);
    gw.last.accept();
    expect(gw.last.sentOf("sync")).toHaveLength(1);
    client.stop();
    network.dispatchEvent(new Event("online"));
    await settle();
    expect(gw.sockets).toHaveLength(2); // stopped: the events are no longer heard
  });

  it("speaks JSON when asked", async () => {
    const gw = new FakeGateway("json");
    const { client, texts } = setup({ wire: "json" }, gw);
    client.start();
    await settle();
    gw.last.accept();
    gw.last.push(gw.deliverOf(gw.append("c1", "hi")));
    expect(texts()).toEqual(["c1#1"]);
  });

  it("closes a connection that stops answering heartbeats and reconnects", async () => {
    const { client, gw } = setup({ heartbeatMs: 1_000 });
    client.start();
    await settle();
    gw.last.accept();
    await settle(2_500);
    expect(gw.last.sentOf("heartbeat").length).toBeGreaterThanOrEqual(2);
    await settle(2_000);
    expect(gw.sockets[0]!.readyState).toBe(3);
    await settle(1_000);
    expect(gw.sockets).toHaveLength(2);
  });
});

describe("recovery", () => {
  it("fills a gap from history and hands each event out once, in order", async () => {
    const { client, gw, texts } = setup();
    client.start();
    await settle();
    gw.last.accept();
    const sent = [1, 2, 3, 4, 5].map((i) => gw.append("c1", `m${i}`));
    gw.last.push(gw.deliverOf(sent[0]!));
    gw.last.push(gw.deliverOf(sent[3]!)); // 2 and 3 were missed
    await settle();
    expect(gw.historyCalls.map((q) => q.get("fromSeq"))).toEqual(["2"]);
    expect(gw.historyCalls[0]!.get("minPosition")).toBe(String(sent[3]!.streamSeq));
    // The page overlapped 4 (held) and carried 5 (not delivered yet); 4 and 5 delivered again later.
    gw.last.push(gw.deliverOf(sent[3]!), gw.deliverOf(sent[4]!));
    await settle();
    expect(texts()).toEqual(["c1#1", "c1#2", "c1#3", "c1#4", "c1#5"]);
  });

  it("pages history for a notification that carries no event", async () => {
    const { client, gw, texts } = setup();
    client.start();
    await settle();
    gw.last.accept();
    const first = gw.append("big", "first");
    const a = gw.append("big", "hello");
    gw.last.push(gw.deliverOf(first), gw.deliverOf(a, false));
    await settle();
    expect(gw.historyCalls.at(-1)!.get("minPosition")).toBe(String(a.streamSeq));
    expect(texts()).toEqual(["big#1", "big#2"]);
  });

  it("after a reconnect pages from known+1 what sync says changed, over several pages", async () => {
    const { client, gw, texts } = setup();
    client.start();
    await settle();
    gw.last.accept();
    gw.last.push(gw.deliverOf(gw.append("c1", "m1")));
    gw.last.drop();
    for (let i = 2; i <= 250; i++) gw.append("c1", `m${i}`);
    await settle(60_000);
    gw.last.accept();
    gw.last.push({ case: "syncResponse", value: { changed: [{ conversationId: "c1", lastSeq: 250n, unread: 249n }] } });
    await settle();
    expect(gw.historyCalls.map((q) => q.get("fromSeq"))).toEqual(["2", "102", "202"]);
    expect(texts()).toEqual(Array.from({ length: 250 }, (_, i) => `c1#${i + 1}`));
  });

  it("starts a conversation new to it at its tail and scrolls back on demand", async () => {
    const { client, gw, texts } = setup({ tailSize: 20 });
    for (let i = 1; i <= 45; i++) gw.append("old", `m${i}`);
    client.start();
    await settle();
    gw.last.accept();
    gw.last.push({ case: "syncResponse", value: { changed: [{ conversationId: "old", lastSeq: 45n }] } });
    await settle();
    expect(texts()).toEqual(Array.from({ length: 20 }, (_, i) => `old#${i + 26}`));
    const older = await client.loadOlder("old", 20);
    expect(older.map((e) => e.seq)).toEqual(Array.from({ length: 20 }, (_, i) => i + 6));
    expect((await client.loadOlder("old", 20)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(await client.loadOlder("old", 20)).toEqual([]);
  });

  it("hands a new conversation's events out once when its first deliveries overtake the page opening it", async () => {
    const { client, gw, texts } = setup();
    client.start();
    await settle();
    gw.last.accept();
    const created = gw.append("dm_x", "created");
    const first = gw.append("dm_x", "hi");
    let open!: () => void;
    gw.gate = new Promise((r) => (open = r));
    const opened = client.open("dm_x"); // its page is in flight...
    await settle();
    gw.last.push(gw.deliverOf(created), gw.deliverOf(first)); // ...when the deliveries come
    open();
    await opened;
    await settle();
    expect(texts()).toEqual(["dm_x#1", "dm_x#2"]);
  });

  it("joins deliveries that come while an unknown conversation's first page is in flight", async () => {
    const { client, gw, texts } = setup({ tailSize: 5 });
    client.start();
    await settle();
    gw.last.accept();
    const all = Array.from({ length: 11 }, (_, i) => gw.append("grp", `m${i + 1}`));
    gw.historyAt = all[9]!.streamSeq; // history has applied up to seq 10
    let open!: () => void;
    gw.gate = new Promise((r) => (open = r));
    gw.last.push(gw.deliverOf(all[9]!)); // added to a group at seq 10: its tail is asked for...
    await settle();
    gw.last.push(gw.deliverOf(all[10]!)); // ...and seq 11 comes before the page
    await settle();
    open(); // the page ends at 10: history has not applied 11 yet
    await settle();
    expect(texts()).toEqual(["grp#6", "grp#7", "grp#8", "grp#9", "grp#10"]);
    gw.historyAt = Infinity;
    await settle(2_000);
    expect(texts()).toEqual(["grp#6", "grp#7", "grp#8", "grp#9", "grp#10", "grp#11"]);
  });

  it("keeps paging while history lags what sync reported, and reports it if it never catches up", async () => {
    const errors: string[] = [];
    const { client, gw, texts } = setup();
    client.on("error", (e) => errors.push(e.message));
    client.start();
    await settle();
    gw.last.accept();
    gw.last.push(gw.deliverOf(gw.append("c1", "m1")));
    const later = [2, 3, 4, 5].map((i) => gw.append("c1", `m${i}`));
    gw.historyAt = later[1]!.streamSeq; // up to seq 3
    gw.last.push({ case: "syncResponse", value: { changed: [{ conversationId: "c1", lastSeq: 5n }] } });
    await settle(1_200);
    expect(texts()).toEqual(["c1#1", "c1#2", "c1#3"]);
    gw.historyAt = Infinity;
    await settle(1_000);
    expect(texts()).toEqual(["c1#1", "c1#2", "c1#3", "c1#4", "c1#5"]);
    gw.append("c1", "m6");
    gw.historyAt = 0;
    gw.last.push({ case: "syncResponse", value: { changed: [{ conversationId: "c1", lastSeq: 6n }] } });
    await settle(30_000);
    expect(errors).toEqual([expect.stringContaining("history stops at 5")]);
  });

  it("merges a burst of notifications into one fill that reaches the last", async () => {
    const { client, gw, texts } = setup();
    client.start();
    await settle();
    gw.last.accept();
    gw.last.push(gw.deliverOf(gw.append("big", "m1")));
    const burst = [2, 3, 4].map((i) => gw.append("big", `m${i}`));
    let open!: () => void;
    gw.gate = new Promise((r) => (open = r));
    gw.last.push(gw.deliverOf(burst[0]!, false)); // its fill starts, page in flight
    await settle();
    gw.last.push(gw.deliverOf(burst[1]!, false), gw.deliverOf(burst[2]!, false)); // queued, merged
    open();
    await settle(1_000);
    expect(texts()).toEqual(["big#1", "big#2", "big#3", "big#4"]);
    const positions = gw.historyCalls.map((q) => Number(q.get("minPosition")));
    expect(positions.at(-1)).toBe(burst[2]!.streamSeq);
  });

  it("hands nothing out after stop, though a page was in flight, and leaves no timer running", async () => {
    const { client, gw, texts } = setup();
    client.start();
    await settle();
    gw.last.accept();
    gw.append("c1", "m1");
    let open!: () => void;
    gw.gate = new Promise((r) => (open = r));
    gw.last.push({ case: "syncResponse", value: { changed: [{ conversationId: "c1", lastSeq: 1n }] } });
    await settle();
    client.stop();
    open();
    await settle(60_000);
    expect(texts()).toEqual([]);
    expect(gw.sockets).toHaveLength(1);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("acknowledges deliveries cumulatively, once per window", async () => {
    const { client, gw } = setup();
    client.start();
    await settle();
    gw.last.accept();
    for (let i = 0; i < 3; i++) gw.last.push(gw.deliverOf(gw.append("c1", `m${i}`)));
    await settle(300);
    expect(gw.last.sentOf("deliveryAck")).toEqual([expect.objectContaining({ conversationId: "c1", upToSeq: 3n, deviceId: "web" })]);
    client.markRead("c1");
    expect(gw.last.sentOf("read")).toEqual([expect.objectContaining({ conversationId: "c1", upToSeq: 3n })]);
  });
});

describe("people", () => {
  it("hands people news out as `people` events, never as a conversation to fill or acknowledge", async () => {
    const { client, gw, events } = setup();
    const people: { type: string; actor: string; other: string }[] = [];
    const profiles: string[] = [];
    client.on("people", (p) => people.push({ type: p.type, actor: p.actor, other: p.other }));
    client.on("profile", (p) => profiles.push(p.displayName));
    client.start();
    await settle();
    gw.last.accept("alice");
    const request = create(ConvEventSchema, {
      conversationId: "ct_0123",
      convSeq: 2n,
      actor: "bob",
      kind: { case: "contactRequested", value: { userId: "alice" } },
    });
    const accepted = create(ConvEventSchema, {
      conversationId: "ct_0123",
      convSeq: 3n,
      actor: "alice",
      kind: { case: "contactAccepted", value: { userId: "bob" } },
    });
    const deliver = (event: typeof request, eventType: string) => ({
      case: "deliver" as const,
      value: { conversationId: event.conversationId, convSeq: event.convSeq, streamSeq: 9n, eventType, event },
    });
    // Seq 2 after nothing known would be a gap in a conversation: not here.
    gw.last.push(deliver(request, "contact_requested"), deliver(accepted, "contact_accepted"));
    gw.last.push({ case: "profile", value: { userId: "bob", displayName: "鲍勃" } });
    await settle(300);
    expect(people).toEqual([
      { type: "contact_requested", actor: "bob", other: "bob" },
      { type: "contact_accepted", actor: "alice", other: "bob" },
    ]);
    expect(profiles).toEqual(["鲍勃"]);
    expect(events).toEqual([]);
    expect(gw.historyCalls).toEqual([]);
    expect(gw.last.sentOf("deliveryAck")).toEqual([]);
    expect(client.known()).toEqual({});
  });
});

describe("sending", () => {
  it("keeps an unanswered send across a reconnect and resends it with the same id: one STORED", async () => {
    const { client, gw, statuses } = setup();
    client.start();
    await settle();
    gw.last.accept();
    const msg = client.send({ conversationId: "c1", text: "hello" });
    expect(gw.last.sentOf("send")).toEqual([expect.objectContaining({ clientMsgId: msg.clientMsgId })]);
    gw.last.drop(); // the answer was lost with the connection
    await settle(60_000);
    gw.last.accept();
    const resent = gw.last.sentOf("send");
    expect(resent.map((s) => s.clientMsgId)).toEqual([msg.clientMsgId]);
    const ack = { clientMsgId: msg.clientMsgId, conversationId: "c1", convSeq: 7n, streamSeq: 1007n };
    gw.last.push({ case: "sendAck", value: { ...ack, status: AckStatus.DUPLICATE } });
    gw.last.push({ case: "sendAck", value: { ...ack, status: AckStatus.DUPLICATE } });
    expect(statuses.filter(([, s]) => s === "stored")).toHaveLength(1);
    expect(msg).toMatchObject({ status: "stored", convSeq: 7 });
  });

  it("queues a send made offline and sends it once connected", async () => {
    const { client, gw } = setup();
    const msg = client.send({ toUserId: "bob", text: "hi", clientMsgId: "c-1" });
    expect(msg.status).toBe("queued");
    client.start();
    await settle();
    gw.last.accept();
    expect(gw.last.sentOf("send")).toEqual([expect.objectContaining({ toUserId: "bob", clientMsgId: "c-1" })]);
    expect(msg.status).toBe("sent");
  });

  it("reports SENT, STORED, DELIVERED, READ from the acks and other users' receipts", async () => {
    const { client, gw, statuses } = setup();
    client.start();
    await settle();
    gw.last.accept("alice");
    client.send({ conversationId: "c1", text: "x", clientMsgId: "m" });
    gw.last.push({ case: "sendAck", value: { clientMsgId: "m", conversationId: "c1", convSeq: 3n, status: AckStatus.STORED } });
    const receipt = (userId: string, kind: ReceiptKind, upToSeq: bigint) =>
      ({ case: "receiptUpdate", value: { conversationId: "c1", userId, kind, upToSeq } }) as const;
    gw.last.push(receipt("alice", ReceiptKind.READ, 3n)); // her own device: no change
    gw.last.push(receipt("bob", ReceiptKind.DELIVERED, 2n)); // not this message yet
    gw.last.push(receipt("bob", ReceiptKind.DELIVERED, 3n));
    gw.last.push(receipt("bob", ReceiptKind.READ, 5n));
    gw.last.push(receipt("bob", ReceiptKind.DELIVERED, 5n)); // never back
    expect(statuses).toEqual([
      ["m", "queued"],
      ["m", "sent"],
      ["m", "stored"],
      ["m", "delivered"],
      ["m", "read"],
    ]);
  });

  it("retries a send after a retryable error with the same id, and fails it on a bad request", async () => {
    const { client, gw, statuses } = setup();
    client.start();
    await settle();
    gw.last.accept();
    client.send({ conversationId: "c1", text: "x", clientMsgId: "a" });
    client.send({ conversationId: "c2", text: "", clientMsgId: "b" });
    gw.last.push({ case: "error", value: { code: ErrorCode.TIMEOUT, clientMsgId: "a", message: "no outcome" } });
    gw.last.push({ case: "error", value: { code: ErrorCode.BAD_REQUEST, clientMsgId: "b", message: "empty" } });
    await settle(2_000);
    expect(gw.last.sentOf("send").map((s) => s.clientMsgId)).toEqual(["a", "b", "a"]);
    expect(statuses.at(-1)).toEqual(["a", "sent"]);
    expect(statuses).toContainEqual(["b", "failed"]);
    gw.last.push({ case: "sendAck", value: { clientMsgId: "b", status: AckStatus.STORED } }); // too late: settled
    expect(statuses.filter(([id]) => id === "b").at(-1)).toEqual(["b", "failed"]);
  });

  it("sends one conversation's messages one at a time, so a retried one is never overtaken", async () => {
    const { client, gw } = setup();
    client.start();
    await settle();
    gw.last.accept();
    for (const id of ["1", "2", "3"]) client.send({ conversationId: "c1", text: id, clientMsgId: id });
    client.send({ conversationId: "other", text: "x", clientMsgId: "o" });
    const sent = () => gw.last.sentOf("send").map((s) => s.clientMsgId);
    expect(sent()).toEqual(["1", "o"]);
    gw.last.push({ case: "error", value: { code: ErrorCode.RATE_LIMITED, clientMsgId: "1", message: "slow down" } });
    await settle(10);
    expect(sent()).toEqual(["1", "o"]); // 2 waits behind 1's retry
    await settle(2_000);
    expect(sent()).toEqual(["1", "o", "1"]);
    const stored = (id: string, seq: bigint) =>
      ({ case: "sendAck", value: { clientMsgId: id, conversationId: "c1", convSeq: seq, status: AckStatus.STORED } }) as const;
    gw.last.push(stored("1", 1n));
    expect(sent()).toEqual(["1", "o", "1", "2"]);
    gw.last.push(stored("2", 2n));
    expect(sent()).toEqual(["1", "o", "1", "2", "3"]);
    gw.last.drop(); // 3 unanswered: the next connection sends it first
    await settle(60_000);
    gw.last.accept();
    expect(sent()).toEqual(["3", "o"]);
  });

  it("waits out a retry's backoff though new sends arrive, and gives up after SEND_ATTEMPTS_MAX", async () => {
    const { client, gw, statuses } = setup({ backoff: { initialMs: 1_000, maxMs: 1_000 } });
    client.start();
    await settle();
    gw.last.accept();
    client.send({ conversationId: "c1", text: "a", clientMsgId: "a" });
    const limited = { case: "error", value: { code: ErrorCode.RATE_LIMITED, clientMsgId: "a", message: "slow down" } } as const;
    gw.last.push(limited);
    client.send({ conversationId: "c1", text: "b", clientMsgId: "b" });
    const sent = () => gw.last.sentOf("send").map((s) => s.clientMsgId);
    expect(sent()).toEqual(["a"]); // neither a nor b jumps the backoff
    await settle(1_000);
    expect(sent()).toEqual(["a", "a"]);
    for (let i = 2; i < SEND_ATTEMPTS_MAX; i++) {
      gw.last.push(limited);
      await settle(1_000);
    }
    expect(sent().filter((id) => id === "a")).toHaveLength(SEND_ATTEMPTS_MAX);
    gw.last.push(limited);
    expect(statuses).toContainEqual(["a", "failed"]);
    expect(sent().at(-1)).toBe("b"); // the lane moves on
  });

  it("refuses a message larger than a frame may be, before sending anything", async () => {
    const { client, gw } = setup();
    client.start();
    await settle();
    gw.last.accept();
    expect(() => client.send({ conversationId: "c1", text: "x".repeat(70_000) })).toThrow(/too large/);
    expect(gw.last.sentOf("send")).toEqual([]);
  });

  it("refuses a reused id and reports a rejection with its reason", async () => {
    const { client, gw, statuses } = setup();
    client.start();
    await settle();
    gw.last.accept();
    client.send({ conversationId: "c1", text: "x", clientMsgId: "r" });
    expect(() => client.send({ conversationId: "c1", text: "x", clientMsgId: "r" })).toThrow(/already in use/);
    gw.last.push({ case: "sendAck", value: { clientMsgId: "r", status: AckStatus.REJECTED, reason: "not_member" } });
    expect(statuses.at(-1)).toEqual(["r", "rejected"]);
  });
});
