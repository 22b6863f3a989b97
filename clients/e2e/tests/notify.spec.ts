// Offline notifications as a user meets them: bob's phone registered for
// push, bob's tab open (delivered, not notified), then closed: amy's next
// messages wake bob once, with his badge, signed with the stack's secret.
import { expect, test } from "@playwright/test";
import { screenshot, send, signIn, startChat, url, users } from "./helpers.js";

interface Taken {
  signatureOk: boolean;
  notification: { userId: string; messages: number; badge: number; text?: string; senderId?: string };
}

async function received(): Promise<Taken[]> {
  const res = await fetch(`${process.env.IM_E2E_PUSH}/received`);
  return (await res.json()) as Taken[];
}

test("a closed tab is woken once with its badge; an open one is not", async ({ browser }) => {
  const [amy, bob] = users("amy", "bob");
  const bobPage = await signIn(browser, bob);
  const token = await bobPage.evaluate(() => {
    for (const store of [sessionStorage, localStorage]) {
      for (let i = 0; i < store.length; i++) {
        const v = store.getItem(store.key(i)!) ?? "";
        const m = v.match(/eyJ[\w-]+\.[\w-]+\.[\w-]+/);
        if (m) return m[0];
      }
    }
    return "";
  });
  expect(token).not.toBe("");
  const registered = await fetch(`${url()}/v1/devices/phone/push`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ platform: "fcm", token: `phone-of-${bob}`, appId: "im.web" }),
  });
  expect(registered.status).toBe(200);
  const amyPage = await signIn(browser, amy);
  await startChat(amyPage, bob, "while your tab is open");
  await expect(bobPage.getByText("while your tab is open")).toBeVisible();
  await amyPage.waitForTimeout(3_000);
  const mine = async () => (await received()).filter((t) => t.notification.userId === bob);
  expect(await mine()).toEqual([]);
  // bob closes the tab; the gateway's grace passes.
  await bobPage.context().close();
  await amyPage.waitForTimeout(4_000);
  await send(amyPage, "are you there?");
  await send(amyPage, "call me");
  await expect.poll(async () => (await mine()).length, { timeout: 20_000 }).toBe(1);
  await amyPage.waitForTimeout(2_000);
  const [taken] = await mine();
  expect(await mine()).toHaveLength(1);
  expect(taken.signatureOk).toBe(true);
  expect(taken.notification).toMatchObject({ messages: 2, badge: 3, text: "call me", senderId: amy });

  // The ops page shows the notifier: what it sent, nothing given up.
  const ops = await (await browser.newContext()).newPage();
  await ops.goto(process.env.IM_E2E_ADMIN!);
  await ops.getByPlaceholder("operator token").fill(process.env.IM_E2E_OPERATOR_TOKEN!);
  await ops.getByRole("button", { name: "Open" }).click();
  const row = ops.locator('tr[data-notifier="notifier"]');
  await expect(row).toBeVisible();
  await expect.poll(async () => Number(await row.getByTestId("sent").textContent())).toBeGreaterThanOrEqual(1);
  await screenshot(ops, "ops-notifications");
});
