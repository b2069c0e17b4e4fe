/* The C engine of triosrv's echo load generator (`triosrv bench load --engine c`).
 *
 * Why it exists
 * -------------
 * A load generator must be cheaper than the server it measures. On loopback a round
 * trip costs the generator about 6 us of kernel time (one send, one recv); the Python
 * engine (_load_worker.py) adds about 1 us of interpreter work on top, which caps it
 * below twice what triosrv's `trio` backend serves. This program pays only the kernel
 * part. triosrv/bench/_cengine.py compiles it on first use and runs it as a subprocess.
 *
 * Theory of operation
 * -------------------
 * The design is _load_worker.py's, so that both engines measure the same thing: one
 * thread, one level-triggered epoll loop over non-blocking sockets. Each connection
 * keeps `pipeline` messages of `size` bytes in flight. The bytes we send are the
 * payload repeated for ever, and so are the bytes that must come back; `ring` holds the
 * payload repeated often enough that any send and any recv is one contiguous slice of
 * it, whatever the server's segmentation. A connection therefore needs no buffer of its
 * own, only offsets: `soff` and `roff` (where in the payload the next byte sent and the
 * next byte expected are), `to_send` (bytes owed, the kernel did not take them yet) and
 * `unanswered` (bytes sent, not echoed yet). to_send + unanswered + roff is always
 * pipeline * size, so a recv never completes more than `pipeline` messages.
 *
 * A wrong byte, more bytes than were sent, an EOF or a socket error fails that one
 * connection (counted by kind); the others go on. A run has three phases on the
 * CLOCK_MONOTONIC clock, each with a deadline: connect (all sockets at once; each sends
 * as soon as its own connect completes), warm-up (at least `warmup` s and until every
 * connection has echoed once, at most warmup + connect_timeout s from the start; connects
 * not done by connect_timeout fail) and the measured window of `duration` s. alarm() is
 * the last-resort stop should a deadline ever be missed.
 *
 * Latencies are a systematic sample, as in the Python engine: past SAMPLE_CAP samples
 * every second one is dropped and only every second round trip is recorded from then on.
 *
 * Paired mode (-q PORT2 -W WINDOW): CONNS connections to PORT (group 0) and CONNS to
 * PORT2 (group 1), and the measured `duration` is cut into windows of WINDOW s that
 * alternate between the groups, starting with group 0: only the group whose window it
 * is sends; at a window's end its connections stop replacing the messages that come
 * back ("park"), and the next window starts once every one of them is parked. The
 * round trips completed inside each window are printed per window, so that two servers
 * on one machine are compared a fraction of a second apart, under the same noise.
 *
 * Usage:  _cload -a ADDR -p PORT -c CONNS -s SIZE -P PIPELINE -w WARMUP -d DURATION
 *                -t CONNECT_TIMEOUT -S SEED [-q PORT2 -W WINDOW]
 *                                                     (ADDR: an IPv4 or IPv6 loopback)
 *         _cload -V                                   (print the version: a build check)
 * Output: one JSON object on stdout (see print_result). Exit status 0 when the run was
 * measured (connection failures are in the JSON), 1 when it could not run, 2 on bad
 * arguments; the reason is one line on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define VERSION "1"
#ifndef SAMPLE_CAP                     /* a test builds with a tiny cap to see thinning */
#define SAMPLE_CAP (1u << 18)          /* latency samples kept (2 MiB) */
#endif
#define POLL_SLICE_NS 100000000ull     /* longest epoll wait: deadlines are checked often */
#define WARMUP_SLICE_NS 10000000ull    /* the warm-up re-checks "all echoed" this often */
#define MAX_EVENTS 256
#define RECV_MIN 4096                  /* a recv asks for at least this much ... */
#define RECV_MAX (256u * 1024u)        /* ... and at most this much */
#define MAX_KINDS 64                   /* distinct error kinds counted; more go to "other" */
#define ALARM_SLACK_S 3
#define MAX_WINDOWS 100000
#define ALL_GROUPS 2                   /* `active` when every group sends (warm-up) */
#define NO_GROUP 3                     /* `active` when none does (between windows) */

enum state { CONNECTING, RUNNING, CLOSED };

