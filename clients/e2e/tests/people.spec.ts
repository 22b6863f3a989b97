// People in the web app, in real Chromium against the real stack: two users
// become contacts through the UI, see each other's Chinese display names in
// the list and the header, and a block stops the other's sends.
import { expect, test } from "@playwright/test";
import { screenshot, send, signIn, texts, users } from "./helpers.js";

test("contacts by request and accept, Chinese names everywhere, and a block refuses the other's send", async ({ browser }) => {
  const [li, wang] = users("li", "wang");
  const a = await signIn(browser, li, "李雷");
  const b = await signIn(browser, wang, "王芳 🌸");
  await expect(a.getByTestId("my-name")).toHaveText("李雷");
  await expect(b.getByTestId("my-name")).toHaveText("王芳 🌸");

  // Li asks Wang by user id; Wang sees the request by Li's name and accepts.
  await a.getByRole("button", { name: "Contacts" }).click();
  await a.getByPlaceholder("add by user id").fill(wang);
  await a.getByRole("button", { name: "Ask" }).click();
  await expect(a.getByTestId("outgoing")).toContainText("王芳 🌸");
  await expect(b.getByTestId("requests")).toHaveText("1");
  await b.getByRole("button", { name: /Contacts/ }).click();
  await expect(b.getByTestId("incoming")).toContainText("李雷");
  await b.getByTestId("incoming").getByRole("button", { name: "Accept" }).click();
  await expect(b.getByTestId("contacts")).toContainText("李雷");
  await expect(a.getByTestId("contacts")).toContainText("王芳 🌸");

  // A chat from the contact: both lists and headers show the names.
  await a.getByTestId("contacts").getByRole("button", { name: "Chat" }).click();
  await expect(a.getByTestId("conv-title")).toHaveText("王芳 🌸");
  await send(a, "你好，王芳");
  const item = b.locator(".conv", { hasText: "李雷" });
  await expect(item.locator(".name")).toHaveText("李雷");
  await item.click();
  await expect(b.getByTestId("conv-title")).toHaveText("李雷");
  await expect.poll(() => texts(b)).toEqual(["👋", "你好，王芳"]);
  await expect(a.locator(".conv .name")).toContainText(["王芳 🌸"]);

  // Li sets an avatar; Wang's list shows the image (anyone signed in may fetch it).
  await a.getByRole("button", { name: "Profile" }).click();
  const png = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==",
    "base64",
  );
  await a.locator('input[name="avatar"]').setInputFiles({ name: "me.png", mimeType: "image/png", buffer: png });
  await a.getByTestId("profile").getByRole("button", { name: "Save" }).click();
  await expect(a.getByTestId("profile")).toHaveCount(0);
  await b.reload();
  await expect(b.locator(".conv", { hasText: "李雷" }).getByTestId("avatar-image")).toBeVisible();
  await b.locator(".conv", { hasText: "李雷" }).click();
  await expect(b.getByTestId("conv-title")).toHaveText("李雷");
  await screenshot(b, "people");

  // Wang blocks Li from the header: Li's next send is refused in the UI.
  const header = b.getByRole("main").locator("header");
  await header.getByRole("button", { name: "Block", exact: true }).click();
  await expect(header.getByRole("button", { name: "Unblock", exact: true })).toBeVisible();
  await send(a, "还在吗？");
  await expect(a.locator(".pending .meta")).toContainText("not sent: blacklisted");
  expect(await texts(b)).not.toContain("还在吗？");
  // And Wang's own: a block stops both directions.
  await send(b, "再见");
  await expect(b.locator(".pending .meta")).toContainText("not sent: blacklisted");
});
