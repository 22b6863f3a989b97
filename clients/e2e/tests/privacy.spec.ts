// Erasure as a user meets it: amy and bob chat; an operator erases amy
// through the admin API; bob, reloading, sees amy's message erased in its
// place and his own reply as it was; the conversation list no longer
// previews amy's words (docs/privacy.md).
import { expect, test } from "@playwright/test";
import { openConversation, screenshot, send, signIn, startChat, users } from "./helpers.js";

test("an erased user's messages show as erased to the other member", async ({ browser }) => {
  const [amy, bob] = users("amy", "bob");
  const bobPage = await signIn(browser, bob);
  const amyPage = await signIn(browser, amy);
  await startChat(amyPage, bob, "a secret for bob");
  await expect(bobPage.getByText("a secret for bob")).toBeVisible();
  await openConversation(bobPage, amy);
  await send(bobPage, "bob's reply stays");

  const res = await fetch(`${process.env.IM_E2E_ADMIN}/admin/v1/erase`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${process.env.IM_E2E_OPERATOR_TOKEN}`,
      "content-type": "application/json",
    },
    body: JSON.stringify({ userId: amy, requestedBy: "e2e operator" }),
  });
  expect(res.status).toBe(200);
  const erased = (await res.json()) as { keysDestroyed: number };
  expect(erased.keysDestroyed).toBeGreaterThanOrEqual(1);

  await bobPage.reload();
  await openConversation(bobPage, amy);
  await expect(bobPage.getByTestId("erased")).toHaveText("message erased");
  const messages = bobPage.getByTestId("messages");
  await expect(messages.getByText("bob's reply stays")).toBeVisible();
  await expect(bobPage.getByText("a secret for bob")).toHaveCount(0);
  await screenshot(bobPage, "erased");
});
