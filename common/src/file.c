#include "cm_file.h"
#include "cm_err.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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
