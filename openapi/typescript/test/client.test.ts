/**
 * The client against a real `tegami serve` (TEGAMI_URL, TEGAMI_KEY: an app key,
 * TEGAMI_ADMIN_KEY: an admin key), as tests/test_typescript_client.py starts it; and its retries
 * and webhook verification against small local stand-ins.
 */
import assert from "node:assert/strict";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";

import {
  createTegamiClient,
  type SendResult,
  type SuppressionReason,
  verifyWebhook,
} from "../src/index.js";

const url = process.env.TEGAMI_URL;
const key = process.env.TEGAMI_KEY;
const adminKey = process.env.TEGAMI_ADMIN_KEY;
const live = url && key && adminKey ? false : "TEGAMI_URL, TEGAMI_KEY and TEGAMI_ADMIN_KEY not set (run through tests/test_typescript_client.py)";

const unique = () => `ts-${randomUUID().slice(0, 8)}@example.com`;

describe("against tegami serve", { skip: live }, () => {
  const client = createTegamiClient({ baseUrl: url ?? "", apiKey: key ?? "" });
  const admin = createTegamiClient({ baseUrl: url ?? "", apiKey: adminKey ?? "" });

  test("each type of mail is accepted", async () => {
    const results: SendResult[] = [
      await client.send("verify-email", { to: unique(), params: { verification_url: "https://proworks.jp/v?t=1" } }),
      await client.send("password-reset", { to: unique(), params: { reset_url: "https://proworks.jp/r?t=1" } }),
      await client.send("email-change", { to: unique(), params: { verification_url: "https://proworks.jp/c?t=1" } }),
      await client.send("matching-notification", { to: unique(), params: { job_url: "https://proworks.jp/jobs/1" }, user_id: "u1" }),
    ];
    for (const result of results) {
      assert.equal(result.kind, "accepted", JSON.stringify(result));
      if (result.kind === "accepted") {
        assert.equal(result.replayed, false);
        const email = await client.getEmail(result.id);
        assert.equal(email.id, result.id);
      }
    }
  });

  test("a suppressed address is refused with its reason", async () => {
    const to = unique();
    const { response } = await admin.api.PUT("/recipients/{email}/suppression", {
      params: { path: { email: to } },
      body: { reason: "manual", detail: "typescript client test" },
    });
    assert.equal(response.status, 200);
    const result = await client.send("password-reset", { to, params: { reset_url: "https://proworks.jp/r" } });
    assert.equal(result.kind, "suppressed", JSON.stringify(result));
    if (result.kind === "suppressed") {
      const reason: SuppressionReason = result.reason; // narrowed by kind
      assert.equal(reason, "manual");
    }
  });

  test("a wrong param is invalid, naming the field", async () => {
    const result = await client.send("password-reset", { to: unique(), params: { reset_url: "https://evil.example/r" } });
    assert.equal(result.kind, "invalid", JSON.stringify(result));
    if (result.kind === "invalid") {
      assert.equal(result.code, "invalid_params");
      assert.match(result.fields.reset_url ?? "", /TEGAMI_LINK_HOSTS/);
    }
    const wrong = await client.send("password-reset", {
      to: unique(),
      // @ts-expect-error a password reset takes reset_url, not verification_url
      params: { verification_url: "https://proworks.jp/v" },
    });
    assert.equal(wrong.kind, "invalid", JSON.stringify(wrong));
    if (wrong.kind === "invalid") {
      assert.ok("verification_url" in wrong.fields && "reset_url" in wrong.fields, JSON.stringify(wrong.fields));
    }
    const address = await client.send("verify-email", { to: "not-an-address", params: { verification_url: "https://proworks.jp/v" } });
    assert.ok(address.kind === "invalid" && "to" in address.fields, JSON.stringify(address));
  });

  test("a retry with the same Idempotency-Key returns the first answer, replayed", async () => {
    const body = { to: unique(), params: { verification_url: "https://proworks.jp/v?t=2" } };
    const idempotencyKey = `signup-${randomUUID()}`;
    const first = await client.send("verify-email", body, { idempotencyKey });
    const again = await client.send("verify-email", body, { idempotencyKey });
    assert.ok(first.kind === "accepted" && again.kind === "accepted");
    assert.equal(again.id, first.id);
    assert.equal(first.replayed, false);
    assert.equal(again.replayed, true);
  });

  test("a batch answers each item in order: a suppressed one is refused alone", async () => {
    const [good, blocked] = [unique(), unique()];
    await admin.api.PUT("/recipients/{email}/suppression", {
      params: { path: { email: blocked } },
      body: { reason: "manual" },
    });
    const { results, replayed } = await client.sendBatch("matching-notification", [
      { to: good, params: { job_url: "https://proworks.jp/jobs/2" }, tags: { job_id: "J-2" } },
      { to: blocked, params: { job_url: "https://proworks.jp/jobs/2" } },
    ]);
    assert.equal(replayed, false);
    assert.equal(results.length, 2);
    assert.ok(results[0]?.id, JSON.stringify(results));
    assert.equal(results[1]?.error?.code, "suppressed");
    const found = await client.findEmails({ to: good.toUpperCase(), tag: ["job_id:J-2"] });
    assert.deepEqual(found.emails.map((e) => e.id), [results[0]?.id]);
    assert.deepEqual(found.emails[0]?.tags, { job_id: "J-2" });
    assert.equal(found.next_cursor, null);
  });

  test("a scheduled mail is cancelled once; then it is not cancellable", async () => {
    const sendAt = new Date(Date.now() + 86_400_000).toISOString();
    const sent = await client.send("matching-notification", {
      to: unique(), params: { job_url: "https://proworks.jp/jobs/3" }, send_at: sendAt,
    });
    assert.ok(sent.kind === "accepted");
    assert.deepEqual(await client.cancel(sent.id), { kind: "cancelled" });
    assert.deepEqual(await client.cancel(sent.id), { kind: "not_cancellable", status: "cancelled" });
  });

  test("a preview renders the mail; bad params are an error", async () => {
    const shown = await client.preview("password-reset", {
      to: unique(), params: { reset_url: "https://proworks.jp/r?t=9" },
    });
    assert.equal(shown.subject, "【PRO WORKS】パスワードのリセット");
    assert.ok(shown.text.includes("https://proworks.jp/r?t=9"));
    await assert.rejects(
      client.preview("password-reset", { to: unique(), params: { reset_url: "http://evil.example/r" } }),
      (error: Error & { status?: number }) => error.status === 422,
    );
  });

  test("why says, in Japanese, what became of a person's mail", async () => {
    const to = unique();
    const none = await client.why(to, "password-reset");
    assert.equal(none.verdict, "never_sent");
    assert.equal(none.email_id, null);
    const sent = await client.send("password-reset", { to, params: { reset_url: "https://proworks.jp/r" } });
    assert.ok(sent.kind === "accepted");
    const verdict = await client.why(to);
    assert.equal(verdict.email_id, sent.id);
    assert.ok(["queued", "sent"].includes(verdict.verdict), verdict.verdict);
    assert.match(verdict.explanation, /[ぁ-んァ-ン一-龥]/);
  });

  test("an unknown key is an error, not a result", async () => {
    const stranger = createTegamiClient({ baseUrl: url ?? "", apiKey: "tgm_not-a-key" });
    await assert.rejects(
      stranger.send("verify-email", { to: unique(), params: { verification_url: "https://proworks.jp/v" } }),
      (error: Error & { status?: number; code?: string }) => error.status === 401 && error.code === "unauthorized",
    );
  });
});

