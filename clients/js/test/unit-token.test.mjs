// Token lifetime: when a token is due for its in-place refresh.
import { test } from "node:test";
import assert from "node:assert/strict";
import { claims, hold } from "../dist/token.js";

const b64url = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const jwt = (payload) => `${b64url({ alg: "HS256" })}.${b64url(payload)}.sig`;

test("claims are read from the payload", () => {
  assert.deepEqual(claims(jwt({ sub: "a", exp: 2000, iat: 1000 })), { exp: 2000, iat: 1000 });
  assert.deepEqual(claims("not a jwt"), {});
  assert.deepEqual(claims("a.%%%.c"), {});
});

test("refresh at 80 % of iat..exp", () => {
  const t = hold(jwt({ exp: 1100, iat: 1000 }), 0.8, 1_050_000);
  assert.equal(t.refreshAt, 1_080_000);
  assert.equal(t.expiresAt, 1_100_000);
});

test("without iat (or iat ahead of our clock) the lifetime starts now", () => {
  assert.equal(hold(jwt({ exp: 1100 }), 0.8, 1_000_000).refreshAt, 1_080_000);
  assert.equal(hold(jwt({ exp: 1100, iat: 1050 }), 0.5, 1_000_000).refreshAt, 1_050_000);
});

test("a token without exp never needs a refresh", () => {
  assert.equal(hold("opaque", 0.8).refreshAt, Infinity);
});
