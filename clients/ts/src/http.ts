// The gateway's HTTP API (docs/protocol.md "HTTP", "Media"), typed with the
// generated messages. A read the projector has not caught up with yet is a
// 503 with Retry-After: it is retried here, a bounded number of times.
import { fromJson, toJson, type DescMessage, type MessageShape, type JsonValue } from "@bufbuild/protobuf";
import {
  HistoryPageSchema,
  ConvListPageSchema,
  MembersResultSchema,
  ReceiptsResultSchema,
  ProfilesResultSchema,
  ContactsResultSchema,
  SearchPageSchema,
  type HistoryPage,
  type SearchPage,
} from "./gen/im/v1/query_pb.js";
import { ProfileSchema, type Profile } from "./gen/im/v1/readmodel_pb.js";
import { MediaRefSchema, type MediaRef } from "./gen/im/v1/common_pb.js";
import { PresenceListSchema } from "./gen/im/v1/client_pb.js";

/**
 * A refused or failed HTTP call, in the API's one error shape: `code` is the
 * protocol's `ErrorCode` name (`ERROR_CODE_FORBIDDEN`), `reason` a rule's
 * refusal (`not_member`) when the rules refused.
 */
export class ImHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly reason?: string,
  ) {
    super(message);
    this.name = "ImHttpError";
  }
}

/** "Not yet" answers retried per read: ~10 s at the capped one-second wait. */
export const NOT_YET_RETRIES = 10;
/** The longest Retry-After honoured, so a read never stalls a UI for long. */
export const NOT_YET_WAIT_MAX_MS = 1_000;

/** The answer to a command: where its event landed. */
export interface CommandResult {
  conversationId: string;
  convSeq: number;
  streamSeq: number;
  duplicate: boolean;
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** Who may reach a user a given way. */
export type Audience = "everyone" | "contacts";

export interface Privacy {
  /** Who may start a direct conversation with the user. */
  directChats: Audience;
  /** Who may add the user to a group. */
  groupAdds: Audience;
}

/** What a search looks through (docs/protocol.md "Search"). */
export type SearchKind = "messages" | "conversations" | "users";

export interface SearchOptions {
  /** Messages: one conversation's only. */
  conversationId?: string;
  /** Messages: a page's `next`, for the page after it. */
  before?: string;
  /** Hits per page, 1..50 (20 unless given). */
  limit?: number;
  /** Messages: newest first (the default) or by relevance. */
  order?: "newest" | "relevance";
  /** Read your own writes: a `streamSeq` the answer must cover. */
  minPosition?: number;
}

export type ContactVerb = "request" | "accept" | "decline" | "remove" | "block" | "unblock";

/** Profiles one request names: the gateway's bound. */
export const PROFILES_PER_REQUEST = 100;

export class HttpApi {
  constructor(
    private readonly base: string,
    private readonly token: () => Promise<string>,
    private readonly fetchFn: FetchLike,
  ) {}

  /** One page of a conversation's history. `fromSeq` 0 backward: the latest. */
  async history(
    conversationId: string,
    opts: { fromSeq?: number; limit?: number; backward?: boolean; minPosition?: number } = {},
  ): Promise<HistoryPage> {
    const q = new URLSearchParams({ conversationId, fromSeq: String(opts.fromSeq ?? 0) });
    if (opts.limit) q.set("limit", String(opts.limit));
    if (opts.backward) q.set("direction", "backward");
    if (opts.minPosition) q.set("minPosition", String(opts.minPosition));
    return this.read(HistoryPageSchema, `/v1/history?${q}`);
  }

  /** Every conversation of the user, most recent first, with preview and unread. */
  conversations(minPosition = 0) {
    return this.read(ConvListPageSchema, `/v1/conversations${position(minPosition)}`);
  }

  members(conversationId: string, minPosition = 0) {
    return this.read(MembersResultSchema, `/v1/conversations/${enc(conversationId)}/members${position(minPosition)}`);
  }

  /** Who has received and read `seq` (every member's cursors). */
  receipts(conversationId: string, seq: number) {
    return this.read(ReceiptsResultSchema, `/v1/conversations/${enc(conversationId)}/receipts?seq=${seq}`);
  }

  /** Online and last seen of those of `users` who share a conversation with the caller. */
  presence(users: string[]) {
    return this.read(PresenceListSchema, `/v1/presence?users=${users.map(enc).join(",")}`);
  }

  createGroup(conversationId: string, title: string, members: string[], key?: string): Promise<CommandResult> {
    const body = { conversationId, title, members: members.map((userId) => ({ userId, role: "member" })) };
    return this.command("/v1/conversations", body, key);
  }

  /** `verb`: add-member, remove-member, leave, role, mute, ... (docs/protocol.md). */
  act(conversationId: string, verb: string, target?: string | number, body: object = {}, key?: string) {
    const tail = target === undefined ? "" : `/${enc(String(target))}`;
    return this.command(`/v1/conversations/${enc(conversationId)}/${verb}${tail}`, body, key);
  }

  edit(conversationId: string, convSeq: number, text: string, key?: string) {
    return this.act(conversationId, "edit", convSeq, { text }, key);
  }

  recall(conversationId: string, convSeq: number, key?: string) {
    return this.act(conversationId, "recall", convSeq, {}, key);
  }

  /** The caller's own profile (absent until set) and privacy. */
  async me(minPosition = 0): Promise<{ userId: string; profile?: Profile; privacy: Privacy }> {
    const res = await this.call(`/v1/me${position(minPosition)}`, {});
    const body = (await res.json()) as { userId: string; profile?: JsonValue; privacy: Privacy };
    const profile = body.profile ? fromJson(ProfileSchema, body.profile, { ignoreUnknownFields: true }) : undefined;
    return { userId: body.userId, profile, privacy: body.privacy };
  }

