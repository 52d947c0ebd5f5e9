/*
 * server reflection's answers from a FileDescriptorSet. design note:
 * common/README.md, "reflection". mirrors grpc-go's reflection server
 * (reflection/serverreflection.go): unknown names get an error_response
 * NOT_FOUND on the stream, a request with no choice set ends the stream.
 */
#include "cm_reflection.h"
#include "cm_err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

/* ServerReflectionResponse's error codes are grpc status codes */
#define CODE_NOT_FOUND 5

typedef struct symbol {
    char *name; /* full name, no leading dot */
    size_t file;
} symbol;

typedef struct extension {
    char *extendee; /* full name, no leading dot */
    int32_t number;
    size_t file;
} extension;

typedef struct file {
    char *name;
    const uint8_t *bytes; /* the FileDescriptorProto as protoc wrote it, in r->set */
    size_t len;
    size_t *deps; /* indices into r->files */
    size_t ndeps;
} file;

struct cm_reflection {
    uint8_t *set;
    file *files;
    size_t nfiles;
    symbol *syms;
    size_t nsyms, capsyms;
    extension *exts;
    size_t nexts, capexts;
};

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return CM_EINVAL;
}

/* ---- indexing ---- */

static char *join(const char *scope, const char *name)
{
    size_t a = scope ? strlen(scope) : 0, b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s)
        return NULL;
    if (a) {
        memcpy(s, scope, a);
        s[a++] = '.';
    }
    memcpy(s + a, name, b + 1);
    return s;
}

/* takes ownership of name */
static int add_symbol(cm_reflection *r, char *name, size_t f)
{
    if (!name)
        return CM_ENOMEM;
    if (r->nsyms == r->capsyms) {
        size_t cap = r->capsyms ? r->capsyms * 2 : 256;
        symbol *ns = realloc(r->syms, cap * sizeof *ns);
        if (!ns) {
            free(name);
            return CM_ENOMEM;
        }
        r->syms = ns;
        r->capsyms = cap;
    }
    r->syms[r->nsyms++] = (symbol){name, f};
    return 0;
}

static int add_scoped(cm_reflection *r, const char *scope, const char *name, size_t f)
{
    return name ? add_symbol(r, join(scope, name), f) : 0;
}

static int add_extensions(cm_reflection *r, const char *scope, size_t f,
                          Google__Protobuf__FieldDescriptorProto **ext, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = add_scoped(r, scope, ext[i]->name, f);
        if (rc)
            return rc;
        if (!ext[i]->extendee)
            continue;
        if (r->nexts == r->capexts) {
            size_t cap = r->capexts ? r->capexts * 2 : 16;
            extension *ne = realloc(r->exts, cap * sizeof *ne);
            if (!ne)
                return CM_ENOMEM;
            r->exts = ne;
            r->capexts = cap;
        }
        const char *e = ext[i]->extendee[0] == '.' ? ext[i]->extendee + 1 : ext[i]->extendee;
        char *copy = strdup(e);
        if (!copy)
            return CM_ENOMEM;
        r->exts[r->nexts++] = (extension){copy, ext[i]->number, f};
    }
    return 0;
}

/* an enum's values are scoped beside the enum, not inside it (C++ rules) */
static int add_enum(cm_reflection *r, const char *scope, size_t f,
                    const Google__Protobuf__EnumDescriptorProto *e)
{
    int rc = add_scoped(r, scope, e->name, f);
    for (size_t i = 0; !rc && i < e->n_value; i++)
        rc = add_scoped(r, scope, e->value[i]->name, f);
    return rc;
}

static int add_message(cm_reflection *r, const char *scope, size_t f,
                       const Google__Protobuf__DescriptorProto *m)
{
    if (!m->name)
        return 0;
    char *full = join(scope, m->name);
    int rc = add_symbol(r, full, f);
    if (rc)
        return rc;
    for (size_t i = 0; !rc && i < m->n_field; i++)
        rc = add_scoped(r, full, m->field[i]->name, f);
    for (size_t i = 0; !rc && i < m->n_oneof_decl; i++)
        rc = add_scoped(r, full, m->oneof_decl[i]->name, f);
    for (size_t i = 0; !rc && i < m->n_enum_type; i++)
        rc = add_enum(r, full, f, m->enum_type[i]);
    for (size_t i = 0; !rc && i < m->n_nested_type; i++)
        rc = add_message(r, full, f, m->nested_type[i]);
    if (!rc)
        rc = add_extensions(r, full, f, m->extension, m->n_extension);
    return rc;
}

