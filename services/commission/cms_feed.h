/*
 * cms_feed: the partner feed (README.md, "The partner feed"). The
 * partners' cloudevents leave the commission transactions through the
 * outbox on one internal topic (COMMISSION_PARTNER_TOPIC, every channel's
 * events); the feed consumes that topic and routes each event to the
 * partner that owns its channel (channels.partner_id), in the consumer's
 * transaction:
 *   - feed_events keeps the event as sent (replays, webhook bodies);
 *   - a partner with Kafka on gets an outbox row for its own topic,
 *     commerce.partner.v1.<tenant>.<partner_id> (the relay publishes it);
 *   - a partner with a webhook gets a webhook_deliveries row.
 * The dispatchers (tickers "webhook-1".."webhook-4", COMMISSION_WEBHOOK_
 * WORKERS of them) lease one partner at a time and POST its pending
 * deliveries in order, stopping at the first failure (retried with
 * backoff; the order is kept), and record every attempt.
 */
#ifndef CMS_FEED_H
#define CMS_FEED_H

#include <stddef.h>
#include <stdint.h>

#include "cm_consumer.h"
#include "cm_service.h"
#include "cms_secrets.h"
#include "cms_webhook.h"

#define CMS_FEED_TOPIC_PREFIX "commerce.partner.v1."
#define CMS_PARTNER_ID_MAX 64
#define CMS_FEED_WORKERS_MAX 4

typedef struct cms_feed cms_feed;

/* the feed of a service (its knobs); NULL with err on a bad setting */
cms_feed *cms_feed_new(cm_service *svc, char *err, size_t errlen);
void cms_feed_free(cms_feed *f);

const cms_webhook_policy *cms_feed_policy(const cms_feed *f);

/* the signing secrets at rest (README.md, "Webhook secrets at rest"):
 * sealed under COMMISSION_SECRETS_KEY_FILE's first key, or in plain text
 * with COMMISSION_SECRETS_PLAINTEXT (development), or not stored at all.
 * writable: 1 when a new secret can be stored. */
int cms_feed_secrets_writable(const cms_feed *f);

/* the stored form of a new secret for (tenant, partner) into out: 0,
 * CM_ESTATE when neither knob is set, or a sealing error */
int cms_feed_secret_store(const cms_feed *f, const char *tenant, const char *partner,
                          const char *secret, char out[CMS_SECRETS_SEALED_SIZE]);

/* the secret a stored value holds into out: "" and plain text (a row from
 * before the keyring) as they are, a sealed one opened: 0; CM_ENOTFOUND
 * (no keyring, or its key id is not in it); CM_EINVAL (it does not open) */
int cms_feed_secret_open(const cms_feed *f, const char *tenant, const char *partner,
                         const char *stored, char out[CMS_SECRETS_PLAIN_SIZE]);

/* at start, with a keyring: seals every stored secret that is in plain
 * text or under another key than the first, in one transaction (values
 * that do not open are left and logged). 0 or a CM_E* with err. */
int cms_feed_secrets_reseal(cms_feed *f, cm_db *db, char *err, size_t errlen);

/* the partner's topic name into out (256 bytes) */
void cms_feed_topic(const char *tenant, const char *partner, char out[256]);

/* creates the partner's topic when absent: 0, CM_EUNAVAIL (retry),
 * CM_EINVAL (refused by the brokers), err says why */
int cms_feed_ensure_topic(cms_feed *f, const char *tenant, const char *partner, char *err,
                          size_t errlen);

/* the consumer of COMMISSION_PARTNER_TOPIC (arg: the cms_app, whose
 * feed_batch stages the events): on_event stages one, on_tx_begin drops
 * what an aborted attempt staged, on_tx_end routes the batch in one
 * statement inside the consumer's transaction */
typedef struct cms_feed_batch cms_feed_batch;
cms_feed_batch *cms_feed_batch_new(void);
void cms_feed_batch_free(cms_feed_batch *b);
int cms_feed_on_event(cm_db *db, const cm_event *ev, void *arg);
void cms_feed_on_tx_begin(void *arg);
int cms_feed_on_tx_end(cm_db *db, void *arg);

/* the dispatchers and the retention ticker (arg: the cms_app) */
void cms_feed_webhook_1(cm_service *svc, cm_db *db, void *arg);
void cms_feed_webhook_2(cm_service *svc, cm_db *db, void *arg);
void cms_feed_webhook_3(cm_service *svc, cm_db *db, void *arg);
void cms_feed_webhook_4(cm_service *svc, cm_db *db, void *arg);
void cms_feed_prune(cm_service *svc, cm_db *db, void *arg);

#endif
