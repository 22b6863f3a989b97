// Search in the web app, in real Chromium against the real stack: a user
// types into the search box, sees hits with the matched words marked (in
// Chinese and English), and a hit from long ago opens its conversation
// scrolled to that message; an edit is found by its new words only.
import { expect, test } from "@playwright/test";
import { screenshot, send, signIn, startChat, users } from "./helpers.js";

test("a search finds Chinese and English words and a hit opens the conversation at the message", async ({ browser }) => {
  const [mei, tom] = users("mei", "tom");
  const a = await signIn(browser, mei, "小美");
  const b = await signIn(browser, tom);
  await startChat(a, tom, "今天下午开会讨论预算");
  await send(a, "Meetings moved to Friday");
  // Enough after it that the first message is not among the latest loaded.
  for (let i = 0; i < 60; i++) await send(a, `filler ${i}`);
  await expect(a.locator('[data-testid="message"] .text').last()).toHaveText("filler 59");

  const box = b.getByTestId("search");
  await box.fill("开会");
  const hits = b.getByTestId("search-hit");
  await expect(hits).toHaveCount(1);
  await expect(hits.first().locator("mark")).toHaveText("开会");
  await box.fill("meeting");
  await expect(hits).toHaveCount(1);
  await expect(hits.first()).toContainText("Meetings moved to Friday");
  // Typing: the last word is a prefix.
  await box.fill("fill");
  await expect(hits).toHaveCount(20);
  await box.fill("nothing-like-this");
  await expect(b.getByTestId("search-results")).toContainText("Nothing found");
  await box.fill('"open');
  await expect(b.getByTestId("search-error")).toContainText("quote is not closed");

  // The oldest hit opens its conversation, scrolled to it and marked.
  await box.fill("预算");
  await hits.first().click();
  await expect(b.getByTestId("search")).toHaveValue("");
  const found = b.locator(".msg.found");
  await expect(found).toContainText("今天下午开会讨论预算");
  await expect(found).toBeInViewport();
  await screenshot(b, "search");

  // Mei edits the second message: found by its new words, not its old.
  const moved = a.locator('[data-testid="message"]', { hasText: "Meetings moved to Friday" });
  await moved.hover();
  await moved.getByRole("button", { name: "Edit" }).click();
  const edit = a.locator("form.edit input");
  await edit.fill("Lunch moved to Monday");
  await edit.press("Enter");
  await box.fill("lunch");
  await expect(hits).toHaveCount(1);
  await box.fill("meeting ");
  await expect(b.getByTestId("search-results")).toContainText("Nothing found");

  // An image is found by its file name.
  const png = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
    "base64",
  );
  await a.getByTestId("attach").setInputFiles({ name: "whiteboard-sketch.png", mimeType: "image/png", buffer: png });
  await box.fill("whiteboard");
  await expect(hits).toHaveCount(1);
  await expect(hits.first().locator("mark")).toHaveText("whiteboard");
});
