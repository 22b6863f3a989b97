import { defineConfig } from "@playwright/test";

/** Screenshots, traces and failure videos land here (CI keeps target/). */
export const ARTIFACTS = new URL("../../target/e2e/", import.meta.url).pathname;

export default defineConfig({
  testDir: "tests",
  // One stack, two cores: tests one at a time, each with its own users.
  workers: 1,
  timeout: 120_000,
  expect: { timeout: 20_000 },
  globalSetup: "./global-setup.ts",
  outputDir: `${ARTIFACTS}results`,
  reporter: [["list"]],
  use: {
    screenshot: "only-on-failure",
    trace: "retain-on-failure",
    launchOptions: {
      // The system's Chromium (Debian's package): Playwright downloads no browser.
      executablePath: process.env.IM_CHROMIUM ?? "/usr/bin/chromium",
      args: [
        "--no-sandbox",
        "--disable-gpu",
        // Containers give /dev/shm 64 MiB: too little for three contexts.
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
  },
});