struct conn {
    int fd;
    unsigned char state;
    unsigned char first_done;
    unsigned char want_out;  /* registered for EPOLLOUT */
    unsigned char group;     /* 0, or 1 for the second server of paired mode */
    size_t parked;           /* messages echoed but not replaced: its group is paused */
    unsigned head;           /* index in sent_at of the oldest message in flight */
    size_t soff, roff, to_send, unanswered;  /* see the theory of operation */
    uint64_t *sent_at;       /* send time of each message in flight: a ring of `pipeline` */
};

struct kind {
    const char *op;  /* "recv", "mismatch", ... */
    int code;        /* its errno, or 0 for a kind without one */
    uint64_t count;
};

struct gen {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    size_t size, pipeline, recv_cap, ring_len, nconns;
    unsigned char *ring, *buf;
    uint64_t origin, warmup, duration, connect_timeout;  /* ns */
    int ep;
    struct conn *conns;
    size_t live, pending_connects, pending_first, lost_before_connect, lost_before_first;
    uint64_t t_all_connected, t_all_first;  /* 0 = not (yet) reached */
    struct kind kinds[MAX_KINDS];
    size_t nkinds;
    uint64_t *stamps;  /* every connection's sent_at ring, in one block */
    uint64_t *samples, round_trips, mask;
    size_t nsamples;
    unsigned active;  /* the group that sends: 0, 1, ALL_GROUPS or NO_GROUP */
    uint64_t window;  /* paired mode's window (ns), 0 otherwise */
    size_t nwindows;
    struct { unsigned group; uint64_t round_trips, ns; } *windows;
};

static void die(const char *what) {
    fprintf(stderr, "_cload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    if (clock_gettime(clock, &ts) < 0) die("clock_gettime");
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void *alloc(size_t count, size_t each) {
    void *p = calloc(count, each);
    if (!p) die("calloc");
    return p;
}

/* ---- errors: counted by kind, printed at the end ---------------------------------- */

static void count_kind(struct gen *g, const char *op, int code) {
    for (size_t i = 0; i < g->nkinds; i++) {
        if (g->kinds[i].code == code && strcmp(g->kinds[i].op, op) == 0) {
            g->kinds[i].count++;
            return;
        }
    }
    /* The last slot is "other": it collects every kind that finds no slot of its own. */
    if (g->nkinds == MAX_KINDS) {
        g->kinds[MAX_KINDS - 1].count++;
        return;
    }
    if (g->nkinds == MAX_KINDS - 1) {
        op = "other";
        code = 0;
    }
    g->kinds[g->nkinds++] = (struct kind){.op = op, .code = code, .count = 1};
}

static void close_conn(struct gen *g, struct conn *c) {
    /* Closing the only descriptor of a socket also removes it from the epoll set. On
     * Linux the descriptor is released even when close reports an error, so an error
     * is only counted, never retried. */
    if (close(c->fd) < 0 && errno != EINTR) count_kind(g, "close", errno);
    c->state = CLOSED;
    g->live--;
}

/* Count the failure and close this connection; the others go on. */
static void fail(struct gen *g, struct conn *c, const char *op, int code) {
    count_kind(g, op, code);
    if (c->state == CONNECTING) {
        g->pending_connects--;
        g->lost_before_connect++;
    }
    if (!c->first_done) {
        g->pending_first--;
        g->lost_before_first++;
    }
    close_conn(g, c);
}

/* ---- the connection's life ---------------------------------------------------------- */

static int set_interest(struct gen *g, struct conn *c, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - g->conns)};
    if (epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
        fail(g, c, "epoll_ctl", errno);
        return -1;
    }
    c->want_out = (unsigned char)want_out;
    return 0;
}

/* Send what is owed, as far as the kernel takes it; wait for EPOLLOUT for the rest.
 * -1 when the connection failed (and is closed). */
static int flush(struct gen *g, struct conn *c) {
    while (c->to_send) {
        size_t chunk = g->ring_len - c->soff;
        if (chunk > c->to_send) chunk = c->to_send;
        ssize_t n = send(c->fd, g->ring + c->soff, chunk, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            fail(g, c, "send", errno);
            return -1;
        }
        c->soff = (c->soff + (size_t)n) % g->size;
        c->to_send -= (size_t)n;
        c->unanswered += (size_t)n;
    }
    int want_out = c->to_send > 0;
    return want_out == c->want_out ? 0 : set_interest(g, c, want_out);
}

