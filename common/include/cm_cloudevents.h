/*
 * cm_cloudevents: CloudEvents 1.0 in structured JSON mode, for topics read
 * by clients that are not ours (the partner topic, kafka/partner/README.md):
 * the record's value is the whole event — attributes and data in one JSON
 * object — so it can be forwarded as is.
 *
 * to publish one through the outbox, build the envelope with
 * cm_cloudevent_json and pass it as the cm_outbox_event payload with
 * content_type CM_CLOUDEVENTS_JSON_CONTENT_TYPE: the relay then writes the
 * record with that content-type header and without the ce_* binary-mode
 * headers (and without tenant-id), as the CloudEvents kafka binding
 * prescribes for structured mode.
 */
#ifndef CM_CLOUDEVENTS_H
#define CM_CLOUDEVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "cm_json.h"

/* the content type of a structured-mode record */
#define CM_CLOUDEVENTS_JSON_CONTENT_TYPE "application/cloudevents+json; charset=UTF-8"

/* 1 when content_type names structured mode (application/cloudevents+json,
 * with or without parameters, any case) */
int cm_cloudevent_is_structured(const char *content_type);

/* the attributes of one event. NULL optional attributes are left out of the
 * envelope (never written as null). */
typedef struct cm_cloudevent {
    const char *id;            /* required: the event's UUID, lower case */
    const char *source;        /* required: "/commerce/commission" */
    const char *type;          /* required: "com.commerce.commission.v1.accrued" */
    int64_t time_ms;           /* required: unix ms, written as RFC 3339 UTC with ms */
    const char *subject;       /* optional: what the event is about */
    const char *tenant_id;     /* optional: the "tenantid" extension */
    const char *partition_key; /* optional: the "partitionkey" extension */
    const char *traceparent;   /* optional: the "traceparent" extension */
} cm_cloudevent;

/* builds the envelope: specversion "1.0", the attributes above, and
 * datacontenttype "application/json" with data_json (a JSON object, which
 * is parsed and embedded, not copied as text) as "data". on 0 *out is a
 * compact, NUL-terminated UTF-8 JSON text of *len bytes that the caller
 * frees with free(). CM_EINVAL when a required attribute is missing, the id
 * is not a UUID, or data_json is not a JSON object; CM_ENOMEM. */
int cm_cloudevent_json(const cm_cloudevent *ce, const char *data_json, char **out, size_t *len);

/* the envelope written into j as it is built: opens the object and writes
 * the attributes above, in the contract's order; the caller then writes
 * data (cm_json_object(j, "data"), its members, cm_json_end) and closes
 * the envelope (cm_json_end). no tree, no parse: commission writes a
 * partner event per accrual this way (jansson's build and dump had been
 * over a third of its accrual consumer's CPU). 0, or CM_EINVAL when a
 * required attribute is missing, the id is not a UUID or a value is not
 * UTF-8 (nothing is written then that the caller should keep). */
int cm_cloudevent_begin(cm_json *j, const cm_cloudevent *ce);

#endif
