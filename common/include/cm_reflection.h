/*
 * cm_reflection: the answers of gRPC server reflection (grpc.reflection.v1
 * and v1alpha, whose messages are the same on the wire), from a
 * FileDescriptorSet. no gRPC here: the rpc server runs the stream
 * (cm_rpc.h, opts.reflection) and asks this module for one response per
 * request. design note: common/README.md, "reflection".
 *
 * the set is indexed once: every file by name with its dependencies, every
 * symbol a client may ask for (package-qualified services, methods,
 * messages, fields, oneofs, enums, enum values, extensions) by full name.
 */
#ifndef CM_REFLECTION_H
#define CM_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

typedef struct cm_reflection cm_reflection;

/* the descriptor set built into every binary (proto/CMakeLists.txt): the
 * public api, the third-party contracts and the well-known types. */
extern const unsigned char cm_descriptor_set[];
extern const size_t cm_descriptor_set_len;

/* parses and indexes a serialized google.protobuf.FileDescriptorSet; the
 * bytes are copied. returns 0, CM_ENOMEM, or CM_EINVAL with a line in err
 * (not a descriptor set, a file named twice, a dependency missing from the
 * set: protoc --include_imports makes a complete one). */
int cm_reflection_new(cm_reflection **out, const uint8_t *set, size_t len, char *err,
                      size_t errlen);
void cm_reflection_free(cm_reflection *r);

/* files in the set: what a stream's `sent` array is sized by. */
size_t cm_reflection_nfiles(const cm_reflection *r);

/* answers one serialized ServerReflectionRequest with one serialized
 * ServerReflectionResponse, malloc'd into *out (the caller frees it).
 *
 * services: the names list_services answers with, sorted by the caller.
 * sent: per stream, cm_reflection_nfiles() bytes, zeroed when the stream
 * opens; a file's dependencies already sent on the stream are not sent
 * again (the file asked for always is), as grpc-go does.
 *
 * unknown file, symbol, extension or type: an error_response NOT_FOUND.
 * returns 0; CM_EINVAL when the bytes are not a request or set none of
 * its choices (the stream then ends INVALID_ARGUMENT, as grpc-go ends
 * it); CM_ENOMEM. r is only read: threads may share it. */
int cm_reflection_answer(const cm_reflection *r, unsigned char *sent, const char *const *services,
                         size_t nservices, const uint8_t *req, size_t reqlen, uint8_t **out,
                         size_t *outlen);

#endif
