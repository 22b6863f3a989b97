export { ImClient, HEARTBEAT_MS, ACK_DEBOUNCE_MS, FRAME_BYTES_MAX, SEND_ATTEMPTS_MAX, isPeopleLog } from "./client.js";
export type { ClientOptions, ClientEvents, SendOptions, WebSocketLike } from "./client.js";
export { ConversationLog, PENDING_MAX } from "./conversation.js";
export type { LogEvent } from "./conversation.js";
export { HttpApi, ImHttpError, NOT_YET_RETRIES, PROFILES_PER_REQUEST } from "./http.js";
export type { CommandResult, FetchLike, Audience, Privacy, ContactVerb, SearchKind, SearchOptions } from "./http.js";
export { OUTBOX_MAX, TRACKED_MAX } from "./outbox.js";
export type { OutgoingMessage, SendStatus } from "./outbox.js";
export { backoffDelay, DEFAULT_BACKOFF } from "./backoff.js";
export type { Backoff } from "./backoff.js";
export { decodeFrame, encodeFrame, subprotocol } from "./wire.js";
export type { Wire } from "./wire.js";
export { FILL_PAGE, FILL_STALE_RETRIES } from "./recovery.js";
// The generated messages, for apps that read events' fields.
export * from "./gen/im/v1/client_pb.js";
export * from "./gen/im/v1/events_pb.js";
export * from "./gen/im/v1/common_pb.js";
export * from "./gen/im/v1/readmodel_pb.js";
export * from "./gen/im/v1/query_pb.js";
