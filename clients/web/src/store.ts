// The app's model over the SDK: conversations with their messages, members,
// read cursors and typing, rebuilt from the log's events. Views subscribe
// and re-render on any change.
import {
  ImClient,
  ConversationKind,
  SealedState,
  ContactState,
  Role,
  ReceiptKind,
  type ContactEntry,
  type LogEvent,
  type MediaRef,
  type OutgoingMessage,
  type ConvListItem,
  type Privacy,
  type Profile,
} from "@im/sdk";

export interface Msg {
  seq: number;
  sender: string;
  atMs: number;
  text: string;
  media?: MediaRef;
  edited: boolean;
  recalled: boolean;
  /** Its content cannot be shown: erased (its key destroyed, on request
   * or past retention), or unreadable (a key that does not open it). */
  erased?: "erased" | "unreadable";
  clientMsgId: string;
  /** Membership changes and the like: shown as a line, not a bubble. */
  notice?: string;
}

export interface Conv {
  id: string;
  kind: "direct" | "group";
  title: string;
  lastActivityMs: number;
  preview: string;
  unread: number;
  members: Map<string, Role>;
  membersLoaded: boolean;
  messages: Msg[];
  /** Per member: highest seq delivered to and read by them. */
  cursors: Map<string, { delivered: number; read: number }>;
  typing: Map<string, number>;
  /** Scroll-back reached the first event. */
  atStart: boolean;
}

/** How long a typing notice shows without a refresh: the sender repeats it every 3 s. */
const TYPING_SHOW_MS = 6_000;
/** Reading a burst of messages sends one receipt, this long after the last. */
const READ_DEBOUNCE_MS = 300;
/** Profiles asked together: the names a render needs arrive in one request. */
const PROFILE_BATCH_MS = 30;
/** Messages kept per conversation in memory; scroll-back beyond pages again. */
const MESSAGES_MAX = 5_000;

/** Pages of 50 loaded, at most, to reach a search hit's message (2,500 back). */
export const FOCUS_PAGES_MAX = 50;

export class Store {
  readonly client: ImClient;
  readonly convs = new Map<string, Conv>();
  /** Own sends not yet in the log, by client_msg_id. */
  readonly outgoing = new Map<string, OutgoingMessage>();
  /** Contacts' presence as pushed by the gateway: online, or when last seen. */
  readonly presence = new Map<string, { online: boolean; lastSeenMs: number }>();
  /** Profiles seen, by user id: what names show wherever a user id would. */
  readonly profiles = new Map<string, Profile>();
  /** Contacts, requests both ways and blocks (`GET /v1/me/contacts`). */
  contacts: ContactEntry[] = [];
  privacy: Privacy = { directChats: "everyone", groupAdds: "everyone" };
  openId: string | null = null;
  /** A message to bring into view once its conversation shows it (a search hit). */
  focus: { conversationId: string; seq: number } | null = null;
  error = "";
  /** Avatar images fetched, as object URLs by media id ("" while fetching). */
  private avatars = new Map<string, string>();
  /** Ids whose profile was asked for (or is being): each asked once per session. */
  private asked = new Set<string>();
  private wanted = new Set<string>();
  private profileTimer: ReturnType<typeof setTimeout> | undefined;
  private readTimer: ReturnType<typeof setTimeout> | undefined;
  private listeners = new Set<() => void>();

  constructor(
    url: string,
    token: () => Promise<string>,
    readonly me: string,
    /** A display name to set on sign-in, if one was given. */
    private readonly initialName?: string,
  ) {
    this.client = new ImClient({ url, token, deviceId: `web-${Math.random().toString(36).slice(2, 8)}` });
    this.client.on("people", (p) => {
      if (p.other) this.want([p.other]);
      if (p.other) void this.refreshContacts();
      else void this.loadMe();
    });
    this.client.on("profile", (p) => {
      this.profiles.set(p.userId, p);
      this.changed();
    });
    this.client.on("event", (e) => this.onEvent(e));
    this.client.on("status", (m) => this.onStatus(m));
    this.client.on("receipt", (r) => {
      const c = this.conv(r.conversationId);
      const cur = c.cursors.get(r.userId) ?? { delivered: 0, read: 0 };
      const seq = Number(r.upToSeq);
      if (r.kind === ReceiptKind.READ) cur.read = Math.max(cur.read, seq);
      cur.delivered = Math.max(cur.delivered, seq);
      c.cursors.set(r.userId, cur);
      this.changed();
    });
    this.client.on("typing", (t) => {
      if (t.userId === this.me) return;
      const c = this.conv(t.conversationId);
      if (t.typing) c.typing.set(t.userId, Date.now() + TYPING_SHOW_MS);
      else c.typing.delete(t.userId);
      this.changed();
      setTimeout(() => this.changed(), TYPING_SHOW_MS + 100);
    });
    this.client.on("presence", (p) => {
      this.presence.set(p.userId, { online: p.online, lastSeenMs: Number(p.lastSeenMs) });
      this.changed();
    });
    this.client.on("sync", () => void this.refreshList());
    this.client.on("connected", () => this.changed());
    this.client.on("disconnected", () => this.changed());
    this.client.on("error", (e) => {
      this.error = e.message;
      this.changed();
    });
  }

  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed(): void {
    for (const fn of this.listeners) fn();
  }