/** A stand-in that answers each request with the next of `answers`, recording what it got. */
async function standIn(answers: Array<(res: import("node:http").ServerResponse, req: import("node:http").IncomingMessage) => void>) {
  const seen: Array<{ key: string | undefined; body: string }> = [];
  const server: Server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      seen.push({ key: req.headers["idempotency-key"] as string | undefined, body });
      const answer = answers[Math.min(seen.length - 1, answers.length - 1)];
      answer?.(res, req);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, seen, close: () => new Promise((r) => server.close(r)) };
}

const unavailable = (retryAfter: string) => (res: import("node:http").ServerResponse) => {
  res.writeHead(503, { "Content-Type": "application/json", "Retry-After": retryAfter });
  res.end(JSON.stringify({ error: { code: "unavailable", message: "the service is temporarily unavailable" } }));
};
const accepted = (res: import("node:http").ServerResponse) => {
  res.writeHead(202, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ id: "3fa85f64-5717-4562-b3fc-2c963f66afa6", status: "queued" }));
};
const body = { to: "taro@example.com", params: { reset_url: "https://proworks.jp/r" } };

describe("retries", () => {
  test("503 is retried after Retry-After, with the same Idempotency-Key and body", async () => {
    const server = await standIn([unavailable("0"), unavailable("1"), accepted]);
    try {
      const client = createTegamiClient({ baseUrl: server.url, apiKey: "k", retry: { baseDelayMs: 1 } });
      const started = Date.now();
      const result = await client.send("password-reset", body);
      assert.equal(result.kind, "accepted");
      assert.equal(server.seen.length, 3);
      assert.ok(Date.now() - started >= 1000, "waited the second answer's Retry-After: 1");
      assert.equal(new Set(server.seen.map((s) => s.key)).size, 1);
      assert.ok(server.seen[0]?.key);
      assert.deepEqual(server.seen.map((s) => JSON.parse(s.body)), [body, body, body]);
    } finally {
      await server.close();
    }
  });

  test("a dropped connection is retried; attempts are bounded", async () => {
    const server = await standIn([(_res, req) => req.socket.destroy(), accepted]);
    try {
      const client = createTegamiClient({ baseUrl: server.url, apiKey: "k", retry: { baseDelayMs: 1 } });
      assert.equal((await client.send("password-reset", body)).kind, "accepted");
      assert.equal(server.seen.length, 2);
    } finally {
      await server.close();
    }
    const down = await standIn([unavailable("0")]);
    try {
      const client = createTegamiClient({ baseUrl: down.url, apiKey: "k", retry: { attempts: 3, baseDelayMs: 1 } });
      await assert.rejects(client.send("password-reset", body), (e: Error & { status?: number }) => e.status === 503);
      assert.equal(down.seen.length, 3);
    } finally {
      await down.close();
    }
  });
});

