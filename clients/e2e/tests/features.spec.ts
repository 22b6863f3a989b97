// The rest of what a chat app is expected to do: scroll-back through a long
// history, edit, recall, and an image with its preview.
import { expect, test } from "@playwright/test";
import WebSocket from "ws";
import { ImClient, type WebSocketLike } from "../../ts/src/index.js";
import { openConversation, send, signIn, startChat, texts, url, users } from "./helpers.js";

/** A Node client of `user`, signed in through the stack's development sign-in. */
async function nodeClient(user: string): Promise<ImClient> {
  const res = await fetch(`${url()}/v1/dev/token`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId: user }),
  });
  const { token } = (await res.json()) as { token: string };
  const client = new ImClient({ url: url(), token, webSocket: (u, p) => new WebSocket(u, p) as unknown as WebSocketLike });
  client.start();
  return client;
}

test("a long history: the latest page first, older pages on scrolling up, to the start", async ({ browser }) => {
  const [mona, ned] = users("mona", "ned");
  const writer = await nodeClient(mona);
  const msgs = Array.from({ length: 120 }, (_, i) => writer.send({ toUserId: ned, text: `h${i}` }));
  const statuses = () => msgs.map((m) => `${m.status}${m.reason ? `: ${m.reason}` : ""}`).filter((s) => s !== "stored");
  await expect.poll(statuses, { timeout: 60_000 }).toEqual([]);
  writer.stop();
  const n = await signIn(browser, ned);
  await openConversation(n, mona);
  await expect.poll(async () => (await texts(n)).length).toBeGreaterThanOrEqual(40);
  expect((await texts(n)).at(-1)).toBe("h119");
  const all = Array.from({ length: 120 }, (_, i) => `h${i}`);
  await expect
    .poll(
      async () => {
        await n.getByTestId("messages").evaluate((el) => (el.scrollTop = 0));
        return texts(n);
      },
      { timeout: 30_000 },
    )
    .toEqual(all);
  await expect(n.getByText("This is the start of the conversation")).toBeVisible();
});

test("edit and recall reach the other side; an image arrives with its preview", async ({ browser }) => {
  const [olga, pete] = users("olga", "pete");
  const o = await signIn(browser, olga);
  const p = await signIn(browser, pete);
  await startChat(o, pete, "hello");
  await send(o, "typo here");
  await send(o, "to be recalled");
  await openConversation(p, olga);
  await expect.poll(() => texts(p)).toEqual(["hello", "typo here", "to be recalled"]);

  const typo = o.locator('[data-testid="message"]', { hasText: "typo here" });
  await typo.hover();
  await typo.getByRole("button", { name: "Edit" }).click();
  const editor = o.locator("form.edit input"); // the bubble no longer shows its text
  await editor.fill("fixed text");
  await editor.press("Enter");
  await expect.poll(() => texts(p)).toEqual(["hello", "fixed text", "to be recalled"]);
  await expect(p.locator('[data-testid="message"]', { hasText: "fixed text" })).toContainText("edited");

  const doomed = o.locator('[data-testid="message"]', { hasText: "to be recalled" });
  await doomed.hover();
  await doomed.getByRole("button", { name: "Recall" }).click();
  await expect(p.getByText("message recalled")).toBeVisible();
  await expect.poll(() => texts(p)).toEqual(["hello", "fixed text"]);

  // A 2x2 PNG, uploaded through the attach button's file input.
  const png = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
    "base64",
  );
  await o.getByTestId("attach").setInputFiles({ name: "dot.png", mimeType: "image/png", buffer: png });
  const img = p.getByTestId("image");
  await expect(img).toBeVisible();
  await expect.poll(() => img.evaluate((el) => (el as HTMLImageElement).naturalWidth)).toBeGreaterThan(0);
});
