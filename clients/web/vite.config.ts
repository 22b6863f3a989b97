import { defineConfig } from "vite";
import { fileURLToPath } from "node:url";

export default defineConfig({
  // The SDK from source: one build, types straight from the generated protos.
  resolve: { alias: { "@im/sdk": fileURLToPath(new URL("../ts/src/index.ts", import.meta.url)) } },
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "dist",
    rollupOptions: {
      input: {
        main: fileURLToPath(new URL("index.html", import.meta.url)),
        // The ops page: served by `imctl admin` (and `imctl up`) beside its API.
        ops: fileURLToPath(new URL("ops.html", import.meta.url)),
      },
    },
  },
  // `npm run dev` talks to `imctl up`'s gateway.
  server: {
    proxy: {
      "/v1": { target: "http://127.0.0.1:8080", ws: true },
      "/admin": { target: "http://127.0.0.1:8090" },
    },
  },
});