  start(): void {
    this.client.start();
    void this.refreshList();
    void this.refreshContacts();
    void (this.initialName ? this.saveProfile(this.initialName, "") : this.loadMe());
  }

  /** A user's display name, or their id until (or unless) they set one. */
  displayName(userId: string): string {
    this.want([userId]);
    return this.profiles.get(userId)?.displayName || userId;
  }

  /** Asks for the profiles of `ids` not asked yet, in one request a moment later. */
  want(ids: Iterable<string>): void {
    for (const id of ids) if (!this.asked.has(id)) this.wanted.add(id);
    if (this.wanted.size === 0 || this.profileTimer) return;
    this.profileTimer = setTimeout(() => void this.fetchWanted(), PROFILE_BATCH_MS);
  }

  private async fetchWanted(): Promise<void> {
    this.profileTimer = undefined;
    const ids = [...this.wanted];
    this.wanted.clear();
    for (const id of ids) this.asked.add(id);
    try {
      for (const p of await this.client.http.profiles(ids)) this.profiles.set(p.userId, p);
      this.changed();
    } catch {
      for (const id of ids) this.asked.delete(id); // asked again on the next render
    }
  }

  /** The image URL of `userId`'s avatar once fetched (undefined: show initials). */
  avatarOf(userId: string): string | undefined {
    const media = this.profiles.get(userId)?.avatar;
    if (!media) return undefined;
    const url = this.avatars.get(media.mediaId);
    if (url === undefined) {
      this.avatars.set(media.mediaId, "");
      void this.client.http
        .media(media.mediaId, true)
        .catch(() => this.client.http.media(media.mediaId, false))
        .then((blob) => {
          this.avatars.set(media.mediaId, URL.createObjectURL(blob));
          this.changed();
        })
        .catch(() => {});
    }
    return url || undefined;
  }

  async loadMe(minPosition = 0): Promise<void> {
    try {
      const me = await this.client.http.me(minPosition);
      if (me.profile) this.profiles.set(this.me, me.profile);
      this.privacy = me.privacy;
      this.changed();
    } catch {
      // Shown as the user id until the projectors answer.
    }
  }

  /** Replaces the profile; the avatar kept unless a new image is given. */
  async saveProfile(displayName: string, status: string, image?: File): Promise<void> {
    const avatar = image ? await this.client.http.upload(image, image.type) : this.profiles.get(this.me)?.avatar;
    const r = await this.client.http.setProfile({ displayName, status, avatar });
    await this.loadMe(r.streamSeq);
  }

  async savePrivacy(privacy: Privacy): Promise<void> {
    const r = await this.client.http.setPrivacy(privacy);
    await this.loadMe(r.streamSeq);
  }

  async refreshContacts(minPosition = 0): Promise<void> {
    try {
      this.contacts = (await this.client.http.contacts(minPosition)).entries;
      this.want(this.contacts.map((c) => c.userId));
      this.changed();
    } catch {
      // Kept as they were; the next change refreshes them.
    }
  }

  contactsIn(state: ContactState): ContactEntry[] {
    return this.contacts.filter((c) => c.state === state);
  }

  blocked(userId: string): boolean {
    return this.contacts.some((c) => c.userId === userId && c.blocked);
  }

  /** request, accept, decline, remove, block or unblock `userId`. */
  async contact(userId: string, verb: "request" | "accept" | "decline" | "remove" | "block" | "unblock"): Promise<void> {
    const r = await this.client.http.contact(userId, verb);
    await this.refreshContacts(r.streamSeq);
  }

  /** Sends `text` to `userId` (a direct conversation, made by the first send) and opens it once stored. */
  startChat(userId: string, text: string): void {
    const msg = this.client.send({ toUserId: userId, text });
    const off = this.client.on("status", (m) => {
      if (m.clientMsgId !== msg.clientMsgId || m.status === "queued" || m.status === "sent") return;
      off();
      if (m.conversationId) void this.open(m.conversationId);
    });
  }

  /** The other person of a direct conversation. */
  peer(c: Conv): string | undefined {
    return c.kind === "direct" ? [...c.members.keys()].find((u) => u !== this.me) : undefined;
  }

  stop(): void {
    this.client.stop();
  }

