/*
 * structured-mode cloudevents: the envelope written with cm_json (which
 * writes what jansson would), the data of cm_cloudevent_json parsed with
 * jansson.
 */
#include "cm_cloudevents.h"
#include "cm_buf.h"
#include "cm_err.h"
#include "cm_id.h"
#include "cm_kafka.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int cm_cloudevent_is_structured(const char *content_type)
{
    static const char prefix[] = "application/cloudevents+json";
    size_t n = sizeof prefix - 1;
    if (!content_type || strncasecmp(content_type, prefix, n) != 0)
        return 0;
    char next = content_type[n];
    return next == '\0' || next == ';' || next == ' ';
}

int cm_cloudevent_begin(cm_json *j, const cm_cloudevent *ce)
{
    if (!ce || !cm_id_is_uuid(ce->id) || !ce->source || !*ce->source || !ce->type || !*ce->type ||
        ce->time_ms <= 0)
        return CM_EINVAL;
    /* the uuid checker accepts upper case; the contract says lower */
    char id[CM_ID_SIZE];
    for (size_t i = 0; i < CM_ID_SIZE; i++)
        id[i] = (ce->id[i] >= 'A' && ce->id[i] <= 'F') ? (char)(ce->id[i] - 'A' + 'a') : ce->id[i];
    char time[CM_KAFKA_TIME_SIZE];
    cm_kafka_time_rfc3339(ce->time_ms, time);
    /* the order of the contract's table, so a human reads the same thing */
    cm_json_object(j, NULL);
    cm_json_str(j, "specversion", "1.0");
    cm_json_str(j, "id", id);
    cm_json_str(j, "source", ce->source);
    cm_json_str(j, "type", ce->type);
    cm_json_str(j, "time", time);
    cm_json_str(j, "datacontenttype", "application/json");
    if (ce->subject)
        cm_json_str(j, "subject", ce->subject);
    if (ce->tenant_id)
        cm_json_str(j, "tenantid", ce->tenant_id);
    if (ce->partition_key)
        cm_json_str(j, "partitionkey", ce->partition_key);
    if (ce->traceparent)
        cm_json_str(j, "traceparent", ce->traceparent);
    return j->err;
}

int cm_cloudevent_json(const cm_cloudevent *ce, const char *data_json, char **out, size_t *len)
{
    if (!out || !len)
        return CM_EINVAL;
    *out = NULL;
    *len = 0;
    if (!data_json)
        return CM_EINVAL;
    /* parsed, so a caller cannot slip in text that is not one JSON object */
    json_error_t jerr;
    json_t *data = json_loads(data_json, JSON_REJECT_DUPLICATES, &jerr);
    char *text = json_is_object(data) ? json_dumps(data, JSON_COMPACT) : NULL;
    int bad = !json_is_object(data);
    json_decref(data);
    if (bad)
        return CM_EINVAL;
    if (!text)
        return CM_ENOMEM;
    cm_buf b = {0};
    cm_json j;
    cm_json_init(&j, &b);
    int rc = cm_cloudevent_begin(&j, ce);
    if (rc == 0) {
        cm_json_raw(&j, "data", text, strlen(text));
        cm_json_end(&j);
        rc = cm_json_done(&j);
    }
    free(text);
    if (rc) {
        cm_buf_free(&b);
        return rc;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}
