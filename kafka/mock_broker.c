/*
 * commerce-kafka-mock: an in-memory kafka cluster for the zero-setup quick
 * start, built on librdkafka's mock cluster (rdkafka_mock.h). it pre-creates
 * every topic of kafka/topics.tsv (compiled in), prints
 *
 *   KAFKA_BROKERS=127.0.0.1:PORT
 *
 * as its first line on stdout once it serves, and runs until SIGTERM or
 * SIGINT. nothing is persisted: a restart starts empty.
 *
 * the mock cluster listens on ephemeral ports only (librdkafka 2.0.2 has no
 * way to choose them), so --port N adds a fixed bootstrap address: a plain
 * tcp forwarder from 127.0.0.1:N to the first mock broker. clients bootstrap
 * through it and then, like any kafka client, connect to the brokers the
 * metadata advertises (127.0.0.1 on their ephemeral ports).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "cm_log.h"

/* kafka/topics.tsv, embedded at build time (mock_catalogue.c) */
extern const char kmb_catalogue[];

#define KMB_MAX_BROKERS 9
#define KMB_MAX_TOPICS 256
#define KMB_MAX_PIPES 256
#define KMB_BUF (64 * 1024)

typedef struct {
    char name[250];
    int partitions;
} kmb_topic;

typedef struct {
    int port;
    int brokers;
    const char *bootstrap_file;
    const char *topics_file;
} kmb_opts;

/* one forwarded connection: fd[0] the client, fd[1] the mock broker.
 * buf[i] holds bytes read from fd[i] that still have to go to fd[1 - i] */
typedef struct {
    int fd[2];
    size_t len[2];
    size_t off[2];
    int dead;
    char buf[2][KMB_BUF];
} kmb_pipe;

static void kmb_usage(FILE *f)
{
    fprintf(f, "usage: commerce-kafka-mock [options]\n"
               "\n"
               "an in-memory kafka cluster (librdkafka mock) with the topics of\n"
               "kafka/topics.tsv; prints KAFKA_BROKERS=HOST:PORT as its first stdout\n"
               "line and serves until SIGTERM or SIGINT. nothing is persisted.\n"
               "\n"
               "  --port N              also accept bootstrap connections on 127.0.0.1:N\n"
               "                        (forwarded to the mock; 0 = off, the default)\n"
               "  --brokers N           mock brokers, 1 to 9 (default 1)\n"
               "  --bootstrap-file PATH write the bootstrap address to PATH (removed on\n"
               "                        exit)\n"
               "  --topics FILE         topic catalogue to create instead of the built-in\n"
               "                        kafka/topics.tsv (same tab-separated format)\n"
               "  --help, --version\n"
               "\n"
               "environment: LOG_LEVEL debug|info|warn|error (default info)\n");
}