describe("verifyWebhook", () => {
  // Signed here as the Standard Webhooks specification says, independently of the library.
  const secretBytes = randomBytes(32);
  const secret = `whsec_${secretBytes.toString("base64")}`;
  const payload = JSON.stringify({
    type: "email.bounced",
    timestamp: new Date().toISOString(),
    data: { email_id: randomUUID(), type: "password-reset", user_id: "u1", address: "taro@example.com", status: "bounced", ses_type: "Permanent" },
  });
  const sign = (id: string, timestamp: string, body: string) =>
    `v1,${createHmac("sha256", secretBytes).update(`${id}.${timestamp}.${body}`).digest("base64")}`;
  const id = `msg_${randomUUID()}`;
  const timestamp = String(Math.floor(Date.now() / 1000));
  const headers = { "webhook-id": id, "webhook-timestamp": timestamp, "webhook-signature": sign(id, timestamp, payload) };

  test("a signed event is returned, typed", () => {
    const event = verifyWebhook(payload, new Headers(headers), secret);
    assert.equal(event.type, "email.bounced");
    if (event.type === "email.bounced") {
      assert.equal(event.data.ses_type, "Permanent"); // narrowed to an email event
    }
  });

  test("a changed byte is refused", () => {
    const changed = payload.replace("Permanent", "Permanenu");
    assert.throws(() => verifyWebhook(changed, headers, secret));
    assert.throws(() => verifyWebhook(payload, { ...headers, "webhook-id": `${id}x` }, secret));
    assert.throws(() => verifyWebhook(Buffer.from(payload), headers, `whsec_${randomBytes(32).toString("base64")}`));
  });
});
