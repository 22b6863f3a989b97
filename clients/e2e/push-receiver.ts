// A push gateway for the browser tests, written from docs/protocol.md
// ("Offline notifications"): a real HTTP server that checks each
// notification's signature and keeps what it took; `GET /received`
// lists them.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";

export interface Taken {
  key: string;
  signatureOk: boolean;
  notification: Record<string, unknown>;
}

/** `Im-Signature: t=<s>,v1=<hex>` is HMAC-SHA256 of `<t>.<body>`. */
export function verify(secret: string, header: string, body: Buffer): boolean {
  const parts = Object.fromEntries(header.split(",").filter((p) => p.includes("=")).map((p) => p.split("=", 2)));
  if (!/^\d+$/.test(parts.t ?? "") || Math.abs(Date.now() / 1000 - Number(parts.t)) > 300) return false;
  const expected = createHmac("sha256", secret).update(`${parts.t}.`).update(body).digest();
  const sent = Buffer.from(parts.v1 ?? "", "hex");
  return sent.length === expected.length && timingSafeEqual(sent, expected);
}

export async function startReceiver(secret: () => string): Promise<{ url: string; server: Server }> {
  const taken: Taken[] = [];
  const seen = new Set<string>();
  const server = createServer((req, res) => {
    if (req.method === "GET") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(taken));
      return;
    }
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const key = String(req.headers["idempotency-key"] ?? "");
      const signatureOk = verify(secret(), String(req.headers["im-signature"] ?? ""), body);
      if (!seen.has(key)) {
        seen.add(key);
        taken.push({ key, signatureOk, notification: JSON.parse(body.toString()).notification });
      }
      res.setHeader("content-type", "application/json");
      res.end("{}");
    });
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const port = (server.address() as AddressInfo).port;
  return { url: `http://127.0.0.1:${port}`, server };
}
