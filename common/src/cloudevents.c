/*
 * structured-mode cloudevents, built with jansson so that escaping and
 * utf-8 are jansson's job, not ours.
 */
#include "cm_cloudevents.h"
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

/* sets key to a string unless v is NULL; 0 or -1 */
static int set_str(json_t *o, const char *key, const char *v)
{
    if (!v)
        return 0;
    json_t *s = json_string(v);
    if (!s)
        return -1; /* not utf-8, or out of memory */
    return json_object_set_new(o, key, s);
}

int cm_cloudevent_json(const cm_cloudevent *ce, const char *data_json, char **out, size_t *len)
{
    if (!out || !len)
        return CM_EINVAL;
    *out = NULL;
    *len = 0;
    if (!data_json)
        return CM_EINVAL;
    json_error_t jerr;
    json_t *data = json_loads(data_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!data)
        return CM_EINVAL;
    return cm_cloudevent_json_object(ce, data, out, len);
}

int cm_cloudevent_json_object(const cm_cloudevent *ce, json_t *data, char **out, size_t *len)
{
    if (!out || !len) {
        json_decref(data);
        return CM_EINVAL;
    }
    *out = NULL;
    *len = 0;
    if (!ce || !cm_id_is_uuid(ce->id) || !ce->source || !*ce->source || !ce->type || !*ce->type ||
        ce->time_ms <= 0 || !data || !json_is_object(data)) {
        json_decref(data);
        return CM_EINVAL;
    }
    /* the uuid checker accepts upper case; the contract says lower */
    char id[CM_ID_SIZE];
    for (size_t i = 0; i < CM_ID_SIZE; i++)
        id[i] = (ce->id[i] >= 'A' && ce->id[i] <= 'F') ? (char)(ce->id[i] - 'A' + 'a') : ce->id[i];
    char time[CM_KAFKA_TIME_SIZE];
    cm_kafka_time_rfc3339(ce->time_ms, time);
    json_t *o = json_object();
    if (!o) {
        json_decref(data);
        return CM_ENOMEM;
    }
    /* the order of the contract's table, so a human reads the same thing */
    int bad = set_str(o, "specversion", "1.0") || set_str(o, "id", id) ||
              set_str(o, "source", ce->source) || set_str(o, "type", ce->type) ||
              set_str(o, "time", time) || set_str(o, "datacontenttype", "application/json") ||
              set_str(o, "subject", ce->subject) || set_str(o, "tenantid", ce->tenant_id) ||
              set_str(o, "partitionkey", ce->partition_key) ||
              set_str(o, "traceparent", ce->traceparent);
    if (bad || json_object_set_new(o, "data", data) != 0) {
        if (bad)
            json_decref(data);
        json_decref(o);
        return CM_EINVAL;
    }
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!text)
        return CM_ENOMEM;
    *out = text;
    *len = strlen(text);
    return 0;
}