static int kmb_parse_int(const char *s, long min, long max, int *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

static int kmb_parse_args(int argc, char **argv, kmb_opts *o)
{
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"brokers", required_argument, NULL, 'b'},
        {"bootstrap-file", required_argument, NULL, 'f'},
        {"topics", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int c;

    o->port = 0;
    o->brokers = 1;
    o->bootstrap_file = NULL;
    o->topics_file = NULL;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            if (kmb_parse_int(optarg, 0, 65535, &o->port) != 0) {
                fprintf(stderr, "commerce-kafka-mock: --port must be 0 to 65535, got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 'b':
            if (kmb_parse_int(optarg, 1, KMB_MAX_BROKERS, &o->brokers) != 0) {
                fprintf(stderr, "commerce-kafka-mock: --brokers must be 1 to %d, got '%s'\n",
                        KMB_MAX_BROKERS, optarg);
                return 2;
            }
            break;
        case 'f':
            o->bootstrap_file = optarg;
            break;
        case 't':
            o->topics_file = optarg;
            break;
        case 'h':
            kmb_usage(stdout);
            return 1;
        case 'V':
            printf("commerce-kafka-mock %s (librdkafka %s)\n", COMMERCE_VERSION,
                   rd_kafka_version_str());
            return 1;
        default:
            kmb_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "commerce-kafka-mock: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    return 0;
}

/* parses the catalogue text: "name<TAB>partitions<TAB>...", '#' comments,
 * a header line starting with "name". returns the topic count or -1 with
 * the reason in err */
static int kmb_catalogue_parse(const char *text, kmb_topic *topics, int max, char *err,
                               size_t errlen)
{
    const char *line = text;
    int n = 0, lineno = 0;

    while (*line != '\0') {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        const char *tab1, *tab2;
        char num[16];
        size_t name_len, num_len;

        lineno++;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len == 0 || line[0] == '#' || (len >= 5 && strncmp(line, "name\t", 5) == 0))
            goto next;
        tab1 = memchr(line, '\t', len);
        if (tab1 == NULL) {
            snprintf(err, errlen, "line %d: expected name<TAB>partitions", lineno);
            return -1;
        }
        name_len = (size_t)(tab1 - line);
        tab2 = memchr(tab1 + 1, '\t', len - name_len - 1);
        num_len = tab2 ? (size_t)(tab2 - tab1 - 1) : len - name_len - 1;
        if (name_len == 0 || name_len >= sizeof topics[0].name) {
            snprintf(err, errlen, "line %d: bad topic name length", lineno);
            return -1;
        }
        for (size_t i = 0; i < name_len; i++) {
            char ch = line[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-')) {
                snprintf(err, errlen, "line %d: bad character in topic name", lineno);
                return -1;
            }
        }
        if (num_len == 0 || num_len >= sizeof num) {
            snprintf(err, errlen, "line %d: bad partition count", lineno);
            return -1;
        }
        memcpy(num, tab1 + 1, num_len);
        num[num_len] = '\0';
        if (n == max) {
            snprintf(err, errlen, "more than %d topics", max);
            return -1;
        }
        if (kmb_parse_int(num, 1, 10000, &topics[n].partitions) != 0) {
            snprintf(err, errlen, "line %d: bad partition count '%s'", lineno, num);
            return -1;
        }
        memcpy(topics[n].name, line, name_len);
        topics[n].name[name_len] = '\0';
        n++;
    next:
        if (eol == NULL)
            break;
        line = eol + 1;
    }
    return n;
}

/* reads a whole file into a NUL-terminated heap string; caller frees */
static char *kmb_read_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    char *text = NULL;
    size_t len = 0, cap = 0;

    if (f == NULL) {
        snprintf(err, errlen, "could not open %s: %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t n;
        if (cap - len < 4096) {
            char *p;
            if (cap > (1u << 24)) {
                snprintf(err, errlen, "%s is too large", path);
                goto fail;
            }
            cap = cap ? cap * 2 : 8192;
            p = realloc(text, cap);
            if (p == NULL) {
                snprintf(err, errlen, "out of memory reading %s", path);
                goto fail;
            }
            text = p;
        }
        n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "could not read %s", path);
        goto fail;
    }
    fclose(f);
    text[len] = '\0';
    return text;
fail:
    free(text);
    fclose(f);
    return NULL;
}

static void kmb_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    cm_log_level lvl = level <= 3   ? CM_LOG_ERROR
                       : level == 4 ? CM_LOG_WARN
                       : level <= 6 ? CM_LOG_INFO
                                    : CM_LOG_DEBUG;
    (void)rk;
    /* the hosting handle has no bootstrap.servers on purpose */
    if (strcmp(fac, "CONFWARN") == 0)
        lvl = CM_LOG_DEBUG;
    cm_log(lvl, buf, "facility", fac, "component", "librdkafka", NULL);
}

