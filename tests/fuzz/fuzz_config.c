/*
 * cm_config_load_env: the input is the environment, one NAME=value per
 * line, loaded for a service with knobs of each type and a peer.
 * invariants: success gives listen addresses with a port, workers in
 * range and a valid tenant-free config; failure gives one line in err,
 * starting with a variable name, never echoing JWT_HS256_SECRET, and
 * leaves the config as it was.
 */
#include "cm_config.h"
#include "cm_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINES_MAX 64

static const cm_knob knobs[] = {
    {"FUZZ_N", CM_KNOB_INT, 7, -5, 1000000, NULL, "a number"},
    {"FUZZ_SWITCH", CM_KNOB_ONOFF, 1, 0, 0, NULL, "a switch"},
    {"FUZZ_TEXT", CM_KNOB_TEXT, 0, 0, 0, "dflt", "a text"},
};
static const cm_peer_def peers[] = {{"inventory", "127.0.0.1:50052"}};
static const cm_config_defaults defs = {.service = "order",
                                        .grpc_port = 50051,
                                        .admin_port = 9091,
                                        .knobs = knobs,
                                        .nknobs = 3,
                                        .peers = peers,
                                        .npeers = 1};

static void broken(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_config: %s: %s\n", what, err);
    abort();
}

/* 1 when secret is part of a variable other than JWT_HS256_SECRET */
static int elsewhere(const char *const *envp, const char *secret)
{
    for (; *envp; envp++)
        if (strncmp(*envp, "JWT_HS256_SECRET=", 17) != 0 && strstr(*envp, secret))
            return 1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    const char *envp[LINES_MAX + 1];
    size_t n = 0;
    const char *secret = NULL;
    for (char *line = text; line && n < LINES_MAX;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        envp[n++] = line;
        if (strncmp(line, "JWT_HS256_SECRET=", 17) == 0)
            secret = line + 17;
        line = nl ? nl + 1 : NULL;
    }
    envp[n] = NULL;

    static cm_config cfg, before;
    memset(&cfg, 0xa5, sizeof cfg);
    before = cfg;
    char err[512];
    int rc = cm_config_load_env(&cfg, &defs, envp, err, sizeof err);
    if (rc == 0) {
        if (cm_config_port_of(cfg.grpc_listen) <= 0 || cm_config_port_of(cfg.admin_listen) <= 0)
            broken("accepted a listen address without a port", cfg.grpc_listen);
        if (cfg.workers < 1 || cfg.workers > CM_CONFIG_WORKERS_MAX)
            broken("accepted workers out of range", "");
        long long k = cm_config_int(&cfg, "FUZZ_N");
        if (k < -5 || k > 1000000)
            broken("accepted a knob out of its range", "");
        if (!memchr(cfg.pg_dsn, '\0', sizeof cfg.pg_dsn) ||
            !memchr(cfg.knob_text[2], '\0', sizeof cfg.knob_text[2]))
            broken("a text setting is not terminated", "");
    } else {
        if (rc != CM_EINVAL || !err[0] || strchr(err, '\n'))
            broken("refused without CM_EINVAL and one line", err);
        if (memcmp(&cfg, &before, sizeof cfg) != 0)
            broken("a refused load changed the config", err);
        /* secrets are long enough not to match by chance; the same text
         * in another variable may be echoed as that variable's value */
        if (secret && strlen(secret) >= 8 && strstr(err, secret) && !elsewhere(envp, secret))
            broken("the error echoes the secret", err);
    }
    free(text);
    return 0;
}