  /** Replaces the caller's profile; contacts are told (a `profile` event). */
  setProfile(p: { displayName: string; status?: string; avatar?: MediaRef }, key?: string): Promise<CommandResult> {
    const body = { displayName: p.displayName, status: p.status ?? "", avatar: p.avatar ? toJson(MediaRefSchema, p.avatar) : null };
    return this.command("/v1/me/profile", body, key, "PUT");
  }

  /** Who may start a direct conversation with the caller, and add them to groups. */
  setPrivacy(privacy: Privacy, key?: string): Promise<CommandResult> {
    return this.command("/v1/me/privacy", privacy, key, "PUT");
  }

  /** Contacts, requests both ways and blocks, by user id. */
  contacts(minPosition = 0) {
    return this.read(ContactsResultSchema, `/v1/me/contacts${position(minPosition)}`);
  }

  /** `verb` on the pair of the caller and `userId`: request, accept, decline, remove, block, unblock. */
  contact(userId: string, verb: ContactVerb, key?: string): Promise<CommandResult> {
    return this.command(`/v1/contacts/${enc(userId)}/${verb}`, {}, key);
  }

  /** Profiles of `userIds` (any number: asked 100 at a time); who never set one is left out. */
  async profiles(userIds: string[], minPosition = 0): Promise<Profile[]> {
    const out: Profile[] = [];
    const ids = [...new Set(userIds)];
    for (let i = 0; i < ids.length; i += PROFILES_PER_REQUEST) {
      const q = ids.slice(i, i + PROFILES_PER_REQUEST).map(enc).join(",");
      const pos = minPosition ? `&minPosition=${minPosition}` : "";
      out.push(...(await this.read(ProfilesResultSchema, `/v1/users/profiles?ids=${q}${pos}`)).profiles);
    }
    return out;
  }

  /**
   * Full-text search: messages the caller could read (as a member at
   * their position), their conversations by title, or people among their
   * contacts (and by exact user id). The last word is also a prefix
   * unless `q` ends in a space; "quoted" words are a phrase.
   */
  search(q: string, kind: SearchKind = "messages", o: SearchOptions = {}): Promise<SearchPage> {
    const params = new URLSearchParams({ q });
    if (o.conversationId) params.set("conversationId", o.conversationId);
    if (o.before) params.set("before", o.before);
    if (o.limit) params.set("limit", String(o.limit));
    if (o.order) params.set("order", o.order);
    if (o.minPosition) params.set("minPosition", String(o.minPosition));
    return this.read(SearchPageSchema, `/v1/search/${kind}?${params}`);
  }

  /** Uploads bytes of a declared type; the reference goes into `send({media})`. */
  async upload(bytes: Blob | Uint8Array, mime: string): Promise<MediaRef> {
    const res = await this.call("/v1/media/upload", {
      method: "POST",
      headers: { "content-type": mime },
      body: bytes as BodyInit,
    });
    return fromJson(MediaRefSchema, (await res.json()) as JsonValue, { ignoreUnknownFields: true });
  }

  /** A media object's bytes (the thumbnail of an image with `thumbnail`). */
  async media(mediaId: string, thumbnail = false): Promise<Blob> {
    const res = await this.call(`/v1/media/${enc(mediaId)}${thumbnail ? "?thumbnail=true" : ""}`, {});
    if ((res.headers.get("content-type") ?? "").startsWith("application/json")) {
      const { url } = (await res.json()) as { url: string };
      return (await this.fetchFn(url)).blob();
    }
    return res.blob();
  }

  private async read<S extends DescMessage>(schema: S, path: string): Promise<MessageShape<S>> {
    const res = await this.call(path, {});
    return fromJson(schema, (await res.json()) as JsonValue, { ignoreUnknownFields: true });
  }

  private async command(path: string, body: object, key?: string, method = "POST"): Promise<CommandResult> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (key) headers["idempotency-key"] = key;
    const res = await this.call(path, { method, headers, body: JSON.stringify(body) });
    const r = (await res.json()) as Record<string, unknown>;
    return {
      conversationId: String(r.conversationId ?? ""),
      convSeq: Number(r.convSeq ?? 0),
      streamSeq: Number(r.streamSeq ?? 0),
      duplicate: r.duplicate === true,
    };
  }

  /** One call with the bearer token; "not yet" (503) is waited out and retried. */
  private async call(path: string, init: RequestInit): Promise<Response> {
    for (let attempt = 0; ; attempt++) {
      const headers = { ...(init.headers as Record<string, string>), authorization: `Bearer ${await this.token()}` };
      const res = await this.fetchFn(this.base + path, { ...init, headers });
      if (res.ok) return res;
      if (res.status === 503 && attempt < NOT_YET_RETRIES && res.headers.has("retry-after")) {
        const wait = Math.min(NOT_YET_WAIT_MAX_MS, Number(res.headers.get("retry-after")) * 1000 || 1000);
        await new Promise((r) => setTimeout(r, wait));
        continue;
      }
      throw await httpError(res);
    }
  }
}

async function httpError(res: Response): Promise<ImHttpError> {
  const text = await res.text();
  try {
    const body = JSON.parse(text) as { code?: string; message?: string; reason?: string };
    return new ImHttpError(res.status, body.code ?? `http_${res.status}`, body.message ?? text, body.reason);
  } catch {
    return new ImHttpError(res.status, `http_${res.status}`, text);
  }
}

function enc(s: string): string {
  return encodeURIComponent(s);
}

function position(minPosition: number): string {
  return minPosition ? `?minPosition=${minPosition}` : "";
}
