// @gateway/client: the public surface. See README.md.
export { Gateway, GatewayError } from "./gateway.js";
export type {
  EventContext,
  GatewayOptions,
  Handler,
  Presence,
  PresenceChange,
  ResyncInfo,
  State,
  Subscription,
} from "./gateway.js";
export type { BackoffOptions, Reaction } from "./backoff.js";
export { DEFAULT_BACKOFF, fullJitter, reactToClose } from "./backoff.js";
export { Cursors } from "./cursor.js";
export type { Position } from "./cursor.js";
export type { MsgpackLike, WebSocketCtor, EventSourceCtor } from "./transport.js";
