// The client: one logical connection that survives transport failures. It
// owns the subscriptions, the per-channel cursors (resume + dedupe), the
// token (fetch, in-place refresh, re-fetch after 4001), the heartbeat
// watchdog and the reconnect schedule. Each transport attempt is replaced as
// a whole; nothing is buffered while offline (`publish` rejects at once).

import { BackoffOptions, DEFAULT_BACKOFF, reactToClose } from "./backoff.js";
import { Cursors, Position } from "./cursor.js";
import { HeldToken, hold } from "./token.js";
import {
  Codec,
  EventSourceCtor,
  Frame,
  MsgpackLike,
  Transport,
  WebSocketCtor,
  jsonCodec,
  msgpackCodec,
  openEventSource,
  openWebSocket,
} from "./transport.js";

/** Connection state, as `on("state")` reports it. */
export type State = "connecting" | "connected" | "disconnected" | "closed";

/** Where an event came from: its wire channel (`room:lobby`, `user:alice`, `broadcast`) and offset (absent for channels without history). */
export interface EventContext {
  channel: string;
  offset?: number;
}

/** Continuity of `channel` was lost: events up to `offset` (of `epoch`) may be missing; reload that channel's state from your backend. */
export interface ResyncInfo {
  channel: string;
  offset: number;
  epoch: string;
}

/** Errors, as `on("error")` reports them and as `publish`/`presence` reject. */
export class GatewayError extends Error {
  /** The contract's error code (`forbidden`, `bad_room`, ...) or the SDK's own (`offline`, `timeout`, `disconnected`, `closed`, `unsupported`, `token`, `kicked`, `handler`). */
  readonly code: string;
  /** The channel concerned, when there is one. */
  readonly channel?: string;
  constructor(code: string, message: string, channel?: string) {
    super(message);
    this.name = "GatewayError";
    this.code = code;
    this.channel = channel;
  }
}

/** The contract's presence object (section 7). */
export interface Presence {
  users: number;
  clients: number;
  members: string[];
  truncated: boolean;
}

/** A join or leave of a room (rooms listed in the server's `presence.events`). */
export interface PresenceChange {
  type: "join" | "leave";
  channel: string;
  user: string;
}

/** Handler of a channel's events. */
export type Handler = (data: any, ctx: EventContext) => void;

/** What `subscribe` returns. */
export interface Subscription {
  readonly room: string;
  /** Settles on the server's first answer: resolves on `ok`, rejects with a {@link GatewayError} (`forbidden`, `bad_room`, ...). */
  readonly ready: Promise<void>;
  /** Stops this handler; the room is left when its last handler goes. */
  unsubscribe(): void;
}

/** Options of {@link Gateway}. */
export interface GatewayOptions {
  /** A JWT, or a function returning one: called at start, before expiry and after 4001. */
  token: string | (() => string | Promise<string>);
  /** Wire format (default "json"). "msgpack" needs `@msgpack/msgpack` installed, or `msgpack` below. */
  format?: "json" | "msgpack";
  /** "websocket" (default), "sse" (receive-only, contract section 9), or "auto": SSE when a WebSocket cannot open. */
  transport?: "websocket" | "sse" | "auto";
  /** The SSE endpoint (default: the WebSocket URL with http(s) and `/sse`). */
  sseUrl?: string;
  /** Reconnect timing. */
  backoff?: Partial<BackoffOptions>;
  /** Fraction of a token's lifetime after which it is refreshed in place (default 0.8). */
  refreshAt?: number;
  /** How long `publish`/`presence` wait for the answer, in ms (default 10 000). */
  requestTimeoutMs?: number;
  /** WebSocket constructor (default `globalThis.WebSocket`; in Node 20 pass the `ws` package's). */
  WebSocket?: WebSocketCtor;
  /** EventSource constructor (default `globalThis.EventSource`). */
  EventSource?: EventSourceCtor;
  /** MessagePack implementation (default: `import("@msgpack/msgpack")`). */
  msgpack?: MsgpackLike;
  /** Random numbers in [0, 1) for the jitter (tests). */
  random?: () => number;
}

type Listeners = {
  state: (s: State) => void;
  resync: (r: ResyncInfo) => void;
  error: (e: GatewayError) => void;
  presence: (p: PresenceChange) => void;
};

