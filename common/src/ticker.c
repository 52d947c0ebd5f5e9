/* a periodic thread: see cm_ticker.h */
#include "cm_ticker.h"

#include "cm_err.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct cm_ticker {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int period_ms;
    int woken, stop;
    void (*fn)(void *arg);
    void *arg;
};

static void *ticker_main(void *p)
{
    cm_ticker *t = p;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        if (!t->woken && !t->stop) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            long long ns = ts.tv_nsec + (long long)t->period_ms * 1000000LL;
            ts.tv_sec += (time_t)(ns / 1000000000LL);
            ts.tv_nsec = (long)(ns % 1000000000LL);
            pthread_cond_timedwait(&t->cv, &t->mu, &ts);
        }
        if (t->stop)
            break;
        t->woken = 0;
        pthread_mutex_unlock(&t->mu);
        t->fn(t->arg);
        pthread_mutex_lock(&t->mu);
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int cm_ticker_start(cm_ticker **out, int period_ms, void (*fn)(void *arg), void *arg)
{
    if (!out || period_ms < 1 || !fn)
        return CM_EINVAL;
    cm_ticker *t = calloc(1, sizeof *t);
    if (!t)
        return CM_ENOMEM;
    t->period_ms = period_ms;
    t->fn = fn;
    t->arg = arg;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* a wall clock step is no tick */
    pthread_cond_init(&t->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&t->thread, NULL, ticker_main, t) != 0) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        return CM_ENOMEM;
    }
    *out = t;
    return 0;
}

void cm_ticker_wake(cm_ticker *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->woken = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

void cm_ticker_free(cm_ticker *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
