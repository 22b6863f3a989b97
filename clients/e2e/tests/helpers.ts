import { expect, type Browser, type Page } from "@playwright/test";
import { ARTIFACTS } from "../playwright.config.js";

export const url = () => process.env.IM_E2E_URL!;

/** A user in a browser context of their own, signed in through the form (with a display name, if given). */
export async function signIn(browser: Browser, user: string, displayName?: string): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  await page.goto(url());
  await page.getByPlaceholder("alice").fill(user);
  if (displayName) await page.getByPlaceholder("李雷").fill(displayName);
  await page.getByRole("button", { name: "Sign in" }).click();
  await expect(page.locator(".me .online")).toHaveText("online");
  return page;
}

/** Users unique to one run, so reruns on one stack never meet old conversations. */
export function users(...names: string[]): string[] {
  const run = Date.now().toString(36);
  return names.map((n) => `${n}_${run}`);
}

export async function startChat(page: Page, to: string, first: string): Promise<void> {
  await page.getByRole("button", { name: "New chat" }).click();
  await page.getByPlaceholder("user id").fill(to);
  await page.getByPlaceholder("say hello").fill(first);
  await page.getByRole("button", { name: "Start" }).click();
  await expect(page.getByTestId("conv-title")).toHaveText(to);
}

export async function openConversation(page: Page, name: string): Promise<void> {
  await page.locator(".conv", { hasText: name }).click();
  await expect(page.getByTestId("conv-title")).toHaveText(name);
}

export async function send(page: Page, text: string): Promise<void> {
  const box = page.getByPlaceholder("Write a message");
  await box.fill(text);
  await box.press("Enter");
}

/** The texts of the open conversation's messages, in display order. */
export async function texts(page: Page): Promise<string[]> {
  return page.locator('[data-testid="message"] .text').allTextContents();
}

export async function screenshot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: `${ARTIFACTS}${name}.png` });
}
