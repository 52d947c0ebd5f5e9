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

/* what tells a changed file from the same one without reading it: the
 * device and inode (a kubernetes secret update swaps a symlink, so the
 * target is new), the size and the modification time in nanoseconds. */
typedef struct cm_file_id {
    unsigned long long dev, ino, size;
    long long mtime_ns;
} cm_file_id;

/* stat(2) of path (links followed) into *id. 0, or CM_EIO (errno set). */
int cm_file_stat(const char *path, cm_file_id *id);

/* 1 when a and b name the same file contents by that measure, else 0. */
int cm_file_id_eq(const cm_file_id *a, const cm_file_id *b);

#endif
