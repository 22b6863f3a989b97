// The SDK against the real stack (`imctl up`): what a chat app relies on.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ImClient, LogEvent, SendStatus } from "../../src/index.js";
import { Stack, until } from "./stack.js";

let stack: Stack;
const clients: ImClient[] = [];

beforeAll(async () => {
  stack = await Stack.start();
}, 120_000);

afterAll(async () => {
  for (const c of clients) c.stop();
  await stack?.stop();
});

function open(user: string, known?: Record<string, number>) {
  const client = stack.client(user, { known });
  const events: LogEvent[] = [];
  client.on("event", (e) => events.push(e));
  clients.push(client);
  client.start();
  return { client, events };
}

const texts = (events: LogEvent[], conv: string) =>
  events.filter((e) => e.conversationId === conv && e.event.kind.case === "messageSent").map((e) => {
    const k = e.event.kind;
    return k.case === "messageSent" && k.value.body.case === "text" ? k.value.body.value : "";
  });

describe("two users on the real stack", () => {
  it("chat: a message arrives, and its sender sees STORED, DELIVERED, READ", async () => {
    const alice = open("alice");
    const bob = open("bob");
    await until("both connected", () => alice.client.connected && bob.client.connected);
    const seen: SendStatus[] = [];
    const msg = alice.client.send({ toUserId: "bob", text: "hello bob" });
    alice.client.on("status", (m) => m.clientMsgId === msg.clientMsgId && seen.push(m.status));
    await until("bob has it", () => texts(bob.events, msg.conversationId).includes("hello bob"));
    await until("delivered", () => seen.includes("delivered"));
    bob.client.markRead(msg.conversationId);
    await until("read", () => seen.includes("read"));
    expect(seen).toEqual(["stored", "delivered", "read"]);
  }, 60_000);

  it("one goes offline, the other sends 50; back online it has all 50 exactly once and in order", async () => {
    const carol = open("carol");
    const dave = open("dave");
    await until("both connected", () => carol.client.connected && dave.client.connected);
    const first = carol.client.send({ toUserId: "dave", text: "m0" });
    await until("stored", () => first.status !== "sent" && first.status !== "queued");
    const conv = first.conversationId;
    await until("dave has m0", () => texts(dave.events, conv).length === 1);
    const known = dave.client.known();
    dave.client.stop();
    const sent = Array.from({ length: 50 }, (_, i) => carol.client.send({ conversationId: conv, text: `m${i + 1}` }));
    await until("all stored", () => sent.every((m) => m.status === "stored" || m.status === "delivered"));
    const back = open("dave", known);
    await until("dave has all 50", () => texts(back.events, conv).length >= 50);
    await new Promise((r) => setTimeout(r, 500)); // late duplicates would show now
    expect(texts(back.events, conv)).toEqual(Array.from({ length: 50 }, (_, i) => `m${i + 1}`));
  }, 60_000);

  it("120 sends at once, past the gateway's send rate: each stored once, in the order sent", async () => {
    const mona = stack.client("mona");
    clients.push(mona);
    mona.start();
    const sent = Array.from({ length: 120 }, (_, i) => mona.send({ toUserId: "ned", text: `r${i}` }));
    await until("all stored", () => sent.every((m) => m.status === "stored"), 60_000);
    expect(sent.some((m) => m.attempts > 1)).toBe(true); // the rate limit was hit and waited out
    const conv = sent[0]!.conversationId;
    const seqs = sent.map((m) => m.convSeq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(120);
    const page = await mona.http.history(conv, { limit: 200, minPosition: sent[119]!.streamSeq });
    const texts = page.entries.flatMap((h) => (h.event?.kind.case === "messageSent" && h.event.kind.value.body.case === "text" ? [h.event.kind.value.body.value] : []));
    expect(texts).toEqual(sent.map((_, i) => `r${i}`));
  }, 90_000);

  it("a send queued offline is stored exactly once, though the connection is cut before its answer", async () => {
    const erin = stack.client("erin");
    clients.push(erin);
    const msg = erin.send({ toUserId: "frank", text: "from the outbox" });
    erin.start();
    // Cut the first connection right after the send went out: the answer may be lost.
    await until("sent", () => msg.status !== "queued");
    (erin as unknown as { ws?: { close(): void } }).ws?.close();
    await until("stored", () => msg.status === "stored", 30_000);
    const page = await erin.http.history(msg.conversationId, { minPosition: msg.streamSeq });
    const mine = page.entries.filter((h) => h.event?.clientMsgId === msg.clientMsgId && h.event.kind.case === "messageSent");
    expect(mine).toHaveLength(1);
  }, 60_000);

  it("presence: a contact going offline and coming back is pushed; the API answers for contacts only", async () => {
    const gus = open("gus");
    const hal = open("hal");
    const pushes: string[] = [];
    hal.client.on("presence", (p) => p.userId === "gus" && pushes.push(p.online ? "online" : "offline"));
    await until("both connected", () => gus.client.connected && hal.client.connected);
    const msg = gus.client.send({ toUserId: "hal", text: "hi hal" });
    await until("hal has it", () => texts(hal.events, msg.conversationId).length === 1);
    const asked = await hal.client.http.presence(["gus", "nobody"]);
    expect(asked.users.map((u) => [u.userId, u.online])).toEqual([["gus", true]]);
    gus.client.stop();
    // hal connected before his first conversation: his contacts are looked
    // up again within the gateway's wait for users who have none (20-30 s).
    await until("gus offline pushed", () => pushes.includes("offline"), 45_000);
    const back = open("gus");
    await until("gus online again", () => back.client.connected && pushes.lastIndexOf("online") > pushes.indexOf("offline"));
    const after = await hal.client.http.presence(["gus"]);
    expect(after.users[0]?.online).toBe(true);
  }, 90_000);
  it("search: a sent message is found by a word as typed, its match marked; a bad query is a 400 with the reason", async () => {
    const erin = open("erin");
    await until("connected", () => erin.client.connected);
    const msg = erin.client.send({ toUserId: "frank", text: "明天开会 Quarterly planning" });
    await until("stored", () => msg.status !== "sent" && msg.status !== "queued");
    const frank = open("frank");
    let page = await frank.client.search("开会 plan");
    for (let i = 0; i < 20 && page.hits.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      page = await frank.client.search("开会 plan");
    }
    expect(page.hits.map((h) => h.conversationId)).toEqual([msg.conversationId]);
    const marked = page.hits[0]!.snippet.filter((p) => p.hit).map((p) => p.text);
    expect(marked).toEqual(["开会", "planning"]);
    expect((await frank.client.search("erin", "conversations")).hits.length).toBe(1);
    const refused = await frank.client.search('"open').catch((e: unknown) => e);
    expect(refused).toMatchObject({ status: 400 });
    expect(String(refused)).toContain("quote is not closed");
  }, 60_000);
});
