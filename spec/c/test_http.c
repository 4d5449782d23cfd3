/* The HTTP front end (core/http.c) over real sockets on 127.0.0.1: requests reach
 * lm_http_next intact, whole and streamed answers arrive, bodies over the limit get
 * 413, disconnects are noticed, hostile clients (slow, garbage, huge headers, never
 * reading) neither crash nor block the server, and lm_http_stop drains. A scheduler
 * thread plays the part of the Lua loop for server A; server B is driven step by step
 * from main. Also lm_utf8_valid and the signal flag. Leaks show under ASan. */
#define _GNU_SOURCE
#include "testutil.h"
#include "lumen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* ---- a small client ------------------------------------------------------------------ */

typedef struct {
    int fd;
    char *buf;               /* received, not yet consumed */
    size_t len, cap;
    bool closed;             /* recv returned 0 or failed */
} conn_t;

static conn_t dial(int port) {
    conn_t c = {.fd = socket(AF_INET, SOCK_STREAM, 0)};
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {5, 0};  /* no test waits forever */
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(c.fd, (struct sockaddr *)&a, sizeof a)) {
        fprintf(stderr, "connect: %s\n", strerror(errno));
        c.closed = true;
    }
    return c;
}

static void hang_up(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

static bool send_all(conn_t *c, const void *p, size_t n) {
    const char *s = p;
    while (n) {
        ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
        if (k <= 0) return false;
        s += k;
        n -= (size_t)k;
    }
    return true;
}

static bool send_str(conn_t *c, const char *s) { return send_all(c, s, strlen(s)); }

static bool fill(conn_t *c) {
    if (c->closed) return false;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
    if (n <= 0) {
        c->closed = true;
        return false;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    return true;
}

typedef struct {
    int status;              /* 0: no response */
    char *head;              /* status line and headers */
    char *body;              /* decoded (de-chunked), NUL-terminated */
    size_t body_len;
    bool chunked, complete;
    int n_chunks;
    double chunk_t[32];      /* arrival time of each chunk */
    size_t chunk_len[32];
} resp_t;

static void resp_free(resp_t *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

static void body_add(resp_t *r, const char *p, size_t n) {
    r->body = realloc(r->body, r->body_len + n + 1);
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
}

/* Reads one response; complete is false when the connection ended first. */
static resp_t read_response(conn_t *c) {
    resp_t r = {0};
    body_add(&r, "", 0);
    char *end;
    while (!c->buf || !(end = memmem(c->buf, c->len, "\r\n\r\n", 4)))
        if (!fill(c)) return r;
    size_t pos = (size_t)(end - c->buf) + 4;
    r.head = strndup(c->buf, pos);
    sscanf(r.head, "HTTP/1.%*d %d", &r.status);
    const char *cl = strcasestr(r.head, "\r\ncontent-length:");
    r.chunked = strcasestr(r.head, "\r\ntransfer-encoding: chunked") != NULL;
    if (r.chunked) {
        for (;;) {
            char *eol;
            while (!(eol = memmem(c->buf + pos, c->len - pos, "\r\n", 2)))
                if (!fill(c)) return r;
            size_t size = strtoul(c->buf + pos, NULL, 16);
            size_t data = (size_t)(eol - c->buf) + 2;
            while (c->len < data + size + 2)
                if (!fill(c)) return r;
            if (size == 0) {
                pos = data + 2;
                r.complete = true;
                break;
            }
            if (r.n_chunks < 32) {
                r.chunk_t[r.n_chunks] = now_s();
                r.chunk_len[r.n_chunks] = size;
            }
            r.n_chunks++;
            body_add(&r, c->buf + data, size);
            pos = data + size + 2;
        }
    } else if (cl) {
        size_t n = strtoul(cl + 17, NULL, 10);
        while (c->len < pos + n)
            if (!fill(c)) return r;
        body_add(&r, c->buf + pos, n);
        pos += n;
        r.complete = true;
    } else {
        while (fill(c)) {}
        body_add(&r, c->buf + pos, c->len - pos);
        pos = c->len;
        r.complete = true;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    return r;
}

/* One request on a fresh connection. */
static resp_t request(int port, const char *raw, size_t len) {
    conn_t c = dial(port);
    resp_t r = {0};
    if (send_all(&c, raw, len)) r = read_response(&c);
    hang_up(&c);
    return r;
}

static const char *str(const char *s) { return s ? s : "(null)"; }

static bool header_has(const resp_t *r, const char *line) { return r->head && strcasestr(r->head, line); }

/* Waits until the server closed c (recv 0 or error); seconds waited, or -1 after limit_s. */
static double wait_closed(conn_t *c, double limit_s) {
    double t0 = now_s();
    while (now_s() - t0 < limit_s) {
        char b[4096];
        ssize_t n = recv(c->fd, b, sizeof b, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return now_s() - t0;
    }
    return -1;
}

/* ---- server A's scheduler: a loop shaped like the Lua one ------------------------------ */

enum { J_DELAY, J_STREAM, J_ENDLESS };
typedef struct {
    int kind;
    int64_t id;
    double at;               /* when the next step is due */
    int step, gap_ms;
    char *echo;
    size_t echo_len;
} job_t;

static struct {
    lm_http *h;
    atomic_bool quit;
    atomic_int endless_failed;   /* 1 once a write to a gone client returned LM_ERR */
    atomic_int bad_header_refused;
} A;

static int query_int(const char *q, const char *key, int dflt) {
    const char *p = strstr(q, key);
    return p ? atoi(p + strlen(key)) : dflt;
}

static char *echo_of(const lm_http_request *rq, size_t *len) {
    char head[1024];
    int n = snprintf(head, sizeof head, "method=%s\npath=%s\nquery=%s\nauth=%s\nctype=%s\nlen=%lld\nbody=",
                     rq->method, rq->path, rq->query, rq->authorization, rq->content_type,
                     (long long)rq->body_len);
    char *out = malloc((size_t)n + (size_t)rq->body_len + 1);
    memcpy(out, head, (size_t)n);
    memcpy(out + n, rq->body, (size_t)rq->body_len);
    *len = (size_t)n + (size_t)rq->body_len;
    return out;
}

static void dispatch(const lm_http_request *rq, job_t *jobs, int *n_jobs) {
    lm_http *h = A.h;
    job_t j = {.id = rq->id, .at = now_s()};
    if (strncmp(rq->path, "/echo", 5) == 0) {
        size_t len;
        char *e = echo_of(rq, &len);
        CHECK(lm_http_respond(h, rq->id, 200, "text/plain", e, (int64_t)len, NULL) == LM_OK, "%s", lm_last_error());
        free(e);
        return;
    }
    if (strcmp(rq->path, "/limited") == 0) {
        const char *b = "{\"error\":{\"message\":\"slow down\"}}";
        CHECK(lm_http_respond(h, rq->id, 429, "application/json", b, (int64_t)strlen(b),
                              "Retry-After: 1\r\nX-Test:   yes\r\n") == LM_OK, "%s", lm_last_error());
        return;
    }
    if (strcmp(rq->path, "/badheader") == 0) {
        /* A bad header line is the caller's error: the request stays open for a 500. */
        if (lm_http_respond(h, rq->id, 200, "text/plain", "x", 1, "NoColonHere\r\n") == LM_ERR &&
            strstr(lm_last_error(), "bad header line")) A.bad_header_refused = 1;
        CHECK(lm_http_respond(h, rq->id, 500, "text/plain", "refused", 7, NULL) == LM_OK, "%s", lm_last_error());
        return;
    }
    if (strcmp(rq->path, "/delay") == 0) {
        j.kind = J_DELAY;
        j.at += query_int(rq->query, "ms=", 100) / 1000.0;
        j.echo = echo_of(rq, &j.echo_len);
    } else if (strcmp(rq->path, "/stream") == 0 || strcmp(rq->path, "/endless") == 0) {
        j.kind = rq->path[1] == 's' ? J_STREAM : J_ENDLESS;
        j.gap_ms = query_int(rq->query, "gap=", 100);
        CHECK(lm_http_stream_open(h, rq->id, 200, "text/event-stream", "Cache-Control: no-cache\r\n") == LM_OK,
              "%s", lm_last_error());
    } else {
        CHECK(lm_http_respond(h, rq->id, 404, "text/plain", "no", 2, NULL) == LM_OK, "%s", lm_last_error());
        return;
    }
    jobs[(*n_jobs)++] = j;
}

/* One step of job j; false when it is done. */
static bool advance(job_t *j) {
    lm_http *h = A.h;
    if (j->kind == J_DELAY) {
        CHECK(lm_http_respond(h, j->id, 200, "text/plain", j->echo, (int64_t)j->echo_len, NULL) == LM_OK,
              "%s", lm_last_error());
        free(j->echo);
        return false;
    }
    if (j->kind == J_ENDLESS) {
        if (lm_http_stream_write(h, j->id, "data: tick\n\n", 12) != LM_OK) {
            if (strstr(lm_last_error(), "client disconnected")) A.endless_failed = 1;
            return false;
        }
        j->at += 0.02;
        return true;
    }
    /* five events; the gap before the fourth comes from ?gap= */
    char ev[32];
    int n = snprintf(ev, sizeof ev, "data: %d\n\n", j->step);
    CHECK(lm_http_stream_write(h, j->id, ev, n) == LM_OK, "%s", lm_last_error());
    if (++j->step == 5) {
        CHECK(lm_http_stream_close(h, j->id) == LM_OK, "%s", lm_last_error());
        return false;
    }
    j->at += (j->step == 3 ? j->gap_ms : 100) / 1000.0;
    return true;
}

static void *scheduler(void *arg) {
    (void)arg;
    job_t jobs[128];
    int n_jobs = 0;
    while (!A.quit) {
        lm_http_request rq;
        int got = lm_http_next(A.h, &rq, 5);
        CHECK(got >= 0, "%s", lm_last_error());
        if (got == 1 && n_jobs < 128) dispatch(&rq, jobs, &n_jobs);
        double t = now_s();
        for (int i = 0; i < n_jobs;)
            if (jobs[i].at <= t && !advance(&jobs[i])) jobs[i] = jobs[--n_jobs];
            else i++;
    }
    for (int i = 0; i < n_jobs; i++) free(jobs[i].echo);
    return NULL;
}

/* ---- tests on server A ------------------------------------------------------------------ */

static void test_get_post(int port) {
    conn_t c = dial(port);
    send_str(&c, "GET /echo?x=1&y=%20z HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-test\r\n\r\n");
    resp_t r = read_response(&c);
    CHECK(r.status == 200 && r.complete, "GET: status %d", r.status);
    const char *want = "method=GET\npath=/echo\nquery=x=1&y=%20z\nauth=Bearer sk-test\nctype=\nlen=0\nbody=";
    CHECK(r.body && strcmp(r.body, want) == 0, "GET echo: [%s]", str(r.body));
    resp_free(&r);
    /* the same connection, kept alive: a POST whose body holds a NUL */
    static const char body[] = "{\"a\":\"\xc3\xa9\"}\0tail";
    char head[256];
    snprintf(head, sizeof head, "POST /echo/v1/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n", sizeof body - 1);
    send_str(&c, head);
    send_all(&c, body, sizeof body - 1);
    r = read_response(&c);
    CHECK(r.status == 200, "POST: status %d", r.status);
    char want2[256];
    int n = snprintf(want2, sizeof want2, "method=POST\npath=/echo/v1/chat\nquery=\nauth=\nctype=application/json\n"
                     "len=%zu\nbody=", sizeof body - 1);
    memcpy(want2 + n, body, sizeof body - 1);
    CHECK(r.body_len == (size_t)n + sizeof body - 1 && memcmp(r.body, want2, r.body_len) == 0,
          "POST echo: %zu bytes [%s]", r.body_len, str(r.body));
    resp_free(&r);
    hang_up(&c);
    /* HTTP/1.0 without Host is served too */
    const char *old = "GET /echo HTTP/1.0\r\n\r\n";
    r = request(port, old, strlen(old));
    CHECK(r.status == 200 && r.body && strstr(r.body, "method=GET\n"), "HTTP/1.0: %d", r.status);
    resp_free(&r);
}

static void test_status_headers(int port) {
    const char *q = "GET /limited HTTP/1.1\r\nHost: t\r\n\r\n";
    resp_t r = request(port, q, strlen(q));
    CHECK(r.status == 429, "status %d", r.status);
    CHECK(header_has(&r, "\r\nRetry-After: 1\r\n"), "no Retry-After in [%s]", str(r.head));
    CHECK(header_has(&r, "\r\nX-Test: yes\r\n"), "no X-Test in [%s]", str(r.head));
    CHECK(header_has(&r, "\r\nContent-Type: application/json\r\n"), "content type: [%s]", str(r.head));
    CHECK(r.body && strcmp(r.body, "{\"error\":{\"message\":\"slow down\"}}") == 0, "body [%s]", str(r.body));
    resp_free(&r);
    q = "GET /badheader HTTP/1.1\r\nHost: t\r\n\r\n";
    r = request(port, q, strlen(q));
    CHECK(r.status == 500 && A.bad_header_refused, "bad header: status %d refused %d", r.status,
          (int)A.bad_header_refused);
    resp_free(&r);
}

/* Five events, the fourth 1.3 s after the third: longer than the 1 s idle timeout,
 * which must not apply while the server itself is the slow one. */
static void test_stream(int port) {
    const char *q = "GET /stream?gap=1300 HTTP/1.1\r\nHost: t\r\n\r\n";
    conn_t c = dial(port);
    send_str(&c, q);
    resp_t r = read_response(&c);
    CHECK(r.status == 200 && r.chunked && r.complete, "stream: status %d chunked %d complete %d", r.status,
          r.chunked, r.complete);
    CHECK(header_has(&r, "\r\nContent-Type: text/event-stream\r\n"), "stream head [%s]", str(r.head));
    CHECK(r.body && strcmp(r.body, "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n") == 0,
          "stream body [%s]", str(r.body));
    CHECK(r.n_chunks == 5, "%d chunks", r.n_chunks);
    if (r.n_chunks == 5) {
        CHECK(r.chunk_len[0] == 9, "first chunk %zu bytes", r.chunk_len[0]);
        /* the chunks came as written, not all at the end */
        CHECK(r.chunk_t[3] - r.chunk_t[2] > 1.0, "gap %.3f s", r.chunk_t[3] - r.chunk_t[2]);
    }
    resp_free(&r);
    /* keep-alive after a stream */
    send_str(&c, "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    r = read_response(&c);
    CHECK(r.status == 200, "after stream: %d", r.status);
    resp_free(&r);
    hang_up(&c);
}

static const char *TOO_LARGE =
    "{\"error\":{\"message\":\"request body exceeds the limit of 1048576 bytes\",\"type\":\"invalid_request_error\","
    "\"param\":null,\"code\":\"body_too_large\"}}";

static void test_413(int port) {
    /* declared too large: answered before the body is read */
    conn_t c = dial(port);
    send_str(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n");
    char *junk = malloc(65536);
    memset(junk, 'x', 65536);
    send_all(&c, junk, 65536);  /* may fail once the server has answered and closed */
    resp_t r = read_response(&c);
    CHECK(r.status == 413, "content-length 10 MB: status %d", r.status);
    CHECK(r.body && strcmp(r.body, TOO_LARGE) == 0, "413 body [%s]", str(r.body));
    CHECK(header_has(&r, "\r\nContent-Type: application/json\r\n"), "413 head [%s]", str(r.head));
    resp_free(&r);
    hang_up(&c);
    /* chunked upload of 2.5 MiB: read and dropped, then 413 */
    c = dial(port);
    send_str(&c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    bool sent = true;
    for (int i = 0; i < 40 && sent; i++) sent = send_str(&c, "10000\r\n") && send_all(&c, junk, 65536) && send_str(&c, "\r\n");
    sent = sent && send_str(&c, "0\r\n\r\n");
    CHECK(sent, "chunked upload was cut");
    r = read_response(&c);
    CHECK(r.status == 413 && r.body && strcmp(r.body, TOO_LARGE) == 0, "chunked: status %d [%s]", r.status, str(r.body));
    resp_free(&r);
    hang_up(&c);
    free(junk);
    /* the server goes on; a body at the limit passes */
    size_t n = 1 << 20;
    char *raw = malloc(n + 200);
    int k = snprintf(raw, 200, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", n);
    memset(raw + k, 'b', n);
    r = request(port, raw, (size_t)k + n);
    CHECK(r.status == 200 && r.body && strstr(r.body, "len=1048576\n"), "1 MiB body: status %d", r.status);
    resp_free(&r);
    free(raw);
}

static void test_disconnect_mid_stream(int port) {
    conn_t c = dial(port);
    send_str(&c, "GET /endless HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(fill(&c) && strstr(c.buf, "200"), "endless stream did not start");
    hang_up(&c);
    double t0 = now_s();
    while (!A.endless_failed && now_s() - t0 < 3) sleep_ms(10);
    CHECK(A.endless_failed, "stream_write never reported the gone client");
}

typedef struct {
    int port, i;
    bool ok;
} client_arg;

static void *concurrent_client(void *p) {
    client_arg *a = p;
    char raw[256], want[32];
    snprintf(want, sizeof want, "body=client-%02d", a->i);
    snprintf(raw, sizeof raw, "POST /delay?ms=300 HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\nclient-%02d", a->i);
    resp_t r = request(a->port, raw, strlen(raw));
    a->ok = r.status == 200 && r.body && strstr(r.body, want);
    resp_free(&r);
    return NULL;
}

static void test_concurrent(int port) {
    enum { N = 32 };
    pthread_t t[N];
    client_arg a[N];
    double t0 = now_s();
    for (int i = 0; i < N; i++) {
        a[i] = (client_arg){.port = port, .i = i};
        pthread_create(&t[i], NULL, concurrent_client, &a[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        ok += a[i].ok;
    }
    double dt = now_s() - t0;
    CHECK(ok == N, "%d of %d concurrent clients served", ok, N);
    CHECK(dt < 3.0, "32 requests of 0.3 s took %.2f s (not concurrent?)", dt);
}

/* Half a request, then nothing: dropped after the 1 s timeout while others are served. */
static void test_slow_client(int port) {
    conn_t slow = dial(port);
    send_str(&slow, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Half: ab");
    double t0 = now_s();
    const char *q = "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";
    resp_t r = request(port, q, strlen(q));
    CHECK(r.status == 200 && now_s() - t0 < 0.5, "served beside a slow client: %d", r.status);
    resp_free(&r);
    double waited = wait_closed(&slow, 4.0);
    CHECK(waited >= 0 && now_s() - t0 >= 0.9, "slow client not dropped (waited %.2f)", waited);
    hang_up(&slow);
}

static void test_garbage(int port) {
    static const char tls[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all \x00\xff\r\n\r\n";
    resp_t r = request(port, tls, sizeof tls - 1);
    CHECK(r.status == 0 || r.status >= 400, "TLS-like bytes: status %d", r.status);
    resp_free(&r);
    static const char *bad[] = {
        "GARBAGE\r\n\r\n",
        "GET / HTTP/9.9\r\nHost: t\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "GET /echo HTTP/1.1\r\nHost: t\r\nNo colon line\r\n\r\n",
        "\r\n\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = request(port, bad[i], strlen(bad[i]));
        CHECK(r.status == 0 || r.status >= 400 || r.status == 200, "garbage %zu: status %d", i, r.status);
        resp_free(&r);
    }
    /* headers far over the connection's memory limit */
    size_t big = 200000;
    char *raw = malloc(big + 100);
    int k = snprintf(raw, 100, "GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(raw + k, 'a', big);
    memcpy(raw + k + big, "\r\n\r\n", 4);
    r = request(port, raw, (size_t)k + big + 4);
    CHECK(r.status == 0 || r.status == 431 || r.status == 413, "huge header: status %d", r.status);
    resp_free(&r);
    free(raw);
    const char *q = "GET /echo HTTP/1.1\r\nHost: t\r\n\r\n";
    r = request(port, q, strlen(q));
    CHECK(r.status == 200, "served after garbage: %d", r.status);
    resp_free(&r);
}

static void test_bind_in_use(int port) {
    lm_http *h = lm_http_start(&(lm_http_params){.port = port});
    CHECK(h == NULL, "bound a port in use");
    char want[64];
    snprintf(want, sizeof want, "cannot bind 127.0.0.1:%d: Address already in use", port);
    CHECK(strstr(lm_last_error(), want), "message [%s]", lm_last_error());
    lm_http_stop(h, 0);
}

/* ---- server B, driven step by step ------------------------------------------------------ */

static int64_t take(lm_http *h, const char *path) {
    lm_http_request rq;
    int got = lm_http_next(h, &rq, 2000);
    CHECK(got == 1, "no request for %s (%d: %s)", path, got, got < 0 ? lm_last_error() : "timeout");
    if (got != 1) return 0;
    CHECK(strcmp(rq.path, path) == 0, "path %s, want %s", rq.path, path);
    return rq.id;
}

static void test_disconnect_waiting(lm_http *h, int port) {
    lm_http_request rq;
    double t0 = now_s();
    CHECK(lm_http_next(h, &rq, 50) == 0, "next without requests");
    CHECK(now_s() - t0 >= 0.04, "next returned early");

    conn_t c = dial(port);
    send_str(&c, "POST /wait HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    int64_t id = take(h, "/wait");
    CHECK(lm_http_alive(h, id), "alive while the client waits");
    hang_up(&c);
    t0 = now_s();
    while (lm_http_alive(h, id) && now_s() - t0 < 2.5) sleep_ms(10);
    double dt = now_s() - t0;
    CHECK(!lm_http_alive(h, id) && dt < 2.0, "disconnect noticed after %.2f s", dt);
    /* alive() said false: the request is finished, answering it is a harmless error */
    CHECK(lm_http_respond(h, id, 200, "text/plain", "late", 4, NULL) == LM_ERR &&
          strstr(lm_last_error(), "unknown or finished"), "respond after alive false: [%s]", lm_last_error());
    CHECK(lm_http_stream_write(h, id, "x", 1) == LM_ERR, "write to a finished id");

    /* answered without asking alive() first: "client disconnected", and finished */
    c = dial(port);
    send_str(&c, "GET /wait2 HTTP/1.1\r\nHost: t\r\n\r\n");
    id = take(h, "/wait2");
    hang_up(&c);
    sleep_ms(500);
    CHECK(lm_http_respond(h, id, 200, "text/plain", "late", 4, NULL) == LM_ERR &&
          strstr(lm_last_error(), "client disconnected"), "respond to a gone client: [%s]", lm_last_error());
    CHECK(lm_http_respond(h, id, 200, NULL, NULL, 0, NULL) == LM_ERR && strstr(lm_last_error(), "unknown"),
          "second respond: [%s]", lm_last_error());
    CHECK(!lm_http_alive(h, id), "finished id alive");
    CHECK(lm_http_stream_close(h, 12345) == LM_ERR, "close an unknown id");
    CHECK(!lm_http_alive(h, 12345), "unknown id alive");

    /* a client that leaves while its request is queued: dropped unseen */
    c = dial(port);
    send_str(&c, "GET /gone HTTP/1.1\r\nHost: t\r\n\r\n");
    sleep_ms(50);
    hang_up(&c);
    sleep_ms(400);
    CHECK(lm_http_next(h, &rq, 0) == 0, "a queued request of a gone client was handed out");

    /* a stream whose client leaves between writes: alive turns false without a write */
    c = dial(port);
    send_str(&c, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
    id = take(h, "/s");
    CHECK(lm_http_stream_open(h, id, 200, "text/event-stream", NULL) == LM_OK, "%s", lm_last_error());
    CHECK(lm_http_stream_write(h, id, "data: 1\n\n", 9) == LM_OK, "%s", lm_last_error());
    CHECK(lm_http_stream_open(h, id, 200, "text/event-stream", NULL) == LM_ERR, "opened a stream twice");
    CHECK(lm_http_respond(h, id, 200, NULL, "x", 1, NULL) == LM_ERR, "whole answer to an open stream");
    CHECK(fill(&c), "stream did not start");
    hang_up(&c);
    t0 = now_s();
    bool alive = true;
    while ((alive = lm_http_alive(h, id)) && now_s() - t0 < 2.5) sleep_ms(10);
    CHECK(!alive, "gone stream client still alive after %.2f s", now_s() - t0);
    CHECK(lm_http_stream_write(h, id, "data: 2\n\n", 9) == LM_ERR, "write after the client left");
    CHECK(lm_http_stream_close(h, id) == LM_ERR, "close after the client left");

    /* the same, noticed by a write instead */
    c = dial(port);
    send_str(&c, "GET /s2 HTTP/1.1\r\nHost: t\r\n\r\n");
    id = take(h, "/s2");
    CHECK(lm_http_stream_open(h, id, 200, "text/event-stream", NULL) == LM_OK, "%s", lm_last_error());
    CHECK(lm_http_stream_write(h, id, "data: 1\n\n", 9) == LM_OK, "%s", lm_last_error());
    CHECK(fill(&c), "stream did not start");
    hang_up(&c);
    t0 = now_s();
    lm_status st = LM_OK;
    while ((st = lm_http_stream_write(h, id, "data: 2\n\n", 9)) == LM_OK && now_s() - t0 < 2.5) sleep_ms(10);
    CHECK(st == LM_ERR && strstr(lm_last_error(), "client disconnected"), "write after the client left: [%s]",
          lm_last_error());
    CHECK(lm_http_stream_close(h, id) == LM_ERR, "close after a failed write");
}

/* Argument errors leave the request open, to be answered properly. */
static void test_bad_args(lm_http *h, int port) {
    conn_t c = dial(port);
    send_str(&c, "GET /args HTTP/1.1\r\nHost: t\r\n\r\n");
    int64_t id = take(h, "/args");
    CHECK(lm_http_respond(h, id, 42, NULL, NULL, 0, NULL) == LM_ERR && strstr(lm_last_error(), "out of range"),
          "status 42: [%s]", lm_last_error());
    CHECK(lm_http_respond(h, id, 200, NULL, NULL, -1, NULL) == LM_ERR, "negative length");
    CHECK(lm_http_respond(h, id, 200, "text/plain", "x", 1, "X-Evil: a\r\n\r\nInjected: b\x01\r\n") == LM_ERR,
          "control character in a header");
    CHECK(lm_http_stream_write(h, id, "x", 1) == LM_ERR && strstr(lm_last_error(), "no open stream"),
          "write before stream_open: [%s]", lm_last_error());
    CHECK(lm_http_alive(h, id), "the request stayed open");
    CHECK(lm_http_respond(h, id, 200, "text/plain", "ok", 2, "X-Ok: 1\r\n") == LM_OK, "%s", lm_last_error());
    resp_t r = read_response(&c);
    CHECK(r.status == 200 && header_has(&r, "\r\nX-Ok: 1\r\n"), "after bad args: %d [%s]", r.status, str(r.head));
    resp_free(&r);
    hang_up(&c);
    lm_http *any = lm_http_start(&(lm_http_params){.host = "0.0.0.0"});
    CHECK(any && lm_http_port(any) > 0, "bind 0.0.0.0: %s", lm_last_error());
    lm_http_stop(any, 0);
}

/* A client that never reads: writes never block, and past 8 MiB unsent it counts as gone. */
static void test_not_reading(lm_http *h, int port) {
    conn_t c = dial(port);
    send_str(&c, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
    int64_t id = take(h, "/flood");
    CHECK(lm_http_stream_open(h, id, 200, "application/octet-stream", NULL) == LM_OK, "%s", lm_last_error());
    char *mb = malloc(1 << 20);
    memset(mb, 'z', 1 << 20);
    int i;
    double t0 = now_s();
    for (i = 0; i < 256; i++) {
        if (lm_http_stream_write(h, id, mb, 1 << 20) != LM_OK) break;
        sleep_ms(2);
    }
    CHECK(i < 256 && strstr(lm_last_error(), "not reading"), "%d MiB queued to a client that does not read [%s]",
          i, lm_last_error());
    CHECK(now_s() - t0 < 3, "writes blocked");
    free(mb);
    hang_up(&c);
}

/* lm_http_stop with an open stream, an unanswered request and one never taken. */
static void test_stop(lm_http *h, int port) {
    conn_t s = dial(port), u = dial(port), q = dial(port);
    send_str(&s, "GET /s HTTP/1.1\r\nHost: t\r\n\r\n");
    int64_t sid = take(h, "/s");
    CHECK(lm_http_stream_open(h, sid, 200, "text/event-stream", NULL) == LM_OK, "%s", lm_last_error());
    CHECK(lm_http_stream_write(h, sid, "data: a\n\n", 9) == LM_OK, "%s", lm_last_error());
    send_str(&u, "GET /u HTTP/1.1\r\nHost: t\r\n\r\n");
    take(h, "/u");
    send_str(&q, "POST /q HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    sleep_ms(200);  /* queued, never taken */
    double t0 = now_s();
    lm_http_stop(h, 2000);
    CHECK(now_s() - t0 < 1.5, "stop took %.2f s", now_s() - t0);
    resp_t r = read_response(&s);
    CHECK(r.status == 200 && r.complete && r.body && strcmp(r.body, "data: a\n\n") == 0,
          "open stream at stop: %d complete %d [%s]", r.status, r.complete, str(r.body));
    resp_free(&r);
    r = read_response(&u);
    CHECK(r.status == 503 && r.body && strstr(r.body, "shutting_down"), "unanswered at stop: %d [%s]", r.status, str(r.body));
    resp_free(&r);
    r = read_response(&q);
    CHECK(r.status == 503, "queued at stop: %d", r.status);
    resp_free(&r);
    hang_up(&s);
    hang_up(&u);
    hang_up(&q);
}

/* ---- no server ------------------------------------------------------------------------------ */

static void test_utf8(void) {
    static const struct { const char *s; int n; bool ok; const char *what; } cases[] = {
        {"", 0, true, "empty"},
        {"plain ascii", 11, true, "ascii"},
        {"a\0b", 3, true, "NUL inside"},
        {"\xc3\xa9", 2, true, "U+00E9"},
        {"\xe2\x82\xac", 3, true, "U+20AC"},
        {"\xed\x9f\xbf", 3, true, "U+D7FF"},
        {"\xee\x80\x80", 3, true, "U+E000"},
        {"\xf0\x9d\x84\x9e", 4, true, "U+1D11E"},
        {"\xf4\x8f\xbf\xbf", 4, true, "U+10FFFF"},
        {"\xc0\xaf", 2, false, "overlong 2-byte /"},
        {"\xc1\xbf", 2, false, "overlong C1"},
        {"\xe0\x80\xaf", 3, false, "overlong 3-byte"},
        {"\xe0\x9f\xbf", 3, false, "overlong U+07FF"},
        {"\xf0\x80\x80\xaf", 4, false, "overlong 4-byte"},
        {"\xf0\x8f\xbf\xbf", 4, false, "overlong U+FFFF"},
        {"\xed\xa0\x80", 3, false, "surrogate D800"},
        {"\xed\xbf\xbf", 3, false, "surrogate DFFF"},
        {"\xf4\x90\x80\x80", 4, false, "U+110000"},
        {"\xf5\x80\x80\x80", 4, false, "F5 lead"},
        {"\xe2\x82", 2, false, "truncated 3-byte"},
        {"\xf0\x9d\x84", 3, false, "truncated 4-byte"},
        {"ab\xc3", 3, false, "truncated at the end"},
        {"\x80", 1, false, "lone continuation"},
        {"\xe2\x28\xa1", 3, false, "bad continuation"},
        {"\xfe", 1, false, "FE"},
        {"\xff", 1, false, "FF"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        CHECK(lm_utf8_valid(cases[i].s, cases[i].n) == cases[i].ok, "utf8 %s", cases[i].what);
    CHECK(lm_utf8_valid("\xc3\xa9", 1) == false, "length respected");
}

static void test_signal(void) {
    CHECK(!lm_signal_term(), "term before any signal");
    CHECK(lm_signal_watch() == LM_OK, "%s", lm_last_error());
    raise(SIGTERM);
    CHECK(lm_signal_term(), "SIGTERM not seen");
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    test_utf8();
    test_signal();

    A.h = lm_http_start(&(lm_http_params){.host = "127.0.0.1", .port = 0, .timeout_s = 1});
    CHECK(A.h != NULL, "start: %s", lm_last_error());
    if (!A.h) return tu_finish("http");
    int port = lm_http_port(A.h);
    CHECK(port > 0, "port %d", port);
    pthread_t sched;
    pthread_create(&sched, NULL, scheduler, NULL);
    test_get_post(port);
    test_status_headers(port);
    test_stream(port);
    test_413(port);
    test_disconnect_mid_stream(port);
    test_concurrent(port);
    test_slow_client(port);
    test_garbage(port);
    test_bind_in_use(port);
    A.quit = true;
    pthread_join(sched, NULL);
    lm_http_stop(A.h, 1000);

    lm_http *b = lm_http_start(&(lm_http_params){.timeout_s = 1, .max_connections = 8});
    CHECK(b != NULL, "start B: %s", lm_last_error());
    if (b) {
        int pb = lm_http_port(b);
        test_disconnect_waiting(b, pb);
        test_bad_args(b, pb);
        test_not_reading(b, pb);
        test_stop(b, pb);
    }
    return tu_finish("http");
}
