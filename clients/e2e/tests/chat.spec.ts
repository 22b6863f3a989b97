// The web app as two (and three) people use it, in real Chromium against
// the real stack.
import { expect, test } from "@playwright/test";
import { openConversation, screenshot, send, signIn, startChat, texts, users } from "./helpers.js";

test("two people chat: each sees the other's messages, read status and typing", async ({ browser }) => {
  const [alice, bob] = users("alice", "bob");
  const a = await signIn(browser, alice);
  const b = await signIn(browser, bob);
  await startChat(a, bob, "hi bob");
  // Bob's list shows the new conversation with its preview and an unread badge.
  const item = b.locator(".conv", { hasText: alice });
  await expect(item.getByTestId("unread")).toHaveText("1");
  await expect(item.locator(".preview")).toContainText("hi bob");
  await openConversation(b, alice);
  await expect.poll(() => texts(b)).toEqual(["hi bob"]);
  // Opening it read it: Alice's tick turns to read.
  await expect(a.locator('[data-testid="message"] .ticks')).toHaveAttribute("data-status", "read");
  await b.getByPlaceholder("Write a message").pressSequentially("hello al");
  await expect(a.getByTestId("typing")).toHaveText(`${bob} is typing…`);
  await send(b, "hello alice");
  await expect.poll(() => texts(a)).toEqual(["hi bob", "hello alice"]);
  await expect(a.getByTestId("typing")).toHaveText("", { timeout: 10_000 });
  // Presence: Bob is online in Alice's header; when his tab closes, "last seen".
  await expect(a.getByTestId("conv-status")).toHaveText("online", { timeout: 20_000 });
  await screenshot(a, "chat");
  await b.context().close();
  await expect(a.getByTestId("conv-status")).toContainText("last seen", { timeout: 20_000 });
});

test("offline while 50 messages are sent: back online, all 50 once and in order", async ({ browser }) => {
  const [carol, dave] = users("carol", "dave");
  const c = await signIn(browser, carol);
  const d = await signIn(browser, dave);
  await startChat(c, dave, "m0");
  await openConversation(d, carol);
  await expect.poll(() => texts(d)).toEqual(["m0"]);
  await d.context().setOffline(true);
  await expect(d.locator(".me .offline")).toBeVisible();
  const want = Array.from({ length: 50 }, (_, i) => `m${i + 1}`);
  for (const t of want) await send(c, t);
  await expect.poll(() => texts(c), { timeout: 60_000 }).toEqual(["m0", ...want]);
  await expect(c.locator(".pending")).toHaveCount(0);
  expect(await texts(d)).toEqual(["m0"]); // nothing reached the offline tab
  await d.context().setOffline(false);
  await expect.poll(() => texts(d), { timeout: 60_000 }).toEqual(["m0", ...want]);
  await d.waitForTimeout(1_000); // a late duplicate would show now
  expect(await texts(d)).toEqual(["m0", ...want]);
});

test("the list is ordered by activity, and a reload keeps conversations and history", async ({ browser }) => {
  const [erin, frank, gus] = users("erin", "frank", "gus");
  const e = await signIn(browser, erin);
  await startChat(e, frank, "one");
  await send(e, "two");
  await send(e, "three");
  await expect.poll(() => texts(e)).toEqual(["one", "two", "three"]);
  await startChat(e, gus, "hi gus");
  const order = () => e.locator(".conv .name").allTextContents();
  await expect.poll(order).toEqual([gus, frank]);
  await openConversation(e, frank);
  await send(e, "four");
  await expect.poll(order).toEqual([frank, gus]);
  await e.reload();
  await expect(e.locator(".me .online")).toHaveText("online");
  await expect.poll(order).toEqual([frank, gus]);
  await openConversation(e, frank);
  await expect.poll(() => texts(e)).toEqual(["one", "two", "three", "four"]);
});

test("a group of three: read by each, a member added, one removed who can no longer write", async ({ browser }) => {
  const [gina, hank, ivan, jay] = users("gina", "hank", "ivan", "jay");
  const g = await signIn(browser, gina);
  const h = await signIn(browser, hank);
  const i = await signIn(browser, ivan);
  await g.getByRole("button", { name: "New group" }).click();
  await g.getByPlaceholder("group name").fill("Trio");
  await g.getByPlaceholder("members: bob, carol").fill(`${hank}, ${ivan}`);
  await g.getByRole("button", { name: "Create" }).click();
  await expect(g.getByTestId("conv-title")).toHaveText("Trio");
  await send(g, "welcome");
  for (const p of [h, i]) {
    await openConversation(p, "Trio");
    await expect.poll(() => texts(p)).toEqual(["welcome"]);
  }
  // "Read by" names each member who has read it.
  const ticks = g.locator('[data-testid="message"] .ticks');
  await expect.poll(async () => ((await ticks.getAttribute("data-read-by")) ?? "").split(",").sort()).toEqual([hank, ivan].sort());
  await expect(ticks).toContainText(`read by`);
  await g.getByRole("button", { name: "Members" }).click();
  await g.getByPlaceholder("add by user id").fill(jay);
  await g.getByRole("button", { name: "Add", exact: true }).click();
  for (const p of [g, h, i]) await expect(p.locator(".notice", { hasText: `${gina} added ${jay}` })).toBeVisible();
  await expect(g.getByTestId("members").locator("li")).toHaveCount(4);
  await g.getByTestId("members").locator("li", { hasText: ivan }).getByRole("button", { name: "Remove" }).click();
  for (const p of [g, h, i]) await expect(p.locator(".notice", { hasText: `${gina} removed ${ivan}` })).toBeVisible();
  await expect(i.getByText("You are not a member of this conversation.")).toBeVisible();
  await expect(g.getByTestId("members").locator("li")).toHaveCount(3);
  await screenshot(g, "group");
});
