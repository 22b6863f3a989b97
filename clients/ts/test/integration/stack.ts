// The real local stack for integration tests: `imctl up` (nats-server,
// streams, projector, gateway) on free ports in a temp dir, as a user runs it.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { ImClient, type ClientOptions, type WebSocketLike } from "../../src/index.js";

/** The binary: `IM_IMCTL`, else the workspace's debug build. */
export const IMCTL = process.env.IM_IMCTL ?? new URL("../../../../target/debug/imctl", import.meta.url).pathname;
/** How long the stack may take to become ready on a slow 2-core machine. */
const READY_MAX_MS = 60_000;

export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => ok(port));
    });
  });
}

export class Stack {
  private constructor(
    readonly url: string,
    /** The admin API and the ops page. */
    readonly adminUrl: string,
    readonly dataDir: string,
    private readonly proc: ChildProcess,
    readonly output: string[],
  ) {}

  static async start(extra: string[] = []): Promise<Stack> {
    const dataDir = mkdtempSync(join(tmpdir(), "im-sdk-"));
    // The gateway and the admin API bind port 0; their addresses are read
    // from what imctl prints (nats-server takes a port number only).
    const args = ["up", "--data-dir", dataDir, "--nats-port", String(await freePort()), "--gateway-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", ...extra];
    const proc = spawn(IMCTL, args, { stdio: ["ignore", "pipe", "pipe"] });
    const output: string[] = [];
    proc.stdout!.on("data", (d: Buffer) => output.push(d.toString()));
    proc.stderr!.on("data", (d: Buffer) => output.push(d.toString()));
    const printed = (prefix: string) => output.join("").match(new RegExp(`${prefix}(\\S+?)/?(\\s|$)`))?.[1];
    const until = Date.now() + READY_MAX_MS;
    let gateway: string | undefined;
    let admin: string | undefined;
    while (!(gateway && admin)) {
      if (proc.exitCode !== null || Date.now() > until) {
        proc.kill("SIGKILL");
        throw new Error(`imctl up did not start:\n${output.join("")}`);
      }
      await new Promise((r) => setTimeout(r, 100));
      gateway = printed("imctl: gateway http://");
      admin = printed("imctl: ops page http://");
    }
    const stack = new Stack(`http://${gateway}`, `http://${admin}`, dataDir, proc, output);
    await stack.waitReady(until);
    return stack;
  }

  private async waitReady(until: number): Promise<void> {
    while (Date.now() < until) {
      if (this.proc.exitCode !== null) throw new Error(`imctl up exited:\n${this.output.join("")}`);
      try {
        if ((await fetch(`${this.url}/readyz`)).status === 200) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`stack not ready in ${READY_MAX_MS} ms:\n${this.output.join("")}`);
  }

  /** The operator token `imctl up` keeps in its data dir. */
  operatorToken(): string {
    return readFileSync(join(this.dataDir, "operator-token"), "utf8").trim();
  }

  /** A development token, issued the way the README says. */
  token(user: string): string {
    return execFileSync(IMCTL, ["token", "issue", "--user", user, "--data-dir", this.dataDir]).toString().trim();
  }

  /** A client of `user` on this stack, over the `ws` package's WebSocket. */
  client(user: string, opts: Partial<ClientOptions> = {}): ImClient {
    return new ImClient({
      url: this.url,
      token: this.token(user),
      deviceId: "node",
      webSocket: (u, p) => new WebSocket(u, p) as unknown as WebSocketLike,
      ...opts,
    });
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) {
      const exited = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGTERM");
      await exited;
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Resolves once `pred` holds, checking every 20 ms; rejects after `ms`. */
export async function until(what: string, pred: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
