/**
 * A typed client for tegami: one `send` per mail type (a wrong param does not compile), an
 * Idempotency-Key on every send, retries of 503 and network errors honouring `Retry-After`,
 * and a discriminated result for what the app must handle.
 */
import createClient, { type Client } from "openapi-fetch";

import type { components, paths } from "./schema.js";

export type { components, paths } from "./schema.js";
export * from "./webhooks.js";

type Schemas = components["schemas"];

export type MailType =
  | "verify-email"
  | "password-reset"
  | "email-change"
  | "matching-notification";

/** The body of a send of this type (`to`, typed `params`, optional `user_id`). */
export type SendBody<T extends MailType> =
  paths[`/emails/${T}`]["post"]["requestBody"]["content"]["application/json"];

/** One item of a batch of this type: exactly the body of the single send. */
export type BatchItem<T extends MailType> =
  paths[`/emails/${T}/batch`]["post"]["requestBody"]["content"]["application/json"]["emails"][number];

export type ErrorCode = Schemas["ErrorCode"];
export type ErrorBody = Schemas["ErrorBody"];
export type SuppressionReason = Schemas["SuppressionReason"];
export type OptedOutCategory = Schemas["OptedOutCategory"];
export type Email = Schemas["EmailRead"];
export type Recipient = Schemas["RecipientRead"];
/** One item's answer in a batch: `{id, status}` when accepted, else `{error}`. */
export type BatchResult = Schemas["EmailBatchResult"];
export type Preview = Schemas["EmailPreview"];
/** The filters of `findEmails` (`to`, `user_id`, `type`, `status`, `tag`, `since`, `until`,
 * `limit`, `cursor`). */
export type FindEmailsQuery = NonNullable<paths["/emails"]["get"]["parameters"]["query"]>;
export type FoundEmails = Schemas["EmailSearchRead"];
export type FoundEmail = Schemas["EmailFoundRead"];
export type Verdict = Schemas["VerdictRead"];
export type VerdictKind = Schemas["VerdictKind"];

export type CancelResult =
  | { kind: "cancelled" }
  /** Already being handed to SES, or done: `status` says which. */
  | { kind: "not_cancellable"; status: string };

export type SendResult =
  /** Stored by tegami and sent as soon as SES allows. `replayed`: the first answer to an
   * earlier send with the same Idempotency-Key (nothing new was accepted). */
  | { kind: "accepted"; id: string; replayed: boolean }
  /** No mail of any kind goes to the address (bounced, complained, or by hand). */
  | { kind: "suppressed"; reason: SuppressionReason }
  /** The recipient unsubscribed from this optional category. */
  | { kind: "opted_out"; category: OptedOutCategory }
  /** The request was refused: `fields` maps each wrong field (`to`, `reset_url`, ...) to why. */
  | { kind: "invalid"; code: ErrorCode; message: string; fields: Record<string, string> };

/** Any other refusal (401, 403, 413, 415, 503 after the retries, ...). */
export class TegamiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode | "network_error",
    message: string,
  ) {
    super(`tegami: ${status} ${code}: ${message}`);
    this.name = "TegamiError";
  }
}

export interface RetryOptions {
  /** Tries in all, the first included (default 4). */
  attempts?: number;
  /** First backoff when the answer has no Retry-After (default 500 ms), doubled each time. */
  baseDelayMs?: number;
  /** No single wait is longer (default 10 s), whatever Retry-After says. */
  maxDelayMs?: number;
}

export interface TegamiOptions {
  /** `https://mail.proworks.jp` */
  baseUrl: string;
  /** An API key from `tegami api-key create`. */
  apiKey: string;
  retry?: RetryOptions;
  /** For tests or instrumentation; the global fetch otherwise. */
  fetch?: typeof globalThis.fetch;
}