  /** Conversations, most recent activity first. */
  list(): Conv[] {
    return [...this.convs.values()].sort((a, b) => b.lastActivityMs - a.lastActivityMs || a.id.localeCompare(b.id));
  }

  conv(id: string): Conv {
    let c = this.convs.get(id);
    if (!c) {
      c = {
        id,
        kind: id.startsWith("dm_") ? "direct" : "group",
        title: "",
        lastActivityMs: 0,
        preview: "",
        unread: 0,
        members: new Map(),
        membersLoaded: false,
        messages: [],
        cursors: new Map(),
        typing: new Map(),
        atStart: false,
      };
      this.convs.set(id, c);
    }
    return c;
  }

  /** The name a conversation shows: a group's title, the other person of a direct one. */
  name(c: Conv): string {
    if (c.kind === "group") return c.title || c.id;
    const other = this.peer(c);
    return other ? this.displayName(other) : c.title || c.id;
  }

  /** "online", "last seen …" or "" for the other person of a direct conversation. */
  presenceOf(c: Conv): string {
    if (c.kind !== "direct") return "";
    const other = [...c.members.keys()].find((m) => m !== this.me);
    const p = other ? this.presence.get(other) : undefined;
    if (!p) return "";
    if (p.online) return "online";
    return p.lastSeenMs ? `last seen ${new Date(p.lastSeenMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}` : "offline";
  }

  typingIn(c: Conv): string[] {
    const now = Date.now();
    return [...c.typing].filter(([, until]) => until > now).map(([u]) => u);
  }

  async refreshList(): Promise<void> {
    try {
      const page = await this.client.http.conversations();
      for (const item of page.items) this.fromListItem(item);
      this.changed();
      for (const c of this.convs.values()) if (c.kind === "direct" && !c.membersLoaded) void this.loadMembers(c.id);
    } catch (e) {
      this.error = String(e);
      this.changed();
    }
  }

  private fromListItem(item: ConvListItem): void {
    const e = item.entry;
    if (!e) return;
    const c = this.conv(e.conversationId);
    c.kind = e.kind === ConversationKind.DIRECT ? "direct" : "group";
    c.title = e.title;
    c.lastActivityMs = Math.max(c.lastActivityMs, Number(e.lastActivityMs));
    const preview = e.previewSealed ? "message erased" : e.preview;
    if (preview) c.preview = e.previewSender ? `${this.displayName(e.previewSender)}: ${preview}` : preview;
    c.unread = this.openId === c.id ? 0 : Number(item.unread);
  }

  async open(id: string): Promise<void> {
    this.openId = id;
    const c = this.conv(id);
    c.unread = 0;
    this.changed();
    await this.client.open(id);
    c.atStart = this.reachedStart(id);
    await Promise.all([this.loadMembers(id), this.loadCursors(id)]);
    this.client.markRead(id);
    this.changed();
  }

  /**
   * Opens a conversation scrolled to one message (a search hit): older
   * pages are loaded until it is held, at most `FOCUS_PAGES_MAX` of them.
   */
  async openAt(id: string, seq: number): Promise<void> {
    await this.open(id);
    const c = this.conv(id);
    for (let i = 0; i < FOCUS_PAGES_MAX && !c.atStart && !c.messages.some((m) => m.seq <= seq); i++) {
      if ((await this.loadOlder(id)) === 0) break;
    }
    this.focus = { conversationId: id, seq };
    this.changed();
  }

  async loadMembers(id: string): Promise<void> {
    try {
      const r = await this.client.http.members(id);
      const c = this.conv(id);
      c.members = new Map(r.members.map((m) => [m.userId, m.role]));
      c.membersLoaded = true;
      if (r.conversation) c.title = r.conversation.title;
      this.changed();
    } catch {
      // Not a member (any more): the view says so from the events.
    }
  }

  private async loadCursors(id: string): Promise<void> {
    try {
      const r = await this.client.http.receipts(id, 0);
      const c = this.conv(id);
      for (const m of r.members) {
        c.cursors.set(m.userId, { delivered: Number(m.deliveredSeq), read: Number(m.readSeq) });
      }
    } catch {
      // Receipts are decoration: the ticks fill in as updates arrive.
    }
  }

  async loadOlder(id: string): Promise<number> {
    const older = await this.client.loadOlder(id, 50);
    const c = this.conv(id);
    c.atStart = this.reachedStart(id);
    const msgs = older.map((e) => this.toMsg(c, e)).filter((m): m is Msg => m !== null);
    c.messages = [...msgs, ...c.messages];
    this.changed();
    return msgs.length;
  }

  /** The conversation's first event is loaded: there is nothing older. */
  private reachedStart(id: string): boolean {
    return (this.client.conversation(id)?.oldest ?? 0) <= 1;
  }

