// One real stack for the browser tests: `imctl up` (nats-server, projector,
// gateway serving the built web app, the notifier posting to a push
// receiver of the tests') on free ports in a temp dir.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Stack } from "../ts/test/integration/stack.js";
import { startReceiver } from "./push-receiver.js";

export default async function globalSetup(): Promise<() => Promise<void>> {
  const web = new URL("../web/dist", import.meta.url).pathname;
  let dataDir = "";
  const receiver = await startReceiver(() => readFileSync(join(dataDir, "notify-secret"), "utf8").trim());
  const stack = await Stack.start([
    "--web-dir",
    web,
    "--notify-url",
    `${receiver.url}/push`,
    "--notify-preview",
    "text",
    "--notify-debounce-ms",
    "1000",
  ]);
  dataDir = stack.dataDir;
  process.env.IM_E2E_URL = stack.url;
  process.env.IM_E2E_ADMIN = stack.adminUrl;
  process.env.IM_E2E_OPERATOR_TOKEN = stack.operatorToken();
  process.env.IM_E2E_PUSH = receiver.url;
  return async () => {
    await stack.stop();
    receiver.server.close();
  };
}
