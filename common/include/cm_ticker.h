/*
 * cm_ticker: a thread that runs a function every period, and at once when
 * woken — a service's sweepers (expired reservations, unpaid orders) and
 * background senders. the function runs on the ticker's thread only, never
 * twice at a time, so what it alone touches (its own database connection)
 * needs no lock.
 */
#ifndef CM_TICKER_H
#define CM_TICKER_H

typedef struct cm_ticker cm_ticker;

/* starts the thread; the first run is one period after the start. 0,
 * CM_EINVAL (period_ms < 1, no fn) or CM_ENOMEM. */
int cm_ticker_start(cm_ticker **out, int period_ms, void (*fn)(void *arg), void *arg);

/* makes the next run happen now (or right after the one in progress).
 * thread-safe; cheap; never blocks on a run. */
void cm_ticker_wake(cm_ticker *t);

/* stops the thread — after the run in progress, without another — and
 * frees the ticker. NULL is a no-op. */
void cm_ticker_free(cm_ticker *t);

#endif