static int index_file(cm_reflection *r, size_t f, const Google__Protobuf__FileDescriptorProto *fd)
{
    const char *pkg = fd->package && fd->package[0] ? fd->package : NULL;
    int rc = 0;
    for (size_t i = 0; !rc && i < fd->n_message_type; i++)
        rc = add_message(r, pkg, f, fd->message_type[i]);
    for (size_t i = 0; !rc && i < fd->n_enum_type; i++)
        rc = add_enum(r, pkg, f, fd->enum_type[i]);
    for (size_t i = 0; !rc && i < fd->n_service; i++) {
        const Google__Protobuf__ServiceDescriptorProto *sv = fd->service[i];
        if (!sv->name)
            continue;
        char *full = join(pkg, sv->name);
        rc = add_symbol(r, full, f);
        for (size_t j = 0; !rc && j < sv->n_method; j++)
            rc = add_scoped(r, full, sv->method[j]->name, f);
    }
    if (!rc)
        rc = add_extensions(r, pkg, f, fd->extension, fd->n_extension);
    return rc;
}

static int sym_cmp(const void *a, const void *b)
{
    return strcmp(((const symbol *)a)->name, ((const symbol *)b)->name);
}

static long find_file(const cm_reflection *r, const char *name)
{
    for (size_t i = 0; i < r->nfiles; i++)
        if (strcmp(r->files[i].name, name) == 0)
            return (long)i;
    return -1;
}

static const symbol *find_symbol(const cm_reflection *r, const char *name)
{
    symbol key = {(char *)name, 0};
    return bsearch(&key, r->syms, r->nsyms, sizeof key, sym_cmp);
}

/* a FileDescriptorSet is `repeated FileDescriptorProto file = 1`: a run of
 * (tag 0x0a, varint length, bytes). slicing it keeps each file's bytes
 * exactly as protoc wrote them. */
static int next_file(const uint8_t *p, size_t len, size_t *pos, const uint8_t **out, size_t *outlen)
{
    if (*pos >= len || p[*pos] != 0x0a)
        return -1;
    (*pos)++;
    uint64_t n = 0;
    for (int shift = 0;; shift += 7) {
        if (*pos >= len || shift > 63)
            return -1;
        uint8_t b = p[(*pos)++];
        n |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
    }
    if (n > len - *pos)
        return -1;
    *out = p + *pos;
    *outlen = (size_t)n;
    *pos += (size_t)n;
    return 0;
}