interface Room {
  handlers: Set<Handler>;
  ready: Promise<void>;
  settle: (err?: GatewayError) => void;
}

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: GatewayError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const MSGPACK = "@msgpack/msgpack";
/** Failed openings in a row after which the cached token is fetched anew (a refused upgrade is invisible to a browser). */
const REFETCH_AFTER = 3;

/** A connection to the gateway that reconnects and resumes by itself. */
export class Gateway {
  private readonly url: string;
  private readonly opts: GatewayOptions;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private readonly listeners: { [K in keyof Listeners]: Set<Listeners[K]> } = {
    state: new Set(),
    resync: new Set(),
    error: new Set(),
    presence: new Set(),
  };
  private readonly rooms = new Map<string, Room>();
  private readonly userHandlers = new Set<Handler>();
  private readonly broadcastHandlers = new Set<Handler>();
  private readonly cursors = new Cursors();
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;

  /** null until the first attempt starts (so that it is reported). */
  private state: State | null = null;
  private conn: Transport | null = null;
  private connected = false;
  private closed = false;
  /** Failed attempts since the last `welcome`. */
  private attempt = 0;
  private token: HeldToken | null = null;
  private wantNewToken = false;
  private kind: "websocket" | "sse";
  private everConnected = false;
  private sseCursor = "";
  private userChannel = "";
  private lastRx = 0;
  private lastPing = 0;
  /** Timers of the current connection (and the pending reconnect), cleared together. */
  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private codec: Codec | null = null;

  constructor(url: string, opts: GatewayOptions) {
    this.url = url;
    this.opts = opts;
    this.backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.random = opts.random ?? Math.random;
    this.kind = opts.transport === "sse" ? "sse" : "websocket";
    // Connect once the caller has attached its listeners.
    queueMicrotask(() => this.connect());
  }

  /** The current state. */
  get currentState(): State {
    return this.state ?? "connecting";
  }

  /** The transport in use ("websocket" or "sse"). */
  get transport(): "websocket" | "sse" {
    return this.kind;
  }

  /** Listens to `state`, `resync`, `error` or `presence` (join/leave); returns a function that stops listening. */
  on<K extends keyof Listeners>(event: K, fn: Listeners[K]): () => void {
    this.listeners[event].add(fn);
    return () => this.listeners[event].delete(fn);
  }

  /** Calls `handler` with each event of `room`, resuming after reconnects without loss or duplicates (or a `resync`). */
  subscribe(room: string, handler: Handler): Subscription {
    let r = this.rooms.get(room);
    if (!r) {
      let settle!: (err?: GatewayError) => void;
      const ready = new Promise<void>((resolve, reject) => {
        settle = (err) => (err ? reject(err) : resolve());
      });
      ready.catch(() => {}); // surfaced through `error` too; awaiting `ready` is optional
      r = { handlers: new Set(), ready, settle };
      this.rooms.set(room, r);
      // Over SSE the room list is part of the stream's URL.
      if (this.connected) this.kind === "sse" ? this.reopen() : this.joinRoom(room, r);
    }
    // One Set entry per subscribe call, even for the same function.
    const own: Handler = (data, ctx) => handler(data, ctx);
    r.handlers.add(own);
    const theRoom = r;
    return {
      room,
      ready: r.ready,
      unsubscribe: () => {
        if (!theRoom.handlers.delete(own) || theRoom.handlers.size > 0 || this.rooms.get(room) !== theRoom) return;
        this.rooms.delete(room);
        this.cursors.delete("room:" + room);
        if (!this.connected) return;
        if (this.kind === "sse") this.reopen();
        else this.request({ type: "unsubscribe", room }).catch(() => {});
      },
    };
  }

  /** Calls `handler` with each event of the user's own channel (`user:<sub>`), resumed like rooms. */
  onUser(handler: Handler): () => void {
    this.userHandlers.add(handler);
    return () => this.userHandlers.delete(handler);
  }

  /** Calls `handler` with each `broadcast` event. */
  onBroadcast(handler: Handler): () => void {
    this.broadcastHandlers.add(handler);
    return () => this.broadcastHandlers.delete(handler);
  }

  /** Publishes to `room`; resolves with the offset history gave it, rejects with a {@link GatewayError} (`offline` at once when not connected). */
  async publish(room: string, data: unknown): Promise<{ offset?: number }> {
    this.usable();
    const reply = await this.request({ type: "publish", room, data });
    return { offset: reply.offset };
  }

