/*
 * cm_file: reading small files whole (certificates, keys).
 */
#ifndef CM_FILE_H
#define CM_FILE_H

#include <stddef.h>

/* reads path into a malloc'd, NUL-terminated buffer (*out, caller frees)
 * and its length (*len, may be NULL). refuses files larger than max bytes.
 * returns 0, CM_EIO (cannot open or read, or too large; errno tells which
 * for open/read) or CM_ENOMEM. *out is NULL on failure. */
int cm_file_read(const char *path, size_t max, char **out, size_t *len);

#endif
