// One real stack for the browser tests: `imctl up` (nats-server, projector,
// gateway serving the built web app) on free ports in a temp dir.
import { Stack } from "../ts/test/integration/stack.js";

export default async function globalSetup(): Promise<() => Promise<void>> {
  const web = new URL("../web/dist", import.meta.url).pathname;
  const stack = await Stack.start(["--web-dir", web]);
  process.env.IM_E2E_URL = stack.url;
  process.env.IM_E2E_ADMIN = stack.adminUrl;
  process.env.IM_E2E_OPERATOR_TOKEN = stack.operatorToken();
  return () => stack.stop();
}