static void finish_connect(struct gen *g, struct conn *c) {
    int code = 0;
    socklen_t len = sizeof code;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &code, &len) < 0) code = errno;
    if (code) {
        fail(g, c, "connect", code);
        return;
    }
    uint64_t t = now_ns();
    c->state = RUNNING;
    if (--g->pending_connects == 0) g->t_all_connected = t;
    for (size_t i = 0; i < g->pipeline; i++) c->sent_at[i] = t;
    c->to_send = g->pipeline * g->size;
    flush(g, c);  /* also drops EPOLLOUT once everything went out */
}

static void record(struct gen *g, uint64_t latency) {
    if (g->nsamples == SAMPLE_CAP) {
        /* Keep every second sample and record every second round trip from now on. */
        for (size_t i = 0; i < SAMPLE_CAP / 2; i++) g->samples[i] = g->samples[2 * i];
        g->nsamples = SAMPLE_CAP / 2;
        g->mask = g->mask * 2 + 1;
    }
    g->samples[g->nsamples++] = latency;
}

/* The hot path: check what came back, count the completed round trips, send as many. */
static void on_readable(struct gen *g, struct conn *c, int measuring) {
    ssize_t n = recv(c->fd, g->buf, g->recv_cap, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            fail(g, c, "recv", errno);
        return;
    }
    if (n == 0) {
        fail(g, c, "eof", 0);
        return;
    }
    /* Any byte that is not the next one we sent is a wrong echo, extra bytes included. */
    if ((size_t)n > c->unanswered || memcmp(g->buf, g->ring + c->roff, (size_t)n) != 0) {
        fail(g, c, "mismatch", 0);
        return;
    }
    c->unanswered -= (size_t)n;
    size_t off = c->roff + (size_t)n, done = off / g->size;
    c->roff = off % g->size;
    if (!done) return;
    uint64_t t = now_ns();
    for (size_t i = 0; i < done; i++) {
        uint64_t latency = t - c->sent_at[c->head];
        c->sent_at[c->head] = t;  /* the message that replaces it leaves now */
        c->head = (unsigned)((c->head + 1) % g->pipeline);
        if (measuring && !(++g->round_trips & g->mask)) record(g, latency);
    }
    if (!c->first_done) {
        c->first_done = 1;
        if (--g->pending_first == 0) g->t_all_first = t;
    }
    if (g->active != ALL_GROUPS && g->active != c->group) {
        c->parked += done;  /* paired mode: this group's window is over */
        return;
    }
    c->to_send += done * g->size;
    flush(g, c);
}

static void on_event(struct gen *g, struct conn *c, uint32_t events, int measuring) {
    if (c->state == CLOSED) return;
    if (c->state == CONNECTING) {
        finish_connect(g, c);
        return;
    }
    if ((events & EPOLLOUT) && c->to_send && flush(g, c) < 0) return;
    /* EPOLLERR and EPOLLHUP are reported by the recv itself (an errno, or EOF). */
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(g, c, measuring);
}

/* Run the loop until `until` (ns) or until no connection is left. */
static void pump(struct gen *g, uint64_t until, int measuring) {
    struct epoll_event events[MAX_EVENTS];
    while (g->live) {
        uint64_t now = now_ns();
        if (now >= until) return;
        uint64_t left = until - now < POLL_SLICE_NS ? until - now : POLL_SLICE_NS;
        int n = epoll_wait(g->ep, events, MAX_EVENTS, (int)((left + 999999) / 1000000));
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++)
            on_event(g, &g->conns[events[i].data.u32], events[i].events, measuring);
    }
}

/* ---- the phases ----------------------------------------------------------------------- */

