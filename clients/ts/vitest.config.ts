import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // The integration tests start a real stack per file; one file at a time on a 2-core machine.
    fileParallelism: false,
    testTimeout: 60_000,
  },
});