  /** Who is in `room` (the contract's presence object); the token must grant the room. */
  async presence(room: string): Promise<Presence> {
    this.usable();
    const reply = await this.request({ type: "presence", room });
    return reply.presence as Presence;
  }

  /** Closes for good: no reconnect, state "closed". */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.drop();
    this.failPending("closed", "the client was closed");
    this.setState("closed");
  }

  // ---- connection lifecycle ----

  private async connect(): Promise<void> {
    if (this.closed) return;
    this.setState("connecting");
    let token: string;
    let codec: Codec;
    try {
      token = await this.currentToken();
      codec = await this.loadCodec();
    } catch (e) {
      if (this.closed) return;
      this.emitError(new GatewayError("token", "token(): " + String((e as Error)?.message ?? e)));
      this.wantNewToken = true;
      this.scheduleReconnect(1006);
      return;
    }
    if (this.closed) return;
    const sink = {
      frame: (f: Frame) => this.onFrame(f),
      end: (code: number, reason: string) => {
        if (this.conn === t) this.onEnd(code, reason);
      },
    };
    let t: Transport;
    try {
      t =
        this.kind === "sse"
          ? openEventSource(this.eventSourceCtor(), this.sseAddress(token), sink, (c) => (this.sseCursor = c))
          : openWebSocket(this.webSocketCtor(), this.wsAddress(token), codec, sink);
    } catch (e) {
      this.emitError(new GatewayError("unsupported", String((e as Error)?.message ?? e)));
      this.conn = null;
      this.scheduleReconnect(1006);
      return;
    }
    this.conn = t;
  }

  private onEnd(code: number, reason: string): void {
    const wasConnected = this.connected;
    this.drop();
    this.failPending("disconnected", `connection closed (${code}${reason ? ": " + reason : ""})`);
    if (this.closed) return;
    if (!wasConnected && this.opts.transport === "auto" && !this.everConnected) {
      // Before anything ever worked, alternate: a network that blocks
      // WebSockets may still pass a plain HTTP stream.
      this.kind = this.kind === "websocket" ? "sse" : "websocket";
    }
    if (code === 4003) {
      this.closed = true;
      this.emitError(new GatewayError("kicked", "disconnected by the server (4003)"));
      this.setState("closed");
      return;
    }
    this.scheduleReconnect(code);
  }

  private scheduleReconnect(code: number): void {
    const reaction = reactToClose(code, this.attempt, this.backoff, this.random);
    if (!reaction.retry) return;
    this.attempt++;
    if (reaction.newToken || this.attempt % REFETCH_AFTER === 0) this.wantNewToken = true;
    this.setState("disconnected");
    this.later(() => this.connect(), reaction.delayMs);
  }

  /** Ends the current transport without reporting it, and everything timed with it. */
  private drop(): void {
    const t = this.conn;
    this.conn = null;
    this.connected = false;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    t?.close();
  }

  /** SSE: the room list or token changed; the stream is reopened at its cursor. */
  private reopen(): void {
    this.drop();
    this.connect();
  }

  private later(fn: () => void, ms: number): void {
    // setTimeout fires at once beyond 2^31-1 ms (24.8 days): callers re-check.
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      fn();
    }, Math.min(ms, 2 ** 31 - 1));
    this.timers.add(timer);
  }

  // ---- frames ----

  private onFrame(f: Frame): void {
    this.lastRx = Date.now();
    if (typeof f.id === "number" && this.pending.has(f.id)) {
      const p = this.pending.get(f.id)!;
      this.pending.delete(f.id);
      clearTimeout(p.timer);
      if (f.type === "error") p.reject(new GatewayError(f.code, f.message ?? f.code));
      else p.resolve(f);
      return;
    }
    switch (f.type) {
      case "welcome":
        return this.onWelcome(f);
      case "event":
        return this.onEvent(f);
      case "resync":
        this.cursors.resync(f.channel, f.offset, f.epoch);
        return this.emit("resync", { channel: f.channel, offset: f.offset, epoch: f.epoch });
      case "join":
      case "leave":
        return this.emit("presence", { type: f.type, channel: f.channel, user: f.user });
      case "error": {
        // Over SSE a refused room is reported in the stream.
        const room = typeof f.room === "string" ? f.room : undefined;
        const err = new GatewayError(f.code, f.message ?? f.code, room && "room:" + room);
        if (room) this.refuseRoom(room, err);
        return this.emitError(err);
      }
    }
  }

  private onWelcome(f: Frame): void {
    this.connected = true;
    this.everConnected = true;
    this.attempt = 0;
    this.userChannel = "user:" + f.user;
    this.settle(this.userChannel, f.position, f.recovered);
    this.settle("broadcast", f.broadcast_position, f.broadcast_recovered);
    this.setState("connected");
    if (this.kind === "sse") {
      for (const r of this.rooms.values()) r.settle();
    } else {
      for (const [room, r] of this.rooms) this.joinRoom(room, r);
      this.watchHeartbeat(typeof f.heartbeat === "number" && f.heartbeat > 0 ? f.heartbeat * 1000 : 0);
    }
    this.scheduleRefresh();
  }

  private settle(channel: string, position: Position | undefined, recovered: boolean | undefined): void {
    const lost = this.cursors.settle(channel, position, recovered, typeof recovered === "boolean");
    if (lost && position) this.emit("resync", { channel, offset: position.offset, epoch: position.epoch });
  }

  private onEvent(f: Frame): void {
    const channel: string = f.channel;
    let handlers: Iterable<Handler> | undefined;
    if (channel.startsWith("room:")) handlers = this.rooms.get(channel.slice(5))?.handlers;
    else if (channel === this.userChannel) handlers = this.userHandlers;
    else if (channel === "broadcast") handlers = this.broadcastHandlers;
    if (!handlers) return; // a room left locally whose unsubscribe is still in flight
    if (!this.cursors.accept(channel, f.offset)) return; // seen before
    const ctx: EventContext = { channel, offset: f.offset };
    for (const h of handlers) {
      try {
        h(f.data, ctx);
      } catch (e) {
        this.emitError(new GatewayError("handler", String((e as Error)?.message ?? e), channel));
      }
    }
  }

  private joinRoom(room: string, r: Room): void {
    const channel = "room:" + room;
    const since = this.cursors.get(channel);
    const frame: Frame = { type: "subscribe", room };
    if (since) frame.since = since;
    this.request(frame).then(
      (ok) => {
        if (this.rooms.get(room) !== r) return;
        const position = typeof ok.offset === "number" ? { offset: ok.offset, epoch: ok.epoch } : undefined;
        this.settle(channel, position, since ? ok.recovered === true : undefined);
        r.settle();
      },
      (err: GatewayError) => {
        if (err.code === "disconnected" || err.code === "closed" || this.rooms.get(room) !== r) return;
        const e = new GatewayError(err.code, err.message, channel);
        this.refuseRoom(room, e);
        this.emitError(e);
      },
    );
  }

  /** A room the server refused is forgotten (retrying would be refused again). */
  private refuseRoom(room: string, err: GatewayError): void {
    const r = this.rooms.get(room);
    if (!r) return;
    this.rooms.delete(room);
    this.cursors.delete("room:" + room);
    r.settle(err);
  }

  // ---- heartbeat and token ----

  /** Pings every heartbeat (the server's own pings are invisible to browser code) and replaces a connection silent for 2 heartbeats. */
  private watchHeartbeat(hb: number): void {
    if (!hb) return;
    const t = this.conn;
    this.lastRx = this.lastPing = Date.now();
    const tick = () => {
      if (this.conn !== t || !t) return;
      const now = Date.now();
      if (now - this.lastRx > 2 * hb) {
        this.onEnd(4000, "no frame for two heartbeats");
        return;
      }
      if (now - this.lastPing >= hb) {
        this.lastPing = now;
        t.send({ type: "ping" });
      }
      this.later(tick, hb / 4);
    };
    this.later(tick, hb / 4);
  }

  private async currentToken(): Promise<string> {
    const src = this.opts.token;
    if (typeof src === "string") return src;
    const held = this.token;
    if (held && !this.wantNewToken && Date.now() < held.refreshAt) return held.value;
    const value = await src();
    this.wantNewToken = false;
    this.token = hold(value, this.opts.refreshAt ?? 0.8);
    return value;
  }

  private scheduleRefresh(): void {
    const held = this.token;
    if (!held || held.refreshAt === Infinity || typeof this.opts.token === "string") return;
    const t = this.conn;
    this.later(async () => {
      if (this.conn !== t || !this.connected) return;
      if (Date.now() < held.refreshAt - 1000) return this.scheduleRefresh(); // a capped timer
      let fresh: string;
      try {
        fresh = await (this.opts.token as () => string | Promise<string>)();
      } catch (e) {
        // The server closes with 4001 at expiry; token() is asked again then.
        this.emitError(new GatewayError("token", "token(): " + String((e as Error)?.message ?? e)));
        return;
      }
      if (this.conn !== t || !this.connected) return;
      this.token = hold(fresh, this.opts.refreshAt ?? 0.8);
      if (this.kind === "sse") {
        this.reopen(); // an EventSource cannot change its credentials in place
        return;
      }
      this.request({ type: "refresh", token: fresh }).then(
        () => this.scheduleRefresh(),
        (err: GatewayError) => {
          if (err.code !== "disconnected" && err.code !== "closed") this.emitError(err);
        },
      );
    }, Math.max(0, held.refreshAt - Date.now()));
  }

  // ---- requests ----

  private usable(): void {
    if (!this.connected || !this.conn) throw new GatewayError(this.closed ? "closed" : "offline", "not connected");
    if (this.kind === "sse") throw new GatewayError("unsupported", "SSE is receive-only: publish through your backend");
  }

  private request(frame: Frame): Promise<Frame> {
    return new Promise((resolve, reject) => {
      const id = ++this.nextId;
      if (!this.conn || !this.conn.send({ ...frame, id })) {
        reject(new GatewayError("offline", "not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new GatewayError("timeout", `no answer to ${frame.type} within ${this.timeoutMs()} ms`));
      }, this.timeoutMs());
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  private timeoutMs(): number {
    return this.opts.requestTimeoutMs ?? 10_000;
  }

  private failPending(code: string, message: string): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new GatewayError(code, message));
    }
    this.pending.clear();
  }

  // ---- addresses and codecs ----

  private wsAddress(token: string): string {
    const u = new URL(this.url);
    u.searchParams.set("token", token);
    for (const [channel, prefix] of [
      [this.userChannel, "user"],
      ["broadcast", "broadcast"],
    ]) {
      const p = channel ? this.cursors.get(channel) : undefined;
      if (p) {
        u.searchParams.set(prefix + "_offset", String(p.offset));
        u.searchParams.set(prefix + "_epoch", p.epoch);
      }
    }
    return u.toString();
  }

  private sseAddress(token: string): string {
    let u: URL;
    if (this.opts.sseUrl) u = new URL(this.opts.sseUrl);
    else {
      u = new URL(this.url);
      u.protocol = u.protocol === "wss:" ? "https:" : "http:";
      u.pathname = u.pathname.replace(/\/ws\/?$/, "") + "/sse";
    }
    u.searchParams.set("token", token);
    if (this.rooms.size) u.searchParams.set("rooms", [...this.rooms.keys()].join(","));
    if (this.sseCursor) u.searchParams.set("since", this.sseCursor);
    return u.toString();
  }

  private webSocketCtor(): WebSocketCtor {
    const C = this.opts.WebSocket ?? (globalThis as any).WebSocket;
    if (!C) throw new Error("no WebSocket in this runtime: pass options.WebSocket (e.g. the `ws` package)");
    return C;
  }

  private eventSourceCtor(): EventSourceCtor {
    const C = this.opts.EventSource ?? (globalThis as any).EventSource;
    if (!C) throw new Error("no EventSource in this runtime: pass options.EventSource");
    return C;
  }

  private async loadCodec(): Promise<Codec> {
    if (this.codec) return this.codec;
    if (this.opts.format !== "msgpack") return (this.codec = jsonCodec);
    // A variable specifier: bundlers leave it alone, so the package stays optional.
    const lib: MsgpackLike = this.opts.msgpack ?? (await import(/* @vite-ignore */ /* webpackIgnore: true */ MSGPACK));
    return (this.codec = msgpackCodec(lib));
  }

  // ---- events ----

  private setState(s: State): void {
    if (this.state === s) return;
    this.state = s;
    this.emit("state", s);
  }

  private emitError(e: GatewayError): void {
    if (this.listeners.error.size === 0) console.error("[gateway]", e.code, e.message);
    this.emit("error", e);
  }

  private emit<K extends keyof Listeners>(event: K, arg: Parameters<Listeners[K]>[0]): void {
    for (const fn of [...this.listeners[event]]) {
      try {
        (fn as (a: typeof arg) => void)(arg);
      } catch (e) {
        if (event !== "error") this.emitError(new GatewayError("handler", String((e as Error)?.message ?? e)));
      }
    }
  }
}
