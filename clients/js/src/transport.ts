// The two ways frames reach the client: a WebSocket (both directions) and an
// EventSource (server to client only, contract section 9). A transport knows
// nothing of rooms or cursors; it turns bytes into frames and reports its end
// exactly once. After `close()` it reports nothing more.

/** A decoded server frame (contract section 2). */
export type Frame = { type: string; [key: string]: any };

/** Encodes and decodes frames of one wire format. */
export interface Codec {
  /** The subprotocol offered: `v1.json` or `v1.msgpack`. */
  protocol: string;
  encode(frame: object): string | Uint8Array;
  decode(data: unknown): Frame;
}

/** The MessagePack functions the SDK needs (`@msgpack/msgpack` has them). */
export interface MsgpackLike {
  encode(value: unknown): Uint8Array;
  decode(data: Uint8Array): unknown;
}

const decodeText = (data: unknown): Frame => JSON.parse(data as string);

/** JSON frames (WebSocket text messages). */
export const jsonCodec: Codec = {
  protocol: "v1.json",
  encode: (frame) => JSON.stringify(frame),
  decode: decodeText,
};

/** MessagePack frames (binary messages), with `lib` supplying the encoder. */
export function msgpackCodec(lib: MsgpackLike): Codec {
  return {
    protocol: "v1.msgpack",
    encode: (frame) => lib.encode(frame),
    decode: (data) =>
      typeof data === "string" ? decodeText(data) : (lib.decode(new Uint8Array(data as ArrayBuffer)) as Frame),
  };
}

/** What a transport tells its owner. */
export interface Sink {
  frame(frame: Frame): void;
  /** The end, once: the close code (1006 for a network failure). */
  end(code: number, reason: string): void;
}

/** One connection attempt's pipe. */
export interface Transport {
  readonly kind: "websocket" | "sse";
  /** Sends a frame; false when the transport cannot (SSE is one-way, or not open). */
  send(frame: object): boolean;
  /** Ends the pipe without reporting it. */
  close(): void;
}

/** A WHATWG-style WebSocket constructor (the browser's, or `ws` in Node). */
export type WebSocketCtor = new (url: string, protocols?: string | string[]) => WebSocket;
/** A WHATWG EventSource constructor. */
export type EventSourceCtor = new (url: string) => EventSource;

/** The WebSocket transport. */
export function openWebSocket(Ctor: WebSocketCtor, url: string, codec: Codec, sink: Sink): Transport {
  const ws = new Ctor(url, [codec.protocol]);
  ws.binaryType = "arraybuffer";
  let done = false;
  const finish = (code: number, reason: string) => {
    if (done) return;
    done = true;
    sink.end(code, reason);
  };
  ws.onmessage = (m) => {
    if (done) return;
    let frame: Frame;
    try {
      frame = codec.decode(m.data);
    } catch {
      return; // not a frame of ours; the server never sends one
    }
    sink.frame(frame);
  };
  ws.onclose = (e) => finish(e.code || 1006, e.reason || "");
  ws.onerror = () => {}; // a close event follows every error
  return {
    kind: "websocket",
    send(frame) {
      if (done || ws.readyState !== 1) return false;
      ws.send(codec.encode(frame));
      return true;
    },
    close() {
      done = true;
      try {
        ws.close(1000);
      } catch {
        // closing a socket that is still connecting may throw in some runtimes
      }
    },
  };
}

/** The SSE transport: frames are JSON in `data:`, `id:` is the stream's resume cursor. */
export function openEventSource(
  Ctor: EventSourceCtor,
  url: string,
  sink: Sink,
  onCursor: (cursor: string) => void,
): Transport {
  const es = new Ctor(url);
  let done = false;
  const finish = (code: number, reason: string) => {
    if (done) return;
    done = true;
    es.close();
    sink.end(code, reason);
  };
  es.onmessage = (m) => {
    if (done) return;
    let frame: Frame;
    try {
      frame = JSON.parse(m.data);
    } catch {
      return;
    }
    if (m.lastEventId) onCursor(m.lastEventId);
    if (frame.type === "close") finish(typeof frame.code === "number" ? frame.code : 1012, "server closed the stream");
    else sink.frame(frame);
  };
  // EventSource would reconnect by itself, without our backoff or a fresh
  // token: take the retry over.
  es.onerror = () => finish(1006, "stream failed");
  return {
    kind: "sse",
    send: () => false,
    close() {
      done = true;
      es.close();
    },
  };
}