  /** Who has read `seq` (groups: "read by"), the sender excluded. */
  readBy(c: Conv, m: Msg): string[] {
    return [...c.cursors].filter(([u, cur]) => u !== m.sender && cur.read >= m.seq).map(([u]) => u);
  }

  deliveredTo(c: Conv, m: Msg): string[] {
    return [...c.cursors].filter(([u, cur]) => u !== m.sender && cur.delivered >= m.seq).map(([u]) => u);
  }

  private onStatus(m: OutgoingMessage): void {
    if (m.status === "stored" || m.status === "delivered" || m.status === "read") {
      this.outgoing.delete(m.clientMsgId);
    } else {
      this.outgoing.set(m.clientMsgId, m);
    }
    if (m.status === "rejected" || m.status === "failed") this.error = `not sent: ${m.reason}`;
    this.changed();
  }

  private onEvent(e: LogEvent): void {
    const c = this.conv(e.conversationId);
    const msg = this.toMsg(c, e);
    const ev = e.event;
    c.lastActivityMs = Math.max(c.lastActivityMs, Number(ev.atMs));
    if (msg) {
      c.messages.push(msg);
      if (c.messages.length > MESSAGES_MAX) c.messages.splice(0, c.messages.length - MESSAGES_MAX);
      if (!msg.notice) {
        const shown = msg.erased ? `message ${msg.erased}` : msg.media ? "[image]" : msg.text;
        c.preview = `${this.displayName(msg.sender)}: ${shown}`;
        // History pages bring what was read before; only news counts.
        if (e.live && msg.sender !== this.me && this.openId !== c.id) c.unread++;
      }
    }
    if (this.openId === c.id && document.visibilityState === "visible") this.readSoon(c.id);
    this.changed();
  }

  /** One read receipt per burst of messages: receipts are cumulative. */
  private readSoon(id: string): void {
    if (this.readTimer) return;
    this.readTimer = setTimeout(() => {
      this.readTimer = undefined;
      if (this.openId === id) this.client.markRead(id);
    }, READ_DEBOUNCE_MS);
  }

  /** Applies an event to the conversation; returns the line it shows, if any. */
  private toMsg(c: Conv, e: LogEvent): Msg | null {
    const ev = e.event;
    const base = { seq: e.seq, sender: ev.actor, atMs: Number(ev.atMs), text: "", edited: !!e.edited, recalled: !!e.recalled, clientMsgId: ev.clientMsgId };
    const k = ev.kind;
    const note = (notice: string): Msg => ({ ...base, notice });
    const n = (u: string) => this.displayName(u);
    switch (k.case) {
      case "created":
        c.kind = k.value.kind === ConversationKind.DIRECT ? "direct" : "group";
        c.title = k.value.title;
        for (const m of k.value.members) c.members.set(m.userId, m.role);
        c.members.set(ev.actor, c.kind === "group" ? Role.OWNER : Role.MEMBER);
        return c.kind === "group" ? note(`${n(ev.actor)} created "${k.value.title}"`) : null;
      case "memberAdded":
        c.members.set(k.value.userId, k.value.role);
        return note(`${n(ev.actor)} added ${n(k.value.userId)}`);
      case "membersAdded": {
        for (const m of k.value.members) c.members.set(m.userId, m.role);
        const count = k.value.members.length;
        return note(`${n(ev.actor)} added ${count === 1 ? n(k.value.members[0].userId) : `${count} members`}`);
      }
      case "memberRemoved":
        c.members.delete(k.value.userId);
        return note(`${n(ev.actor)} removed ${n(k.value.userId)}`);
      case "memberLeft":
        c.members.delete(ev.actor);
        return note(`${n(ev.actor)} left`);
      case "blacklisted":
        // In a direct conversation a block keeps both members.
        if (c.kind === "group") c.members.delete(k.value.userId);
        return note(`${n(ev.actor)} blocked ${n(k.value.userId)}`);
      case "unblacklisted":
        return note(`${n(ev.actor)} unblocked ${n(k.value.userId)}`);
      case "messageSent": {
        const sealed = k.value.sealed;
        if (sealed) return { ...base, erased: sealed.state === SealedState.UNREADABLE ? "unreadable" : "erased" };
        const body = k.value.body;
        return { ...base, text: body.case === "text" ? body.value : "", media: body.case === "media" ? body.value : undefined };
      }
      case "messageEdited": {
        const target = c.messages.find((m) => m.seq === Number(k.value.targetConvSeq));
        if (target) Object.assign(target, { text: k.value.text, edited: true });
        return null;
      }
      case "messageRecalled": {
        const target = c.messages.find((m) => m.seq === Number(k.value.targetConvSeq));
        if (target) Object.assign(target, { text: "", media: undefined, recalled: true });
        return null;
      }
      default:
        return null;
    }
  }
}
