/**
 * Webhooks from tegami, signed as the Standard Webhooks specification says
 * (`webhook-id`, `webhook-timestamp`, `webhook-signature` headers; secret `whsec_...`).
 * The event types come from the `webhooks` section of openapi.json.
 */
import { Webhook } from "standardwebhooks";

import type { components, webhooks } from "./schema.js";

type Schemas = components["schemas"];

/** Every event name tegami posts (`email.sent`, `recipient.suppressed`, ...). */
export type WebhookEventType = keyof webhooks;

type Payload<K extends WebhookEventType> = NonNullable<
  webhooks[K]["post"]
>["requestBody"]["content"]["application/json"];

/** Every event tegami posts; narrow on `type`. */
export type TegamiWebhookEvent = Payload<WebhookEventType>;
/** The event of one type, its `data` narrowed (`reason`, `category`, `ses_type` as enums). */
export type WebhookEvent<K extends WebhookEventType> = Payload<K>;
export type EmailEvent = Schemas["EmailEvent"];
export type EmailBouncedEvent = Schemas["EmailBouncedEvent"];
export type EmailComplainedEvent = Schemas["EmailComplainedEvent"];
export type RecipientSuppressionEvent = Schemas["RecipientSuppressionEvent"];
export type RecipientOptOutEvent = Schemas["RecipientOptOutEvent"];
export type RecipientErasedEvent = Schemas["RecipientErasedEvent"];
export type WebhookTestEvent = Schemas["WebhookTestEvent"];
export type BounceType = EmailBouncedEvent["data"]["ses_type"];

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
