// Reconnect timing: full-jitter exponential backoff and what each close code
// means for the next attempt (contract section 2, "Close codes"). Pure
// functions of (code, attempt, options, random): unit-tested without a network.

/** Reconnect timing, every field optional in `GatewayOptions.backoff`. */
export interface BackoffOptions {
  /** Base of the exponential backoff in ms (default 100). */
  minMs: number;
  /** Cap of the exponential backoff in ms (default 10 000). */
  maxMs: number;
  /** After 1001/1012 (node draining) the reconnect happens at a random instant within this window, in ms (default 2 000). */
  drainWindowMs: number;
  /** After 4029/1013 (rate limited, overloaded) the wait is at least this, in ms (default 2 000)... */
  overloadMinMs: number;
  /** ...and at most this, in ms (default 30 000). */
  overloadMaxMs: number;
}

/** The defaults of {@link BackoffOptions}. */
export const DEFAULT_BACKOFF: BackoffOptions = {
  minMs: 100,
  maxMs: 10_000,
  drainWindowMs: 2_000,
  overloadMinMs: 2_000,
  overloadMaxMs: 30_000,
};

/**
 * Full jitter ("Exponential Backoff And Jitter", AWS): uniform in
 * [0, min(maxMs, minMs * 2^attempt)). Attempt 0 is the first retry.
 */
export function fullJitter(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/** What to do after a connection ended with `code`. */
export type Reaction =
  | { retry: false }
  | { retry: true; delayMs: number; newToken: boolean };

/**
 * The reaction to a close code. `attempt` counts the connection attempts that
 * failed since the last one that reached `welcome` (0 right after a session
 * that worked).
 */
export function reactToClose(
  code: number,
  attempt: number,
  opts: BackoffOptions,
  random: () => number = Math.random,
): Reaction {
  switch (code) {
    case 4003: // disconnected by the server: never reconnect with the same credentials
      return { retry: false };
    case 1001:
    case 1012: // draining: another node is ready; spread the herd over the window
      return {
        retry: true,
        delayMs: attempt === 0 ? Math.floor(random() * opts.drainWindowMs) : fullJitter(attempt, opts.minMs, opts.maxMs, random),
        newToken: false,
      };
    case 4001: // token expired or revoked
      return { retry: true, delayMs: fullJitter(attempt, opts.minMs, opts.maxMs, random), newToken: true };
    case 4029:
    case 1013: // rate limited / overloaded: back off longer
      return {
        retry: true,
        delayMs: Math.min(opts.overloadMaxMs, opts.overloadMinMs + fullJitter(attempt, opts.overloadMinMs, opts.overloadMaxMs, random)),
        newToken: false,
      };
    default:
      return { retry: true, delayMs: fullJitter(attempt, opts.minMs, opts.maxMs, random), newToken: false };
  }
}