/* binds a listening socket on 127.0.0.1:port */
static int kmb_listen(int port, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 128) != 0) {
        snprintf(err, errlen, "could not listen on 127.0.0.1:%d: %s", port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* resolves "host:port" (the first entry of a bootstrap list) */
static int kmb_resolve(const char *hostport, struct sockaddr_storage *ss, socklen_t *sslen,
                       char *err, size_t errlen)
{
    char host[256], port[16];
    const char *colon, *end;
    struct addrinfo hints, *res;
    size_t hlen, plen;
    int rc;

    end = strchr(hostport, ',');
    if (end == NULL)
        end = hostport + strlen(hostport);
    colon = memrchr(hostport, ':', (size_t)(end - hostport));
    if (colon == NULL) {
        snprintf(err, errlen, "bad mock bootstrap address '%s'", hostport);
        return -1;
    }
    hlen = (size_t)(colon - hostport);
    plen = (size_t)(end - colon - 1);
    if (hlen >= sizeof host || plen == 0 || plen >= sizeof port) {
        snprintf(err, errlen, "bad mock bootstrap address '%s'", hostport);
        return -1;
    }
    memcpy(host, hostport, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen);
    port[plen] = '\0';
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "could not resolve %s: %s", hostport, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void kmb_pipe_close(kmb_pipe *p)
{
    close(p->fd[0]);
    close(p->fd[1]);
    p->dead = 1;
}

/* moves what buf[from] holds to fd[1 - from]; 0 or -1 when the pair broke */
static int kmb_pipe_flush(kmb_pipe *p, int from)
{
    while (p->len[from] > 0) {
        ssize_t n = send(p->fd[1 - from], p->buf[from] + p->off[from], p->len[from], MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        p->off[from] += (size_t)n;
        p->len[from] -= (size_t)n;
    }
    p->off[from] = 0;
    return 0;
}

/* reads from fd[side] and forwards at once; -1 on eof or error */
static int kmb_pipe_read(kmb_pipe *p, int side)
{
    ssize_t n;

    do {
        n = read(p->fd[side], p->buf[side], KMB_BUF);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    if (n == 0)
        return -1;
    p->off[side] = 0;
    p->len[side] = (size_t)n;
    return kmb_pipe_flush(p, side);
}

static void kmb_set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* accepts one client and connects it to the mock broker */
static kmb_pipe *kmb_accept(int lfd, const struct sockaddr_storage *up, socklen_t uplen)
{
    kmb_pipe *p;
    int cfd, ufd;

    cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return NULL;
    /* a blocking connect on loopback answers at once */
    ufd = socket(up->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ufd < 0 || connect(ufd, (const struct sockaddr *)up, uplen) != 0) {
        cm_log_warn("could not connect to the mock broker", "error", strerror(errno), NULL);
        if (ufd >= 0)
            close(ufd);
        close(cfd);
        return NULL;
    }
    if (fcntl(ufd, F_SETFL, fcntl(ufd, F_GETFL) | O_NONBLOCK) != 0) {
        close(ufd);
        close(cfd);
        return NULL;
    }
    kmb_set_nodelay(cfd);
    kmb_set_nodelay(ufd);
    p = calloc(1, sizeof *p);
    if (p == NULL) {
        close(ufd);
        close(cfd);
        return NULL;
    }
    p->fd[0] = cfd;
    p->fd[1] = ufd;
    return p;
}

/* serves until a signal arrives on sfd; lfd < 0 means no forwarder */
static void kmb_serve(int sfd, int lfd, const struct sockaddr_storage *up, socklen_t uplen)
{
    static struct pollfd pfd[2 + 2 * KMB_MAX_PIPES];
    static kmb_pipe *pipes[KMB_MAX_PIPES];
    int npipes = 0;

    for (;;) {
        nfds_t n = 0;
        int i;

        pfd[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = lfd, .events = npipes < KMB_MAX_PIPES ? POLLIN : 0};
        for (i = 0; i < npipes; i++) {
            kmb_pipe *p = pipes[i];
            for (int s = 0; s < 2; s++) {
                short ev = 0;
                if (p->len[s] == 0)
                    ev |= POLLIN;
                if (p->len[1 - s] > 0)
                    ev |= POLLOUT;
                pfd[n++] = (struct pollfd){.fd = p->fd[s], .events = ev};
            }
        }
        if (poll(pfd, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            cm_log_error("poll failed", "error", strerror(errno), NULL);
            break;
        }
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            const char *name = "signal";
            if (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                name = si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
            cm_log_info("shutting down", "signal", name, NULL);
            break;
        }
        for (i = 0; i < npipes; i++) {
            kmb_pipe *p = pipes[i];
            for (int s = 0; s < 2 && !p->dead; s++) {
                short re = pfd[2 + 2 * i + s].revents;
                if ((re & POLLOUT) && kmb_pipe_flush(p, 1 - s) != 0)
                    kmb_pipe_close(p);
                else if ((re & POLLIN) && kmb_pipe_read(p, s) != 0)
                    kmb_pipe_close(p);
                else if ((re & (POLLERR | POLLNVAL)) || ((re & POLLHUP) && !(re & POLLIN)))
                    kmb_pipe_close(p);
            }
        }
        /* drop closed pairs; fds of the next round are rebuilt anyway */
        for (i = 0; i < npipes;) {
            if (pipes[i]->dead) {
                free(pipes[i]);
                pipes[i] = pipes[--npipes];
            } else {
                i++;
            }
        }
        if (lfd >= 0 && (pfd[1].revents & POLLIN) && npipes < KMB_MAX_PIPES) {
            kmb_pipe *p = kmb_accept(lfd, up, uplen);
            if (p != NULL)
                pipes[npipes++] = p;
        }
    }
    for (int i = 0; i < npipes; i++) {
        if (!pipes[i]->dead)
            kmb_pipe_close(pipes[i]);
        free(pipes[i]);
    }
}

/* writes "addr\n" to path through a temporary file, so readers never see
 * a partial address */
static int kmb_write_bootstrap(const char *path, const char *addr, char *err, size_t errlen)
{
    char tmp[PATH_MAX];
    FILE *f;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "--bootstrap-file path is too long");
        return -1;
    }
    f = fopen(tmp, "w");
    if (f == NULL) {
        snprintf(err, errlen, "could not write %.300s: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "%s\n", addr);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        snprintf(err, errlen, "could not write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

static void kmb_init_log(void)
{
    const char *lvl = getenv("LOG_LEVEL");
    cm_log_level min = CM_LOG_INFO;

    if (lvl != NULL && *lvl != '\0' && cm_log_level_parse(lvl, &min) != 0) {
        fprintf(stderr,
                "commerce-kafka-mock: LOG_LEVEL must be debug, info, warn or error, got '%s'\n",
                lvl);
        exit(2);
    }
    cm_log_init("kafka-mock", min);
}

int main(int argc, char **argv)
{
    static kmb_topic topics[KMB_MAX_TOPICS];
    char err[512], addr[64], count[16];
    kmb_opts o;
    rd_kafka_conf_t *conf;
    rd_kafka_t *rk = NULL;
    rd_kafka_mock_cluster_t *mc = NULL;
    char *text = NULL;
    const char *mock_addr;
    struct sockaddr_storage up;
    socklen_t uplen = 0;
    sigset_t mask;
    int ntopics, sfd = -1, lfd = -1, rc = 1, r;

    memset(&up, 0, sizeof up);
    r = kmb_parse_args(argc, argv, &o);
    if (r != 0)
        return r == 1 ? 0 : 2;
    kmb_init_log();

    if (o.topics_file != NULL) {
        text = kmb_read_file(o.topics_file, err, sizeof err);
        if (text == NULL) {
            cm_log_error("could not read the topic catalogue", "error", err, NULL);
            return 1;
        }
    }
    ntopics =
        kmb_catalogue_parse(text ? text : kmb_catalogue, topics, KMB_MAX_TOPICS, err, sizeof err);
    free(text);
    if (ntopics < 0) {
        cm_log_error("bad topic catalogue", "file", o.topics_file ? o.topics_file : "built-in",
                     "error", err, NULL);
        return 1;
    }

    /* every thread librdkafka starts inherits this mask, so the signals
     * reach only the signalfd */
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0 ||
        (sfd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0) {
        cm_log_error("could not set up signal handling", "error", strerror(errno), NULL);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    if (o.port != 0) {
        lfd = kmb_listen(o.port, err, sizeof err);
        if (lfd < 0) {
            cm_log_error("could not open the bootstrap port", "error", err, NULL);
            goto out;
        }
    }

    conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, kmb_rdkafka_log);
    /* the handle only hosts the mock cluster; it never connects anywhere */
    if (rd_kafka_conf_set(conf, "client.id", "commerce-kafka-mock", err, sizeof err) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        cm_log_error("could not configure librdkafka", "error", err, NULL);
        goto out;
    }
    /* LOG_LEVEL=debug shows the mock's protocol handling too */
    if (cm_log_enabled(CM_LOG_DEBUG) &&
        rd_kafka_conf_set(conf, "debug", "mock", err, sizeof err) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        cm_log_error("could not configure librdkafka", "error", err, NULL);
        goto out;
    }
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err); /* takes conf */
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        cm_log_error("could not create a librdkafka handle", "error", err, NULL);
        goto out;
    }
    mc = rd_kafka_mock_cluster_new(rk, o.brokers);
    if (mc == NULL) {
        cm_log_error("could not create the mock cluster", NULL);
        goto out;
    }
    for (int i = 0; i < ntopics; i++) {
        int rf = o.brokers < 3 ? o.brokers : 3;
        rd_kafka_resp_err_t e =
            rd_kafka_mock_topic_create(mc, topics[i].name, topics[i].partitions, rf);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            cm_log_error("could not create topic", "topic", topics[i].name, "error",
                         rd_kafka_err2str(e), NULL);
            goto out;
        }
    }
    mock_addr = rd_kafka_mock_cluster_bootstraps(mc);
    if (o.port != 0) {
        if (kmb_resolve(mock_addr, &up, &uplen, err, sizeof err) != 0) {
            cm_log_error("could not resolve the mock broker", "error", err, NULL);
            goto out;
        }
        snprintf(addr, sizeof addr, "127.0.0.1:%d", o.port);
    } else {
        /* the first broker is enough to bootstrap */
        size_t len = strcspn(mock_addr, ",");
        if (len >= sizeof addr) {
            cm_log_error("mock bootstrap address too long", "address", mock_addr, NULL);
            goto out;
        }
        memcpy(addr, mock_addr, len);
        addr[len] = '\0';
    }
    if (o.bootstrap_file != NULL &&
        kmb_write_bootstrap(o.bootstrap_file, addr, err, sizeof err) != 0) {
        cm_log_error("could not write the bootstrap file", "error", err, NULL);
        goto out;
    }
    snprintf(count, sizeof count, "%d", ntopics);
    cm_log_info("mock kafka serving", "bootstrap", addr, "mock_brokers", mock_addr, "topics", count,
                NULL);
    printf("KAFKA_BROKERS=%s\n", addr);
    fflush(stdout);

    kmb_serve(sfd, lfd, &up, uplen);
    rc = 0;
    if (o.bootstrap_file != NULL)
        unlink(o.bootstrap_file);
out:
    if (lfd >= 0)
        close(lfd);
    if (mc != NULL)
        rd_kafka_mock_cluster_destroy(mc);
    if (rk != NULL)
        rd_kafka_destroy(rk);
    if (sfd >= 0)
        close(sfd);
    if (rc == 0)
        cm_log_info("stopped", NULL);
    return rc;
}
