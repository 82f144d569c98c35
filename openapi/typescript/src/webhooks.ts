/**
 * Webhooks from tegami, signed as the Standard Webhooks specification says
 * (`webhook-id`, `webhook-timestamp`, `webhook-signature` headers; secret `whsec_...`).
 *
 * The event types below follow tegami's webhook events (`email.*`, `recipient.*`,
 * `webhook.test`). When openapi.json carries them under `webhooks`, regenerate
 * `schema.d.ts` and these types can come from there.
 */
import { Webhook } from "standardwebhooks";

export type EmailEventType =
  | "email.sent"
  | "email.delivered"
  | "email.delivery_delayed"
  | "email.bounced"
  | "email.complained"
  | "email.failed"
  | "email.expired"
  | "email.held";

export type RecipientEventType =
  | "recipient.suppressed"
  | "recipient.unsuppressed"
  | "recipient.opted_out"
  | "recipient.opted_in";

export interface EmailEvent {
  type: EmailEventType;
  /** When the change happened (ISO 8601, UTC). */
  timestamp: string;
  data: {
    /** The id the send answered with. */
    email_id: string;
    /** The mail type, as in its send path. */
    type: string;
    user_id: string | null;
    /** Null once erased. */
    address: string | null;
    /** The mail's status after the event. */
    status: string;
    ses_type?: string | null;
    ses_subtype?: string | null;
    diagnostic?: string | null;
  };
}

export interface RecipientEvent {
  type: RecipientEventType;
  timestamp: string;
  data: {
    address: string | null;
    user_id: string | null;
    /** Suppressions: hard_bounce, soft_bounce_limit, complaint or manual. */
    reason?: string | null;
    /** Opt-outs: the mail category. */
    category?: string | null;
  };
}

export interface RecipientErasedEvent {
  type: "recipient.erased";
  timestamp: string;
  data: { user_id: string | null; erased: true };
}

export interface WebhookTestEvent {
  type: "webhook.test";
  timestamp: string;
  data: { message: string };
}

/** Every event tegami posts; narrow on `type`. */
export type TegamiWebhookEvent =
  | EmailEvent
  | RecipientEvent
  | RecipientErasedEvent
  | WebhookTestEvent;

export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

function headerRecord(headers: WebhookHeaders): Record<string, string> {
  const out: Record<string, string> = {};
  if (headers instanceof Headers) {
    headers.forEach((value, name) => {
      out[name.toLowerCase()] = value;
    });
    return out;
  }
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name.toLowerCase()] = Array.isArray(value) ? value.join(",") : value;
  }
  return out;
}

/**
 * Verify a webhook's signature and timestamp (5 minutes of tolerance) and return its event.
 * Pass the body exactly as received (`await request.text()`), not re-serialised JSON.
 * Throws (standardwebhooks' `WebhookVerificationError`) when it does not verify.
 */
export function verifyWebhook(
  payload: string | Buffer,
  headers: WebhookHeaders,
  secret: string,
): TegamiWebhookEvent {
  const body = typeof payload === "string" ? payload : payload.toString("utf8");
  return new Webhook(secret).verify(body, headerRecord(headers)) as TegamiWebhookEvent;
}

export { WebhookVerificationError } from "standardwebhooks";
