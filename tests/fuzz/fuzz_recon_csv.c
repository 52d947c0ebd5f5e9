/*
 * settlement's statement CSV parser (stl_recon_parse), the one parser of
 * a file a provider sends. invariants: every line handed on is complete
 * and valid on its own (kind, a real time, a UUID order, a refund id for
 * refunds only, a known currency, amounts >= 0), numbered upwards from 2;
 * a refusal names its line and a reason.
 */
#include "cm_err.h"
#include "cm_id.h"
#include "cm_money.h"
#include "stl_recon.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void broken(const char *what)
{
    fprintf(stderr, "fuzz_recon_csv: %s\n", what);
    abort();
}

static int on_line(void *arg, const stl_stmt_line *l)
{
    int *last = arg;
    if (l->line <= *last || l->line < 2)
        broken("lines out of order");
    *last = l->line;
    if (l->kind != STL_LINE_PAYMENT && l->kind != STL_LINE_REFUND)
        broken("unknown kind");
    if (!stl_recon_time_valid(l->time) || !cm_id_is_uuid(l->order_id) || !l->txn[0] ||
        !cm_money_currency_valid(l->currency) || l->amount < 0 || l->fee < 0)
        broken("a line with an invalid field was accepted");
    if ((l->kind == STL_LINE_REFUND) != (l->refund_id[0] != '\0'))
        broken("refund id on a payment or missing on a refund");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* its own allocation, not terminated: the parser takes a length */
    char *csv = malloc(size ? size : 1);
    if (!csv)
        return 0;
    memcpy(csv, data, size);
    int last = 0, line = -1;
    char why[256] = "";
    int rc = stl_recon_parse(csv, size, on_line, &last, why, sizeof why, &line);
    if (rc != 0 && (rc != CM_EINVAL || !why[0] || line < 1))
        broken("refused without CM_EINVAL, a reason and a line");
    free(csv);
    return 0;
}
