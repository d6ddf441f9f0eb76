// The token a connection uses: fetched from the application's `token()`,
// cached, and due for a refresh at a fraction of its lifetime. The JWT is
// decoded only to read `exp`/`iat` (never verified here: the server does that).

/** A token and when it is due for replacement (ms since the epoch; Infinity = never). */
export interface HeldToken {
  value: string;
  refreshAt: number;
  expiresAt: number;
}

/** `exp` and `iat` of a JWT, in seconds; undefined when it cannot be read. */
export function claims(jwt: string): { exp?: number; iat?: number } {
  try {
    const part = jwt.split(".")[1];
    if (!part) return {};
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return {
      exp: typeof json.exp === "number" ? json.exp : undefined,
      iat: typeof json.iat === "number" ? json.iat : undefined,
    };
  } catch {
    return {};
  }
}

/**
 * Wraps a freshly fetched token. Its lifetime runs from `iat` (or from now
 * when absent, or when `iat` lies in the future by our clock) to `exp`; it is
 * due at `fraction` of it.
 */
export function hold(value: string, fraction: number, now: number = Date.now()): HeldToken {
  const { exp, iat } = claims(value);
  if (exp === undefined) return { value, refreshAt: Infinity, expiresAt: Infinity };
  const expMs = exp * 1000;
  const start = iat !== undefined && iat * 1000 <= now ? iat * 1000 : now;
  return { value, refreshAt: start + Math.max(0, expMs - start) * fraction, expiresAt: expMs };
}