int cm_reflection_new(cm_reflection **out, const uint8_t *set, size_t len, char *err, size_t errlen)
{
    *out = NULL;
    size_t count = 0, pos = 0;
    const uint8_t *b;
    size_t blen;
    while (pos < len) {
        if (next_file(set, len, &pos, &b, &blen) != 0)
            return fail(err, errlen, "reflection: not a FileDescriptorSet (at byte %zu)", pos);
        count++;
    }
    if (count == 0)
        return fail(err, errlen, "reflection: empty descriptor set");
    cm_reflection *r = calloc(1, sizeof *r);
    if (!r)
        return CM_ENOMEM;
    r->set = malloc(len);
    r->files = calloc(count, sizeof *r->files);
    if (!r->set || !r->files) {
        cm_reflection_free(r);
        return CM_ENOMEM;
    }
    memcpy(r->set, set, len);
    /* pass 1: names and bytes; pass 2: dependencies, which may name any file */
    Google__Protobuf__FileDescriptorProto **fds = calloc(count, sizeof *fds);
    int rc = fds ? 0 : CM_ENOMEM;
    pos = 0;
    for (size_t i = 0; !rc && i < count; i++) {
        next_file(r->set, len, &pos, &b, &blen);
        fds[i] = google__protobuf__file_descriptor_proto__unpack(NULL, blen, b);
        if (!fds[i] || !fds[i]->name) {
            rc = fail(err, errlen, "reflection: file %zu of the set does not parse", i);
            break;
        }
        if (find_file(r, fds[i]->name) >= 0) {
            rc = fail(err, errlen, "reflection: %s is in the set twice", fds[i]->name);
            break;
        }
        r->files[i].name = strdup(fds[i]->name);
        r->files[i].bytes = b;
        r->files[i].len = blen;
        r->nfiles = i + 1;
        if (!r->files[i].name)
            rc = CM_ENOMEM;
    }
    for (size_t i = 0; !rc && i < count; i++) {
        file *f = &r->files[i];
        f->deps = calloc(fds[i]->n_dependency + 1, sizeof *f->deps);
        if (!f->deps) {
            rc = CM_ENOMEM;
            break;
        }
        for (size_t j = 0; !rc && j < fds[i]->n_dependency; j++) {
            long d = find_file(r, fds[i]->dependency[j]);
            if (d < 0)
                rc = fail(err, errlen, "reflection: %s imports %s, which is not in the set",
                          f->name, fds[i]->dependency[j]);
            else
                f->deps[f->ndeps++] = (size_t)d;
        }
        if (!rc)
            rc = index_file(r, i, fds[i]);
    }
    for (size_t i = 0; fds && i < count; i++)
        if (fds[i])
            google__protobuf__file_descriptor_proto__free_unpacked(fds[i], NULL);
    free(fds);
    if (!rc) {
        qsort(r->syms, r->nsyms, sizeof *r->syms, sym_cmp);
        for (size_t i = 1; i < r->nsyms; i++)
            if (strcmp(r->syms[i - 1].name, r->syms[i].name) == 0) {
                rc = fail(err, errlen, "reflection: %s is defined twice", r->syms[i].name);
                break;
            }
    }
    if (rc) {
        cm_reflection_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void cm_reflection_free(cm_reflection *r)
{
    if (!r)
        return;
    for (size_t i = 0; r->files && i < r->nfiles; i++) {
        free(r->files[i].name);
        free(r->files[i].deps);
    }
    for (size_t i = 0; i < r->nsyms; i++)
        free(r->syms[i].name);
    for (size_t i = 0; i < r->nexts; i++)
        free(r->exts[i].extendee);
    free(r->files);
    free(r->syms);
    free(r->exts);
    free(r->set);
    free(r);
}

size_t cm_reflection_nfiles(const cm_reflection *r)
{
    return r->nfiles;
}

/* ---- answering ---- */

/* the file, then its imports breadth first, leaving out those the stream
 * already got (grpc-go's fileDescWithDependencies). fills out[] with file
 * indices; returns how many. */
static size_t with_deps(const cm_reflection *r, size_t f, unsigned char *sent, size_t *queue,
                        unsigned char *seen, size_t *out)
{
    size_t head = 0, tail = 0, n = 0;
    queue[tail++] = f;
    seen[f] = 1;
    while (head < tail) {
        size_t cur = queue[head++];
        if (n == 0 || !sent[cur]) {
            sent[cur] = 1;
            out[n++] = cur;
        }
        for (size_t j = 0; j < r->files[cur].ndeps; j++) {
            size_t d = r->files[cur].deps[j];
            if (!seen[d]) {
                seen[d] = 1;
                queue[tail++] = d;
            }
        }
    }
    return n;
}

/* what one response needs beyond the request: freed by the caller */
typedef struct scratch {
    size_t *idx, *queue;
    unsigned char *seen;
    ProtobufCBinaryData *blobs;
    Grpc__Reflection__V1__ServiceResponse *svc;
    Grpc__Reflection__V1__ServiceResponse **svcp;
    int32_t *nums;
    char *message;
} scratch;

static int answer_files(const cm_reflection *r, unsigned char *sent, size_t f, scratch *sc,
                        Grpc__Reflection__V1__FileDescriptorResponse *fdr)
{
    sc->idx = calloc(r->nfiles, sizeof *sc->idx);
    sc->queue = calloc(r->nfiles, sizeof *sc->queue);
    sc->seen = calloc(r->nfiles, 1);
    sc->blobs = calloc(r->nfiles, sizeof *sc->blobs);
    if (!sc->idx || !sc->queue || !sc->seen || !sc->blobs)
        return CM_ENOMEM;
    size_t n = with_deps(r, f, sent, sc->queue, sc->seen, sc->idx);
    for (size_t i = 0; i < n; i++) {
        sc->blobs[i].data = (uint8_t *)r->files[sc->idx[i]].bytes;
        sc->blobs[i].len = r->files[sc->idx[i]].len;
    }
    fdr->n_file_descriptor_proto = n;
    fdr->file_descriptor_proto = sc->blobs;
    return 0;
}

__attribute__((format(printf, 3, 4))) static int
not_found(scratch *sc, Grpc__Reflection__V1__ErrorResponse *er, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return CM_EINTERNAL;
    sc->message = malloc((size_t)n + 1);
    if (!sc->message)
        return CM_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(sc->message, (size_t)n + 1, fmt, ap);
    va_end(ap);
    er->error_code = CODE_NOT_FOUND;
    er->error_message = sc->message;
    return 0;
}

int cm_reflection_answer(const cm_reflection *r, unsigned char *sent, const char *const *services,
                         size_t nservices, const uint8_t *req, size_t reqlen, uint8_t **out,
                         size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    Grpc__Reflection__V1__ServerReflectionRequest *in =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, reqlen, req);
    if (!in)
        return CM_EINVAL;

    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fdr =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse enr =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse lsr =
        GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse er = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    scratch sc = {0};
    resp.valid_host = in->host;
    resp.original_request = in;
    int rc = 0;

    switch (in->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME: {
        long f = find_file(r, in->file_by_filename);
        if (f < 0)
            rc = not_found(&sc, &er, "file not found: %s", in->file_by_filename);
        else
            rc = answer_files(r, sent, (size_t)f, &sc, &fdr);
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL: {
        const symbol *s = find_symbol(r, in->file_containing_symbol);
        if (!s)
            rc = not_found(&sc, &er, "symbol not found: %s", in->file_containing_symbol);
        else
            rc = answer_files(r, sent, s->file, &sc, &fdr);
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION: {
        const Grpc__Reflection__V1__ExtensionRequest *x = in->file_containing_extension;
        const char *type = x && x->containing_type ? x->containing_type : "";
        int32_t num = x ? x->extension_number : 0;
        long f = -1;
        for (size_t i = 0; f < 0 && i < r->nexts; i++)
            if (r->exts[i].number == num && strcmp(r->exts[i].extendee, type) == 0)
                f = (long)r->exts[i].file;
        if (f < 0)
            rc = not_found(&sc, &er, "extension not found: %s, %d", type, (int)num);
        else
            rc = answer_files(r, sent, (size_t)f, &sc, &fdr);
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
        const char *type = in->all_extension_numbers_of_type;
        size_t n = 0;
        sc.nums = calloc(r->nexts + 1, sizeof *sc.nums);
        if (!sc.nums) {
            rc = CM_ENOMEM;
            break;
        }
        for (size_t i = 0; i < r->nexts; i++)
            if (strcmp(r->exts[i].extendee, type) == 0)
                sc.nums[n++] = r->exts[i].number;
        /* insertion sort: a type has a handful of extensions */
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0 && sc.nums[j - 1] > sc.nums[j]; j--) {
                int32_t t = sc.nums[j];
                sc.nums[j] = sc.nums[j - 1];
                sc.nums[j - 1] = t;
            }
        /* no extensions is an answer for any name we know, as in grpc-go
         * (AllExtensionNumbersForTypeName) */
        if (n == 0 && !find_symbol(r, type)) {
            rc = not_found(&sc, &er, "type not found: %s", type);
        } else {
            enr.base_type_name = (char *)type;
            enr.n_extension_number = n;
            enr.extension_number = sc.nums;
        }
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        sc.svc = calloc(nservices + 1, sizeof *sc.svc);
        sc.svcp = calloc(nservices + 1, sizeof *sc.svcp);
        if (!sc.svc || !sc.svcp) {
            rc = CM_ENOMEM;
            break;
        }
        for (size_t i = 0; i < nservices; i++) {
            grpc__reflection__v1__service_response__init(&sc.svc[i]);
            sc.svc[i].name = (char *)services[i];
            sc.svcp[i] = &sc.svc[i];
        }
        lsr.n_service = nservices;
        lsr.service = sc.svcp;
        break;
    default:
        rc = CM_EINVAL;
        break;
    }

    if (!rc) {
        switch (in->message_request_case) {
        case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
            resp.list_services_response = &lsr;
            break;
        case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
            if (er.error_code)
                break;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            resp.all_extension_numbers_response = &enr;
            break;
        default:
            if (er.error_code)
                break;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
            resp.file_descriptor_response = &fdr;
            break;
        }
        if (er.error_code) {
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
            resp.error_response = &er;
        }
        size_t n = protobuf_c_message_get_packed_size(&resp.base);
        *out = malloc(n ? n : 1);
        if (!*out) {
            rc = CM_ENOMEM;
        } else {
            protobuf_c_message_pack(&resp.base, *out);
            *outlen = n;
        }
    }
    free(sc.idx);
    free(sc.queue);
    free(sc.seen);
    free(sc.blobs);
    free(sc.svc);
    free(sc.svcp);
    free(sc.nums);
    free(sc.message);
    grpc__reflection__v1__server_reflection_request__free_unpacked(in, NULL);
    return rc;
}