/* Create every socket and start its connect without waiting for any. */
static void open_all(struct gen *g, size_t count) {
    int family = g->addr.ss_family, one = 1;
    for (size_t i = 0; i < count; i++) {
        int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {  /* e.g. EMFILE: counted like any failed connection */
            count_kind(g, "socket", errno);
            g->lost_before_connect++;
            g->lost_before_first++;
            continue;
        }
        struct conn *c = &g->conns[g->nconns];
        c->fd = fd;
        c->state = CONNECTING;
        c->want_out = 1;  /* a connect completes as writability */
        c->sent_at = g->stamps + g->nconns * g->pipeline;
        g->live++;
        g->pending_connects++;
        g->pending_first++;
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)g->nconns++};
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            fail(g, c, "setsockopt", errno);
        else if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            fail(g, c, "epoll_ctl", errno);
        else if (connect(fd, (struct sockaddr *)&g->addr, g->addrlen) < 0 && errno != EINPROGRESS)
            fail(g, c, "connect", errno);
    }
}

/* ---- paired mode ----------------------------------------------------------------------- */

/* Let `group` send again: every parked message leaves now. */
static void resume(struct gen *g, unsigned group) {
    uint64_t t = now_ns();
    g->active = group;
    for (size_t i = 0; i < g->nconns; i++) {
        struct conn *c = &g->conns[i];
        if (c->group != group || c->state != RUNNING || !c->parked) continue;
        for (size_t k = 0; k < g->pipeline; k++) c->sent_at[k] = t;
        c->to_send += c->parked * g->size;
        c->parked = 0;
        flush(g, c);
    }
}

/* Stop every group and pump until each running connection has parked all its messages
 * (at most `connect_timeout`: a server that stops answering fails its connections). */
static void park_all(struct gen *g) {
    g->active = NO_GROUP;
    uint64_t deadline = now_ns() + g->connect_timeout;
    for (;;) {
        size_t busy = 0;
        for (size_t i = 0; i < g->nconns; i++) {
            struct conn *c = &g->conns[i];
            if (c->state == RUNNING && c->parked < g->pipeline) busy++;
        }
        if (!busy) return;
        uint64_t now = now_ns();
        if (now >= deadline) {
            for (size_t i = 0; i < g->nconns; i++) {
                struct conn *c = &g->conns[i];
                if (c->state == RUNNING && c->parked < g->pipeline) fail(g, c, "park_timeout", 0);
            }
            return;
        }
        pump(g, now + 1000000ull < deadline ? now + 1000000ull : deadline, 0);
    }
}

/* The measured `duration`, in windows that alternate between the groups. */
static uint64_t run_windows(struct gen *g) {
    uint64_t measured = 0;
    park_all(g);
    for (unsigned group = 0; measured < g->duration && g->nwindows < MAX_WINDOWS; group ^= 1) {
        resume(g, group);
        uint64_t before = g->round_trips, t0 = now_ns();
        pump(g, t0 + g->window, 1);
        uint64_t ns = now_ns() - t0;
        g->windows[g->nwindows].group = group;
        g->windows[g->nwindows].round_trips = g->round_trips - before;
        g->windows[g->nwindows++].ns = ns;
        measured += ns;
        park_all(g);
    }
    return measured;
}

/* At least `warmup` and until every connection echoed once, bounded by connect_timeout. */
static void warm_up(struct gen *g) {
    uint64_t connect_deadline = g->origin + g->connect_timeout;
    uint64_t soonest = g->origin + g->warmup, cap = soonest + g->connect_timeout;
    while (g->live) {
        uint64_t now = now_ns();
        if (now >= connect_deadline && g->pending_connects) {
            for (size_t i = 0; i < g->nconns; i++)
                if (g->conns[i].state == CONNECTING) fail(g, &g->conns[i], "connect_timeout", 0);
        }
        if (now >= cap || (now >= soonest && !g->pending_first)) return;
        pump(g, now + WARMUP_SLICE_NS < cap ? now + WARMUP_SLICE_NS : cap, 0);
    }
}

static void print_ms(const char *name, uint64_t origin, uint64_t t, size_t lost) {
    if (t == 0 || lost) printf("\"%s\": null, ", name);
    else printf("\"%s\": %.3f, ", name, (double)(t - origin) / 1e6);
}

