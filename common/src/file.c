#include "cm_file.h"
#include "cm_err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int cm_file_read(const char *path, size_t max, char **out, size_t *len)
{
    *out = NULL;
    FILE *f = fopen(path, "rbe");
    if (!f)
        return CM_EIO;
    /* one byte more than allowed tells "too large" from "exactly max" */
    char *buf = malloc(max + 2);
    if (!buf) {
        fclose(f);
        return CM_ENOMEM;
    }
    size_t n = 0, r;
    while (n <= max && (r = fread(buf + n, 1, max + 1 - n, f)) > 0)
        n += r;
    int bad = ferror(f);
    fclose(f);
    if (bad || n > max) {
        free(buf);
        errno = bad ? EIO : EFBIG;
        return CM_EIO;
    }
    buf[n] = '\0';
    *out = buf;
    if (len)
        *len = n;
    return 0;
}

int cm_file_stat(const char *path, cm_file_id *id)
{
    struct stat st;
    memset(id, 0, sizeof *id);
    if (stat(path, &st) != 0)
        return CM_EIO;
    id->dev = (unsigned long long)st.st_dev;
    id->ino = (unsigned long long)st.st_ino;
    id->size = (unsigned long long)st.st_size;
    id->mtime_ns = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    return 0;
}

int cm_file_id_eq(const cm_file_id *a, const cm_file_id *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns;
}