export interface SendOptions {
  /** Defaults to a random UUID. Pass your own (e.g. `signup-${userId}`) to make a retry
   * across processes safe too. */
  idempotencyKey?: string;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Seconds or an HTTP date, as RFC 9110 allows; null when absent or unreadable. */
export function retryAfterMs(value: string | null, now: number = Date.now()): number | null {
  if (value === null) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

/** A fetch that retries 503 and network errors: Retry-After when given, else backoff with
 * jitter; at most `attempts` tries. Safe for sends because each carries its Idempotency-Key. */
export function retryingFetch(
  inner: typeof globalThis.fetch,
  { attempts = 4, baseDelayMs = 500, maxDelayMs = 10_000 }: RetryOptions = {},
): typeof globalThis.fetch {
  return async (input, init) => {
    const request = new Request(input, init);
    for (let attempt = 1; ; attempt++) {
      let response: Response;
      try {
        response = await inner(request.clone());
      } catch (error) {
        if (attempt >= attempts) throw error;
        await sleep(Math.min(maxDelayMs, backoff(baseDelayMs, attempt)));
        continue;
      }
      if (response.status !== 503 || attempt >= attempts) return response;
      const wait = retryAfterMs(response.headers.get("retry-after")) ?? backoff(baseDelayMs, attempt);
      await response.body?.cancel();
      await sleep(Math.min(maxDelayMs, wait));
    }
  };
}

function backoff(baseDelayMs: number, attempt: number): number {
  const ceiling = baseDelayMs * 2 ** (attempt - 1);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function fieldsOf(error: ErrorBody): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const item of error.detail ?? []) {
    // ["body", "params", "reset_url"] -> "reset_url"; ["body", "to"] -> "to"
    const name = item.loc.length > 1 ? String(item.loc[item.loc.length - 1]) : String(item.loc[0] ?? "");
    fields[name] = item.msg;
  }
  return fields;
}

function refusal(status: number, body: unknown): TegamiError {
  const error = (body as { error?: ErrorBody } | undefined)?.error;
  return new TegamiError(status, error?.code ?? "http_error", error?.message ?? "unexpected answer");
}

export interface TegamiClient {
  /** The typed openapi-fetch client, for every other operation. */
  api: Client<paths>;
  send<T extends MailType>(type: T, body: SendBody<T>, options?: SendOptions): Promise<SendResult>;
  getEmail(id: string): Promise<Email>;
  getRecipient(email: string): Promise<Recipient | null>;
  /** Up to 500 mails of one type in one request; one result per item, in order. The
   * Idempotency-Key covers the whole batch. */
  sendBatch<T extends MailType>(
    type: T,
    emails: BatchItem<T>[],
    options?: SendOptions,
  ): Promise<{ results: BatchResult[]; replayed: boolean }>;
  /** Stop a mail not yet handed to SES. A mail of another key is a TegamiError 404. */
  cancel(id: string): Promise<CancelResult>;
  /** The mail as it would be sent (subject, text, html); nothing stored or sent. Invalid
   * params are a TegamiError 422. */
  preview<T extends MailType>(type: T, body: SendBody<T>): Promise<Preview>;
  /** Mail by recipient, user, type, status, tag and time, newest first; pass `next_cursor`
   * back as `cursor` for the next page. */
  findEmails(query?: FindEmailsQuery): Promise<FoundEmails>;
  /** Why the person did or did not get a mail (the newest of `type`, or of any type), in
   * Japanese for support staff. */
  why(email: string, type?: MailType): Promise<Verdict>;
}

export function createTegamiClient(options: TegamiOptions): TegamiClient {
  const api = createClient<paths>({
    baseUrl: options.baseUrl.replace(/\/+$/, ""),
    headers: { Authorization: `Bearer ${options.apiKey}` },
    fetch: retryingFetch(options.fetch ?? globalThis.fetch, options.retry),
  });

  async function send<T extends MailType>(
    type: T,
    body: SendBody<T>,
    { idempotencyKey = crypto.randomUUID() }: SendOptions = {},
  ): Promise<SendResult> {
    // One path per type; its body type was checked at the call (SendBody<T>).
    const { data, error, response } = await api.POST(`/emails/${type}` as "/emails/verify-email", {
      body: body as SendBody<"verify-email">,
      params: { header: { "idempotency-key": idempotencyKey } },
    });
    if (data !== undefined) {
      return {
        kind: "accepted",
        id: data.id,
        replayed: response.headers.get("idempotent-replayed") === "true",
      };
    }
    const refused = error?.error;
    if (response.status === 409 && refused?.code === "suppressed") {
      return { kind: "suppressed", reason: refused.reason as SuppressionReason };
    }
    if (response.status === 409 && refused?.code === "opted_out") {
      return {
        kind: "opted_out",
        category: (refused.category ?? refused.reason) as OptedOutCategory,
      };
    }
    if (response.status === 422 && refused !== undefined) {
      return { kind: "invalid", code: refused.code, message: refused.message, fields: fieldsOf(refused) };
    }
    throw refusal(response.status, error);
  }

  async function getEmail(id: string): Promise<Email> {
    const { data, error, response } = await api.GET("/emails/{id}", { params: { path: { id } } });
    if (data === undefined) throw refusal(response.status, error);
    return data;
  }

  async function getRecipient(email: string): Promise<Recipient | null> {
    const { data, error, response } = await api.GET("/recipients/{email}", {
      params: { path: { email } },
    });
    if (response.status === 404) return null;
    if (data === undefined) throw refusal(response.status, error);
    return data;
  }

  async function sendBatch<T extends MailType>(
    type: T,
    emails: BatchItem<T>[],
    { idempotencyKey = crypto.randomUUID() }: SendOptions = {},
  ): Promise<{ results: BatchResult[]; replayed: boolean }> {
    const { data, error, response } = await api.POST(
      `/emails/${type}/batch` as "/emails/verify-email/batch",
      {
        body: { emails: emails as BatchItem<"verify-email">[] },
        params: { header: { "idempotency-key": idempotencyKey } },
      },
    );
    if (data === undefined) throw refusal(response.status, error);
    return {
      results: data.results,
      replayed: response.headers.get("idempotent-replayed") === "true",
    };
  }

  async function cancel(id: string): Promise<CancelResult> {
    const { data, error, response } = await api.DELETE("/emails/{id}", {
      params: { path: { id } },
    });
    if (data !== undefined) return { kind: "cancelled" };
    const refused = error?.error;
    if (response.status === 409 && refused?.code === "not_cancellable") {
      return { kind: "not_cancellable", status: String(refused.status ?? "") };
    }
    throw refusal(response.status, error);
  }

  async function preview<T extends MailType>(type: T, body: SendBody<T>): Promise<Preview> {
    const { data, error, response } = await api.POST(
      `/emails/${type}/preview` as "/emails/verify-email/preview",
      { body: body as SendBody<"verify-email"> },
    );
    if (data === undefined) throw refusal(response.status, error);
    return data;
  }

  async function findEmails(query: FindEmailsQuery = {}): Promise<FoundEmails> {
    const { data, error, response } = await api.GET("/emails", { params: { query } });
    if (data === undefined) throw refusal(response.status, error);
    return data;
  }

  async function why(email: string, type?: MailType): Promise<Verdict> {
    const { data, error, response } = await api.GET("/recipients/{email}/why", {
      params: { path: { email }, query: type === undefined ? {} : { type } },
    });
    if (data === undefined) throw refusal(response.status, error);
    return data;
  }

  return { api, send, getEmail, getRecipient, sendBatch, cancel, preview, findEmails, why };
}