/* {"engine_version", "connections", "round_trips", "window", "cpu_seconds", "mask",
 *  "connect_ms", "first_echo_ms", "errors": [[op, errno or 0, count], ...],
 *  "windows": [[group, round_trips, seconds], ...] (paired mode, else empty),
 *  "samples_ns": [...]}: times in seconds unless the name says otherwise. In paired
 *  mode "samples_ns" holds both groups' latencies and "connections" counts both. */
static void print_result(const struct gen *g, size_t connections, uint64_t window,
                         uint64_t cpu, size_t never_echoed) {
    printf("{\"engine_version\": \"%s\", \"connections\": %zu, \"round_trips\": %llu, "
           "\"window\": %.9f, \"cpu_seconds\": %.9f, \"mask\": %llu, ",
           VERSION, connections, (unsigned long long)g->round_trips, (double)window / 1e9,
           (double)cpu / 1e9, (unsigned long long)g->mask);
    print_ms("connect_ms", g->origin, g->t_all_connected, g->lost_before_connect);
    print_ms("first_echo_ms", g->origin, g->t_all_first, g->lost_before_first);
    printf("\"errors\": [");
    for (size_t i = 0; i < g->nkinds; i++)
        printf("%s[\"%s\", %d, %llu]", i ? ", " : "", g->kinds[i].op, g->kinds[i].code,
               (unsigned long long)g->kinds[i].count);
    if (never_echoed)
        printf("%s[\"no_first_echo\", 0, %zu]", g->nkinds ? ", " : "", never_echoed);
    printf("], \"windows\": [");
    for (size_t i = 0; i < g->nwindows; i++)
        printf("%s[%u, %llu, %.9f]", i ? ", " : "", g->windows[i].group,
               (unsigned long long)g->windows[i].round_trips, (double)g->windows[i].ns / 1e9);
    printf("], \"samples_ns\": [");
    for (size_t i = 0; i < g->nsamples; i++)
        printf("%s%llu", i ? "," : "", (unsigned long long)g->samples[i]);
    printf("]}\n");
    if (fflush(stdout) == EOF || ferror(stdout)) die("writing the result");
}

/* ---- arguments and setup ---------------------------------------------------------------- */

static void usage_error(const char *what, const char *text) {
    fprintf(stderr, "_cload: bad %s: %s\n", what, text ? text : "(missing)");
    exit(2);
}

static uint64_t parse_count(const char *what, const char *text, uint64_t lo, uint64_t hi) {
    if (!text || text[0] == '-') usage_error(what, text);
    char *end;
    errno = 0;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno || end == text || *end || value < lo || value > hi) usage_error(what, text);
    return value;
}

/* Seconds in, nanoseconds out; `positive` excludes zero. NaN fails both comparisons. */
static uint64_t parse_seconds(const char *what, const char *text, int positive) {
    if (!text) usage_error(what, text);
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    int in_range = positive ? value > 0 : value >= 0;
    if (errno || end == text || *end || !in_range || !(value <= 1e6)) usage_error(what, text);
    return (uint64_t)(value * 1e9);
}

/* The Python side only ever passes loopback addresses; this program checks again, so
 * that it cannot be pointed at another machine by mistake either. */
static void parse_address(struct gen *g, const char *text, uint16_t port) {
    struct sockaddr_in *in4 = (struct sockaddr_in *)&g->addr;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&g->addr;
    memset(&g->addr, 0, sizeof g->addr);
    if (text && inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
        if (ntohl(in4->sin_addr.s_addr) >> 24 != 127) usage_error("address (not loopback)", text);
        in4->sin_family = AF_INET;
        in4->sin_port = htons(port);
        g->addrlen = sizeof *in4;
    } else if (text && inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) usage_error("address (not loopback)", text);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        g->addrlen = sizeof *in6;
    } else {
        usage_error("address", text);
    }
}

static void set_port(struct gen *g, uint16_t port) {
    if (g->addr.ss_family == AF_INET) ((struct sockaddr_in *)&g->addr)->sin_port = htons(port);
    else ((struct sockaddr_in6 *)&g->addr)->sin6_port = htons(port);
}

