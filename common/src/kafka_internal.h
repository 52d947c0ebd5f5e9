/*
 * shared by kafka.c and consumer.c only: not part of the public api, so
 * librdkafka's types stay out of the public headers.
 */
#ifndef CM_KAFKA_INTERNAL_H
#define CM_KAFKA_INTERNAL_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "cm_kafka.h"

/* a conf with bootstrap.servers, client.id and librdkafka's logs routed into
 * cm_log, then the "key", "value" overrides. NULL with err set on a bad
 * setting. */
rd_kafka_conf_t *cm_kafka_conf_base(const char *brokers, const char *client_id,
                                    const char *const *overrides, char *err, size_t errlen);

/* sets one property; 0, or CM_EINVAL with librdkafka's reason in err. */
int cm_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *val, char *err,
                      size_t errlen);

/* a librdkafka error as a CM_E* code; *permanent (may be NULL) is set when
 * sending the same message again cannot succeed. */
int cm_kafka_map_err(rd_kafka_resp_err_t e, int *permanent);

/* escapes a prometheus label value (backslash, quote; newlines dropped). */
void cm_kafka_label_escape(const char *in, char *out, size_t outlen);

/* monotonic seconds, for latency histograms. */
double cm_kafka_mono_s(void);

#endif
