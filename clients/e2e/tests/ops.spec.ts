// The ops page: behind the operator token, it shows projections' checkpoints
// moving as people chat, and a rebuild's progress to its swap.
import { expect, test } from "@playwright/test";
import { screenshot, send, signIn, startChat, users } from "./helpers.js";

test("the ops page asks for the operator token and shows checkpoints advancing and a rebuild", async ({ browser }) => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const ops = await context.newPage();
  await ops.goto(process.env.IM_E2E_ADMIN!);
  await ops.getByPlaceholder("operator token").fill("not-the-token-not-the-token-not-the-token");
  await ops.getByRole("button", { name: "Open" }).click();
  await expect(ops.getByPlaceholder("operator token")).toBeVisible(); // refused: asked again
  await ops.getByPlaceholder("operator token").fill(process.env.IM_E2E_OPERATOR_TOKEN!);
  await ops.getByRole("button", { name: "Open" }).click();
  const checkpoint = ops.locator('tr[data-projection="history"] [data-testid="checkpoint"]');
  await expect(checkpoint).toBeVisible();
  const before = Number(await checkpoint.textContent());

  const [kim, lee] = users("kim", "lee");
  const k = await signIn(browser, kim);
  await startChat(k, lee, "first");
  for (let i = 0; i < 5; i++) await send(k, `n${i}`);
  await expect.poll(async () => Number(await checkpoint.textContent())).toBeGreaterThan(before);

  await ops.locator('tr[data-projection="history"]').getByRole("button", { name: "Rebuild" }).click();
  await expect(ops.locator('tr[data-rebuild="history"] .phase').last()).toHaveText("swapped", { timeout: 60_000 });
  await expect(ops.getByTestId("projections")).toContainText("history");
  await screenshot(ops, "ops");
});