/* The payload is made from the seed (splitmix64), then repeated to fill the ring. */
static void make_ring(struct gen *g, uint64_t seed) {
    g->ring_len = g->size * (g->recv_cap / g->size + 2);  /* >= size + recv_cap */
    g->ring = alloc(g->ring_len, 1);
    for (size_t i = 0; i < g->size; i++) {
        uint64_t z = (seed += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        g->ring[i] = (unsigned char)(z ^ (z >> 31));
    }
    for (size_t i = g->size; i < g->ring_len; i++) g->ring[i] = g->ring[i - g->size];
}

static void setup(struct gen *g, size_t connections, uint64_t seed) {
    g->active = ALL_GROUPS;
    if (g->window) g->windows = alloc(MAX_WINDOWS, sizeof *g->windows);
    size_t in_flight = g->pipeline * g->size;
    g->recv_cap = in_flight < RECV_MIN ? RECV_MIN : in_flight > RECV_MAX ? RECV_MAX : in_flight;
    make_ring(g, seed);
    g->buf = alloc(g->recv_cap, 1);
    g->conns = alloc(connections, sizeof *g->conns);
    g->stamps = alloc(connections * g->pipeline, sizeof *g->stamps);
    g->samples = alloc(SAMPLE_CAP, sizeof *g->samples);
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    if (g->ep < 0) die("epoll_create1");
}

int main(int argc, char **argv) {
    static struct gen gen;  /* static: zeroed, and too big for some stacks */
    struct gen *g = &gen;
    const char *arg[128] = {0};
    int opt;
    while ((opt = getopt(argc, argv, "a:p:c:s:P:w:d:t:S:q:W:V")) != -1) {
        if (opt == 'V') {
            printf("%s\n", VERSION);
            return fflush(stdout) == EOF ? 1 : 0;
        }
        if (opt == '?') return 2;  /* getopt has printed why */
        arg[opt] = optarg;
    }
    if (optind < argc) usage_error("argument", argv[optind]);
    parse_address(g, arg['a'], (uint16_t)parse_count("port", arg['p'], 1, 65535));
    size_t connections = parse_count("connections", arg['c'], 1, 1u << 20);
    g->size = parse_count("size", arg['s'], 1, 1u << 30);
    g->pipeline = parse_count("pipeline", arg['P'], 1, 1u << 16);
    g->warmup = parse_seconds("warmup", arg['w'], 0);
    g->duration = parse_seconds("duration", arg['d'], 1);
    g->connect_timeout = parse_seconds("connect timeout", arg['t'], 1);
    uint64_t seed = parse_count("seed", arg['S'], 0, UINT64_MAX);
    uint16_t second_port = 0;
    if (arg['q'] || arg['W']) {  /* paired mode: both or neither */
        second_port = (uint16_t)parse_count("second port", arg['q'], 1, 65535);
        g->window = parse_seconds("window", arg['W'], 1);
    }
    size_t per_group = connections;
    if (second_port) connections *= 2;
    setup(g, connections, seed);
    /* The last-resort stop: every phase has a deadline, this catches a missed one. Paired
     * mode: the parking between windows takes a few ms each, or once connect_timeout
     * when a server stops answering (its connections fail then). */
    uint64_t limit = g->warmup + g->connect_timeout + g->duration;
    if (g->window) limit += g->duration + g->connect_timeout;
    alarm((unsigned)(limit / 1000000000ull) + 1 + ALARM_SLACK_S);

    g->origin = now_ns();
    open_all(g, per_group);
    if (second_port) {
        size_t start = g->nconns;
        set_port(g, second_port);
        open_all(g, per_group);
        for (size_t i = start; i < g->nconns; i++) g->conns[i].group = 1;
    }
    warm_up(g);
    uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID), t0 = now_ns(), window;
    if (g->window) {
        window = run_windows(g);
    } else {
        pump(g, t0 + g->duration, 1);
        window = now_ns() - t0;
    }
    uint64_t cpu = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    size_t never_echoed = g->pending_first;
    for (size_t i = 0; i < g->nconns; i++)
        if (g->conns[i].state != CLOSED) close_conn(g, &g->conns[i]);
    if (close(g->ep) < 0) die("close");
    print_result(g, connections, window, cpu, never_echoed);
    return 0;  /* the heap blocks go with the process */
}
