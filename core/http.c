/* The HTTP front end of `lumen serve`. libmicrohttpd (MHD) does all HTTP parsing
 * and framing; this file hands complete requests to one consumer thread (the Lua
 * scheduler) and carries its answers back, whole or as a chunked stream.
 *
 * Threading. MHD runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION).
 * The access handler, once the body is complete, queues the request and blocks on
 * the request's condition variable until the consumer answers; the content reader
 * of a stream blocks the same way until bytes are queued. While blocked they poll
 * the socket every POLL_MS to notice a client that left. We chose this over epoll +
 * suspend/resume because MHD does not watch suspended connections at all: noticing
 * disconnects would need the same polling from a thread of our own, plus the
 * resume/queue ordering rules, for no gain at a few hundred connections.
 * One mutex (h->mu) guards every shared field; MHD functions that may call back into
 * this file (MHD_destroy_response, MHD_stop_daemon) are never called while holding it.
 *
 * Lifetime. A request (struct hreq) is reference-counted: one reference for MHD's
 * side (from the URI callback to the completion callback), one while it sits in the
 * queue or is held by the consumer (until respond/stream_close/stop), and one for a
 * stream's MHD response (released by the response's free callback). Whoever drops
 * the last one frees it, under h->mu.
 *
 * MHD 0.9.75 facts this relies on (checked by spec/c/test_http.c):
 * - a response cannot be queued while upload data is being delivered, so a chunked
 *   body over the limit is read and discarded, then answered with 413;
 * - a handler or reader that blocks longer than the connection timeout gets the
 *   connection closed as idle, unless the timeout is set to 0 while blocking;
 *   setting it back from 0 restarts the idle clock. */
#define _GNU_SOURCE  /* POLLRDHUP */
#include "error.h"

#include <microhttpd.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/tcp.h>  /* struct tcp_info with tcpi_bytes_acked (glibc's lacks it) */

enum {
    POLL_MS = 100,                           /* how often a waiting thread checks its socket */
    STREAM_CAP = 8 << 20,                    /* unsent stream bytes beyond which the client is "gone" */
    MEMORY_LIMIT = 64 << 10,                 /* MHD's per-connection pool: request line + headers */
};
/* Bytes of an over-limit chunked body read and dropped before we give up on answering 413. */
static const uint64_t DISCARD_MAX = 64ull << 20;

typedef struct hreq hreq;
struct hreq {
    lm_http *h;
    int64_t id;
    int refs;
    pthread_cond_t cond;                      /* an answer, stream bytes, a death or abort */
    hreq *all_prev, *all_next;                /* h->all: every live request */
    hreq *next;                               /* h->queue or h->taken */
    struct MHD_Connection *conn;
    int fd;                                   /* the client socket, polled for EOF while waiting */
    char *method, *path, *query, *auth, *ctype, *remote;
    char *body;
    size_t body_len, body_cap;
    uint64_t discarded;                       /* bytes dropped after the body went over the limit */
    bool started;                             /* the access handler saw the headers */
    bool too_large;
    bool complete;                            /* body received; counted in h->n_busy */
    bool handler_done;                        /* the connection thread stopped waiting for an answer */
    bool answered;                            /* respond, stream_open or the 503 of stop */
    bool streaming, s_closed;
    bool dead;                                /* the client left or the connection failed */
    struct MHD_Response *response;            /* handed to the connection thread */
    int status;
    char *sbuf;                               /* unsent stream bytes are sbuf[s_off, s_len) */
    size_t s_off, s_len, s_cap;
    uint64_t s_acked;                         /* the client's acknowledged bytes (TCP_INFO), last seen */
    int64_t s_progress_ms;                    /* when they last grew, or nothing was waiting */
};

struct lm_http {
    struct MHD_Daemon *d;
    int listen_fd;
    int32_t port;
    int64_t max_body;
    unsigned timeout_s;
    pthread_mutex_t mu;
    pthread_cond_t queued;                    /* a request entered the queue */
    pthread_cond_t idle;                      /* n_busy went down */
    hreq *all;
    hreq *q_head, *q_tail;                    /* complete requests lm_http_next has not given out */
    hreq *taken;                              /* given out, not yet finished */
    int64_t next_id;
    int n_busy;                               /* complete requests whose connection has not ended */
    bool stopping, aborting;
    atomic_bool starting;                     /* keep MHD's log messages for lm_http_start's error */
    char start_msg[256];
};

/* ---- small helpers ---------------------------------------------------------------- */

static char *dup_str(const char *s) {
    if (!s) s = "";
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* Absolute CLOCK_MONOTONIC time ms from now (the conds are created with that clock). */
static struct timespec deadline_in(int64_t ms) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += (time_t)(ms / 1000);
    t.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

static int cond_init(pthread_cond_t *c) {
    pthread_condattr_t a;
    if (pthread_condattr_init(&a)) return -1;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

/* True when the peer closed its side or the socket failed. A client that only
 * half-closes after sending its request is treated as gone too, as nginx does. */
static int64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* A stream whose client has acknowledged none of the bytes waiting for it for the idle
 * timeout is not reading (stalled or hostile): it counts as gone, so its sequence stops
 * instead of generating into buffers nobody reads. MHD's own timeout does not see this:
 * the kernel's send buffer takes a long answer whole. Called under h->mu. */
static void check_stalled(lm_http *h, hreq *r) {
    if (!r->streaming || r->dead || r->fd < 0) return;
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(r->fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return;
    bool waiting = r->s_len > r->s_off || ti.tcpi_notsent_bytes > 0 || ti.tcpi_unacked > 0;
    int64_t now = now_ms();
    if (!waiting || ti.tcpi_bytes_acked != r->s_acked || !r->s_progress_ms) {
        r->s_acked = ti.tcpi_bytes_acked;
        r->s_progress_ms = now;
    } else if (now - r->s_progress_ms > (int64_t)h->timeout_s * 1000) {
        r->dead = true;
        pthread_cond_broadcast(&r->cond);
    }
}

static bool peer_gone(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) return true;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* ---- request lifetime (all under h->mu) ------------------------------------------- */

static void unref(hreq *r) {
    if (--r->refs > 0) return;
    lm_http *h = r->h;
    if (r->all_prev) r->all_prev->all_next = r->all_next;
    else h->all = r->all_next;
    if (r->all_next) r->all_next->all_prev = r->all_prev;
    /* Only a whole (buffer) response can be left here: a stream's holds a reference. */
    if (r->response) MHD_destroy_response(r->response);
    pthread_cond_destroy(&r->cond);
    free(r->method);
    free(r->path);
    free(r->query);
    free(r->auth);
    free(r->remote);
    free(r->ctype);
    free(r->body);
    free(r->sbuf);
    free(r);
}

static hreq *find_taken(lm_http *h, int64_t id, hreq ***link) {
    for (hreq **p = &h->taken; *p; p = &(*p)->next)
        if ((*p)->id == id) {
            if (link) *link = p;
            return *p;
        }
    return NULL;
}

/* The consumer is done with r: out of the taken list, its reference dropped. */
static void finish(lm_http *h, int64_t id) {
    hreq **link;
    hreq *r = find_taken(h, id, &link);
    if (!r) return;
    *link = r->next;
    r->next = NULL;
    unref(r);
}

static struct MHD_Response *json_error(const char *message, const char *type, const char *code) {
    char buf[512];
    int n = snprintf(buf, sizeof buf,
                     "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}",
                     message, type, code);
    struct MHD_Response *resp = MHD_create_response_from_buffer((size_t)n, buf, MHD_RESPMEM_MUST_COPY);
    if (resp) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    return resp;
}

static struct MHD_Response *shutting_down(void) {
    return json_error("the server is shutting down", "server_error", "shutting_down");
}

/* ---- MHD callbacks (connection threads) --------------------------------------------- */

/* Called once per request with the raw request target, before headers are parsed:
 * the request object starts here (MHD's documented place for it) so that the query
 * string reaches the consumer exactly as sent. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
    lm_http *h = cls;
    hreq *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    if (cond_init(&r->cond)) {
        free(r);
        return NULL;
    }
    r->h = h;
    r->conn = conn;
    r->fd = -1;
    r->refs = 1;
    const char *q = strchr(uri, '?');
    r->path = q ? dup_n(uri, (size_t)(q - uri)) : dup_str(uri);
    r->query = dup_str(q ? q + 1 : "");
    pthread_mutex_lock(&h->mu);
    r->id = ++h->next_id;
    r->all_next = h->all;
    if (h->all) h->all->all_prev = r;
    h->all = r;
    if (!r->path || !r->query) {  /* counted in h->all so unref unlinks it */
        unref(r);
        r = NULL;
    }
    pthread_mutex_unlock(&h->mu);
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode code) {
    (void)conn;
    lm_http *h = cls;
    hreq *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    pthread_mutex_lock(&h->mu);
    if (code != MHD_REQUEST_TERMINATED_COMPLETED_OK) r->dead = true;
    r->fd = -1;  /* the number may be reused by the next connection */
    if (r->complete) {
        h->n_busy--;
        pthread_cond_broadcast(&h->idle);
    }
    pthread_cond_broadcast(&r->cond);
    unref(r);
    pthread_mutex_unlock(&h->mu);
}

static enum MHD_Result reply_now(struct MHD_Connection *conn, unsigned status, struct MHD_Response *resp) {
    if (!resp) return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result reply_too_large(lm_http *h, hreq *r) {
    char msg[96];
    snprintf(msg, sizeof msg, "request body exceeds the limit of %lld bytes", (long long)h->max_body);
    return reply_now(r->conn, MHD_HTTP_CONTENT_TOO_LARGE, json_error(msg, "invalid_request_error", "body_too_large"));
}

/* The client's address as text ("127.0.0.1", "::1"), for the access log. */
static char *client_address(struct MHD_Connection *conn) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char buf[INET6_ADDRSTRLEN] = "-";
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;
    if (sa && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf, sizeof buf);
    else if (sa && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf, sizeof buf);
    return dup_str(buf);
}

/* First call: the headers are in. Copies what the consumer sees; rejects a declared
 * Content-Length over the limit before any of the body is read. */
static enum MHD_Result begin(lm_http *h, hreq *r, const char *method) {
    r->started = true;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    r->fd = ci ? ci->connect_fd : -1;
    const char *auth = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *ctype = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    r->method = dup_str(method);
    r->auth = dup_str(auth);
    r->ctype = dup_str(ctype);
    r->remote = client_address(r->conn);
    if (!r->method || !r->auth || !r->ctype || !r->remote) return MHD_NO;
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        /* MHD has already rejected a malformed value; this only compares sizes. */
        errno = 0;
        unsigned long long n = strtoull(cl, NULL, 10);
        if (errno == ERANGE || n > (unsigned long long)h->max_body) {
            r->too_large = true;
            return reply_too_large(h, r);
        }
    }
    return MHD_YES;
}

static enum MHD_Result take_body(lm_http *h, hreq *r, const char *data, size_t n) {
    if (!r->too_large && r->body_len + n > (uint64_t)h->max_body) {
        r->too_large = true;
        free(r->body);
        r->body = NULL;
        r->body_len = r->body_cap = 0;
    }
    if (r->too_large) {
        r->discarded += n;
        return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1) cap *= 2;
        if (cap > (uint64_t)h->max_body + 1) cap = (size_t)h->max_body + 1;
        char *b = realloc(r->body, cap);
        if (!b) return MHD_NO;
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return MHD_YES;
}

/* The body is complete: queue the request and wait for the consumer's answer. */
static enum MHD_Result await_answer(lm_http *h, hreq *r) {
    if (!r->body && !(r->body = dup_str(""))) return MHD_NO;
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    pthread_mutex_lock(&h->mu);
    if (!r->complete) {
        r->complete = true;
        h->n_busy++;
        if (h->stopping) {
            r->response = shutting_down();
            r->status = MHD_HTTP_SERVICE_UNAVAILABLE;
            r->answered = true;
        } else {
            r->refs++;  /* the queue's (later the consumer's) reference */
            if (h->q_tail) h->q_tail->next = r;
            else h->q_head = r;
            h->q_tail = r;
            pthread_cond_signal(&h->queued);
        }
    }
    while (!r->answered && !r->dead && !h->aborting) {
        struct timespec t = deadline_in(POLL_MS);
        if (pthread_cond_timedwait(&r->cond, &h->mu, &t) == ETIMEDOUT && !r->answered) {
            pthread_mutex_unlock(&h->mu);
            bool gone = peer_gone(r->fd);
            pthread_mutex_lock(&h->mu);
            if (gone) r->dead = true;
        }
    }
    struct MHD_Response *resp = r->response;
    int status = r->status;
    bool dead = r->dead;
    r->response = NULL;
    r->handler_done = true;
    pthread_mutex_unlock(&h->mu);
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, h->timeout_s);
    enum MHD_Result ret = MHD_NO;
    if (resp) {
        if (!dead) ret = MHD_queue_response(r->conn, (unsigned)status, resp);
        MHD_destroy_response(resp);
    }
    return ret;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                 const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)conn;  /* r->conn, from on_uri */
    (void)url;   /* r->path, as sent */
    (void)version;
    lm_http *h = cls;
    hreq *r = *con_cls;
    if (!r) return MHD_NO;  /* on_uri ran out of memory */
    if (!r->started) return begin(h, r, method);
    if (*upload_size) {
        enum MHD_Result ret = take_body(h, r, upload, *upload_size);
        *upload_size = 0;
        return ret;
    }
    if (r->too_large) return reply_too_large(h, r);
    return await_answer(h, r);
}

/* Content reader of a stream: blocks until bytes are queued, the stream is closed,
 * the client leaves or the server aborts. */
static ssize_t on_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    hreq *r = cls;
    lm_http *h = r->h;
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    pthread_mutex_lock(&h->mu);
    while (r->s_len == r->s_off && !r->s_closed && !r->dead && !h->aborting) {
        struct timespec t = deadline_in(POLL_MS);
        if (pthread_cond_timedwait(&r->cond, &h->mu, &t) == ETIMEDOUT && r->s_len == r->s_off) {
            pthread_mutex_unlock(&h->mu);
            bool gone = peer_gone(r->fd);
            pthread_mutex_lock(&h->mu);
            if (gone) r->dead = true;
        }
    }
    ssize_t n;
    if (r->dead || h->aborting) {
        r->dead = true;
        n = MHD_CONTENT_READER_END_WITH_ERROR;
    } else if (r->s_len > r->s_off) {
        size_t k = r->s_len - r->s_off;
        if (k > max) k = max;
        memcpy(buf, r->sbuf + r->s_off, k);
        r->s_off += k;
        if (r->s_off == r->s_len) r->s_off = r->s_len = 0;
        n = (ssize_t)k;
    } else {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    }
    pthread_mutex_unlock(&h->mu);
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, h->timeout_s);
    return n;
}

static void on_stream_free(void *cls) {
    hreq *r = cls;
    lm_http *h = r->h;
    pthread_mutex_lock(&h->mu);
    unref(r);
    pthread_mutex_unlock(&h->mu);
}

static void on_log(void *cls, const char *fmt, va_list ap) {
    lm_http *h = cls;
    if (!atomic_load(&h->starting)) return;  /* a running server stays quiet; Lua logs */
    vsnprintf(h->start_msg, sizeof h->start_msg, fmt, ap);
    size_t n = strlen(h->start_msg);
    while (n && (h->start_msg[n - 1] == '\n' || h->start_msg[n - 1] == ' ')) h->start_msg[--n] = 0;
}

/* ---- start / stop --------------------------------------------------------------------- */

/* A listening socket of our own, so that a failed bind gets a precise message. */
static int open_listener(const char *host, int32_t port, int32_t *bound_port, bool *ipv6) {
    char service[16];
    snprintf(service, sizeof service, "%d", (int)port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai;
    int rc = getaddrinfo(host, service, &hints, &ai);
    if (rc) {
        lm_err("cannot bind %s:%d: %s", host, (int)port, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, SOMAXCONN)) {
        lm_err("cannot bind %s:%d: %s", host, (int)port, strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *ipv6 = sa.ss_family == AF_INET6;
    *bound_port = ntohs(*ipv6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                 : ((struct sockaddr_in *)&sa)->sin_port);
    return fd;
}

lm_http *lm_http_start(const lm_http_params *p) {
    lm_http_params d = {0};
    if (p) d = *p;
    const char *host = d.host && *d.host ? d.host : "127.0.0.1";
    if (d.port < 0 || d.port > 65535) return lm_err("http: port %d out of range", (int)d.port), NULL;
    lm_http *h = calloc(1, sizeof *h);
    if (!h) return lm_err("http: out of memory"), NULL;
    h->max_body = d.max_body_bytes > 0 ? d.max_body_bytes : 1 << 20;
    h->timeout_s = d.timeout_s > 0 ? (unsigned)d.timeout_s : 30u;
    unsigned max_conn = d.max_connections > 0 ? (unsigned)d.max_connections : 256u;
    pthread_mutex_init(&h->mu, NULL);
    cond_init(&h->queued);
    cond_init(&h->idle);
    bool ipv6;
    h->listen_fd = open_listener(host, d.port, &h->port, &ipv6);
    if (h->listen_fd < 0) goto fail;
    /* poll, not select: descriptors above FD_SETSIZE; ITC: needed by MHD_quiesce_daemon */
    unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG | (ipv6 ? MHD_USE_IPv6 : 0);
    /* MHD gets its own descriptor of the socket: whether it closes the one it was
     * given when start fails is not documented, and a double close is worse than a leak. */
    int mhd_fd = fcntl(h->listen_fd, F_DUPFD_CLOEXEC, 0);
    if (mhd_fd < 0) {
        lm_err("http: dup: %s", strerror(errno));
        close(h->listen_fd);
        goto fail;
    }
    atomic_store(&h->starting, true);
    h->d = MHD_start_daemon(flags, 0, NULL, NULL, on_access, h,
                            MHD_OPTION_EXTERNAL_LOGGER, on_log, h,
                            MHD_OPTION_LISTEN_SOCKET, mhd_fd,
                            MHD_OPTION_CONNECTION_TIMEOUT, h->timeout_s,
                            MHD_OPTION_CONNECTION_LIMIT, max_conn,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)MEMORY_LIMIT,
                            MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_END);
    atomic_store(&h->starting, false);
    if (!h->d) {
        lm_err("cannot start the HTTP server on %s:%d: %s", host, (int)h->port,
               h->start_msg[0] ? h->start_msg : "libmicrohttpd refused");
        close(h->listen_fd);
        goto fail;
    }
    return h;
fail:
    pthread_cond_destroy(&h->queued);
    pthread_cond_destroy(&h->idle);
    pthread_mutex_destroy(&h->mu);
    free(h);
    return NULL;
}

int32_t lm_http_port(const lm_http *h) { return h ? h->port : 0; }

/* At stop, a request the consumer holds or never got: 503 if unanswered, an open
 * stream ends once its bytes are flushed. Drops the list's reference. */
static void drain_one(hreq *r) {
    r->next = NULL;
    if (!r->answered && !r->handler_done && !r->dead) {
        r->response = shutting_down();
        r->status = MHD_HTTP_SERVICE_UNAVAILABLE;
        r->answered = true;
    } else if (r->streaming) {
        r->s_closed = true;
    }
    pthread_cond_broadcast(&r->cond);
    unref(r);
}

void lm_http_stop(lm_http *h, int32_t timeout_ms) {
    if (!h) return;
    /* MHD gives its listening socket back; it must stay open until MHD_stop_daemon. */
    MHD_socket lfd = MHD_quiesce_daemon(h->d);
    pthread_mutex_lock(&h->mu);
    h->stopping = true;
    for (hreq *r = h->q_head, *next; r; r = next) {
        next = r->next;
        drain_one(r);
    }
    h->q_head = h->q_tail = NULL;
    for (hreq *r = h->taken, *next; r; r = next) {
        next = r->next;
        drain_one(r);
    }
    h->taken = NULL;
    struct timespec t = deadline_in(timeout_ms > 0 ? timeout_ms : 0);
    while (h->n_busy > 0 && timeout_ms > 0)
        if (pthread_cond_timedwait(&h->idle, &h->mu, &t) == ETIMEDOUT) break;
    /* Whatever is still waiting gives up now, so that MHD can join its threads. */
    h->aborting = true;
    for (hreq *r = h->all; r; r = r->all_next) pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&h->mu);
    MHD_stop_daemon(h->d);  /* joins every connection thread; completion callbacks free the rest */
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    close(h->listen_fd);
    pthread_cond_destroy(&h->queued);
    pthread_cond_destroy(&h->idle);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

/* ---- the consumer's side ---------------------------------------------------------------- */

int lm_http_next(lm_http *h, lm_http_request *out, int32_t timeout_ms) {
    if (!h || !out) return lm_err("lm_http_next: NULL argument");
    pthread_mutex_lock(&h->mu);
    struct timespec t = deadline_in(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        /* A request whose client left while queued is dropped here, unseen. */
        while (h->q_head && h->q_head->dead) {
            hreq *r = h->q_head;
            h->q_head = r->next;
            if (!h->q_head) h->q_tail = NULL;
            r->next = NULL;
            unref(r);
        }
        if (h->q_head || timeout_ms <= 0 || h->stopping) break;
        if (pthread_cond_timedwait(&h->queued, &h->mu, &t) == ETIMEDOUT) timeout_ms = 0;
    }
    hreq *r = h->q_head;
    if (!r) {
        pthread_mutex_unlock(&h->mu);
        return 0;
    }
    h->q_head = r->next;
    if (!h->q_head) h->q_tail = NULL;
    r->next = h->taken;
    h->taken = r;
    *out = (lm_http_request){
        .id = r->id, .method = r->method, .path = r->path, .query = r->query,
        .authorization = r->auth, .content_type = r->ctype, .body = r->body, .body_len = (int64_t)r->body_len,
        .remote = r->remote,
    };
    pthread_mutex_unlock(&h->mu);
    return 1;
}

/* A consumer that learns its client left drops the work without answering, so the
 * request is finished right here: its memory does not wait for lm_http_stop. */
bool lm_http_alive(lm_http *h, int64_t id) {
    if (!h) return false;
    pthread_mutex_lock(&h->mu);
    hreq *r = find_taken(h, id, NULL);
    if (r) check_stalled(h, r);
    bool alive = r && !r->dead;
    if (r && !alive) finish(h, id);
    pthread_mutex_unlock(&h->mu);
    return alive;
}

/* Adds Content-Type and the caller's "Name: value\r\n" lines to resp. */
static lm_status add_headers(struct MHD_Response *resp, const char *ctype, const char *headers) {
    if (ctype && *ctype) {
        for (const char *c = ctype; *c; c++)
            if ((unsigned char)*c < 0x20 && *c != '\t') return lm_err("http: control character in content type");
        if (MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype) != MHD_YES)
            return lm_err("http: content type '%s' refused", ctype);
    }
    if (!headers || !*headers) return LM_OK;
    char *copy = dup_str(headers);
    if (!copy) return lm_err("http: out of memory");
    lm_status st = LM_OK;
    for (char *line = copy, *next; line && st == LM_OK; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        size_t n = strlen(line);
        while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = 0;
        if (!n) continue;
        char *colon = strchr(line, ':');
        size_t name_len = colon ? (size_t)(colon - line) : 0;
        bool ok = name_len > 0;
        for (size_t i = 0; ok && i < name_len; i++)
            ok = line[i] > 0x20 && line[i] < 0x7f && !strchr("()<>@,;:\\\"/[]?={}", line[i]);
        for (const char *c = line; ok && *c; c++) ok = (unsigned char)*c >= 0x20 || *c == '\t';
        if (!ok) {
            st = lm_err("http: bad header line '%.80s' (want 'Name: value')", line);
            break;
        }
        *colon = 0;
        char *value = colon + 1;
        while (*value == ' ' || *value == '\t') value++;
        if (MHD_add_response_header(resp, line, value) != MHD_YES)
            st = lm_err("http: header '%s' refused by libmicrohttpd", line);
    }
    free(copy);
    return st;
}

/* Checks that id is a request the consumer holds and has not answered yet; takes a
 * reference so r stays valid while the response is built unlocked. */
static hreq *claim(lm_http *h, int64_t id, const char *fn) {
    pthread_mutex_lock(&h->mu);
    hreq *r = find_taken(h, id, NULL);
    if (!r) {
        pthread_mutex_unlock(&h->mu);
        lm_err("%s: request %lld is unknown or finished", fn, (long long)id);
        return NULL;
    }
    if (r->answered) {  /* only an open stream is answered but not finished */
        pthread_mutex_unlock(&h->mu);
        lm_err("%s: request %lld is an open stream (use lm_http_stream_write/close)", fn, (long long)id);
        return NULL;
    }
    if (r->dead || r->handler_done) {
        finish(h, id);
        pthread_mutex_unlock(&h->mu);
        lm_err("%s: client disconnected", fn);
        return NULL;
    }
    r->refs++;
    pthread_mutex_unlock(&h->mu);
    return r;
}

/* Hands resp to r's connection thread unless the client left meanwhile. Drops claim's reference. */
static lm_status hand_over(lm_http *h, hreq *r, struct MHD_Response *resp, int32_t status, bool stream,
                           const char *fn) {
    pthread_mutex_lock(&h->mu);
    bool ok = !r->dead && !r->handler_done;
    if (ok) {
        r->response = resp;
        r->status = status;
        r->answered = true;
        r->streaming = stream;
        pthread_cond_broadcast(&r->cond);
    }
    if (!ok || !stream) finish(h, r->id);
    unref(r);
    pthread_mutex_unlock(&h->mu);
    if (ok) return LM_OK;
    MHD_destroy_response(resp);  /* unlocked: a stream's free callback takes the lock */
    return lm_err("%s: client disconnected", fn);
}

static lm_status check_status(int32_t status, const char *fn) {
    if (status < 200 || status > 599) return lm_err("%s: HTTP status %d out of range 200..599", fn, (int)status);
    return LM_OK;
}

lm_status lm_http_respond(lm_http *h, int64_t id, int32_t status, const char *content_type, const char *body,
                          int64_t len, const char *headers) {
    const char *fn = "lm_http_respond";
    if (!h) return lm_err("%s: NULL server", fn);
    if (check_status(status, fn)) return LM_ERR;
    if (len < 0 || (len > 0 && !body)) return lm_err("%s: bad body (len %lld)", fn, (long long)len);
    hreq *r = claim(h, id, fn);
    if (!r) return LM_ERR;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer((size_t)len, (void *)(len ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (!resp || add_headers(resp, content_type, headers)) {
        if (!resp) lm_err("%s: out of memory", fn);
        else MHD_destroy_response(resp);
        pthread_mutex_lock(&h->mu);
        unref(r);  /* the request stays open: the caller may still answer, e.g. with 500 */
        pthread_mutex_unlock(&h->mu);
        return LM_ERR;
    }
    return hand_over(h, r, resp, status, false, fn);
}

lm_status lm_http_stream_open(lm_http *h, int64_t id, int32_t status, const char *content_type,
                              const char *headers) {
    const char *fn = "lm_http_stream_open";
    if (!h) return lm_err("%s: NULL server", fn);
    if (check_status(status, fn)) return LM_ERR;
    hreq *r = claim(h, id, fn);
    if (!r) return LM_ERR;
    pthread_mutex_lock(&h->mu);
    r->refs++;  /* the stream response's, dropped by on_stream_free */
    pthread_mutex_unlock(&h->mu);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 << 10, on_stream_read, r, on_stream_free);
    if (!resp) {
        pthread_mutex_lock(&h->mu);
        unref(r);
        unref(r);
        pthread_mutex_unlock(&h->mu);
        return lm_err("%s: out of memory", fn);
    }
    if (add_headers(resp, content_type, headers)) {
        MHD_destroy_response(resp);
        pthread_mutex_lock(&h->mu);
        unref(r);
        pthread_mutex_unlock(&h->mu);
        return LM_ERR;
    }
    return hand_over(h, r, resp, status, true, fn);
}

/* The taken request id with an open stream (h->mu held), or NULL with *st set. */
static hreq *open_stream(lm_http *h, int64_t id, const char *fn, lm_status *st) {
    hreq *r = find_taken(h, id, NULL);
    if (!r) *st = lm_err("%s: request %lld is unknown or finished", fn, (long long)id);
    else if (!r->streaming) *st = lm_err("%s: request %lld has no open stream", fn, (long long)id);
    return r && r->streaming ? r : NULL;
}

lm_status lm_http_stream_write(lm_http *h, int64_t id, const char *data, int64_t len) {
    const char *fn = "lm_http_stream_write";
    if (!h) return lm_err("%s: NULL server", fn);
    if (len < 0 || (len > 0 && !data)) return lm_err("%s: bad data (len %lld)", fn, (long long)len);
    pthread_mutex_lock(&h->mu);
    lm_status st = LM_OK;
    hreq *r = open_stream(h, id, fn, &st);
    if (!r) {
        pthread_mutex_unlock(&h->mu);
        return st;
    }
    check_stalled(h, r);
    if (r->dead) {
        finish(h, id);
        st = lm_err("%s: client disconnected", fn);
    } else if ((uint64_t)(r->s_len - r->s_off) + (uint64_t)len > STREAM_CAP) {
        /* A client this far behind is not reading: drop it rather than buffer without bound. */
        r->dead = true;
        pthread_cond_broadcast(&r->cond);
        finish(h, id);
        st = lm_err("%s: client disconnected (not reading: %d MiB unsent)", fn, STREAM_CAP >> 20);
    } else if (len > 0) {
        if (r->s_off && r->s_len + (size_t)len > r->s_cap) {
            memmove(r->sbuf, r->sbuf + r->s_off, r->s_len - r->s_off);
            r->s_len -= r->s_off;
            r->s_off = 0;
        }
        if (r->s_len + (size_t)len > r->s_cap) {
            size_t cap = r->s_cap ? r->s_cap : 4096;
            while (cap < r->s_len + (size_t)len) cap *= 2;
            char *b = realloc(r->sbuf, cap);
            if (!b) {
                pthread_mutex_unlock(&h->mu);
                return lm_err("%s: out of memory", fn);
            }
            r->sbuf = b;
            r->s_cap = cap;
        }
        memcpy(r->sbuf + r->s_len, data, (size_t)len);
        r->s_len += (size_t)len;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&h->mu);
    return st;
}

lm_status lm_http_stream_close(lm_http *h, int64_t id) {
    const char *fn = "lm_http_stream_close";
    if (!h) return lm_err("%s: NULL server", fn);
    pthread_mutex_lock(&h->mu);
    lm_status st = LM_OK;
    hreq *r = open_stream(h, id, fn, &st);
    if (r) {
        if (r->dead) st = lm_err("%s: client disconnected", fn);
        r->s_closed = true;
        pthread_cond_broadcast(&r->cond);
        finish(h, id);
    }
    pthread_mutex_unlock(&h->mu);
    return st;
}

/* ---- signals and UTF-8 -------------------------------------------------------------------- */

/* The one piece of global mutable state: written by the signal handler only. */
static volatile sig_atomic_t g_term;

static void on_term(int sig) {
    (void)sig;
    g_term = 1;
}

lm_status lm_signal_watch(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    /* SA_RESETHAND: a second Ctrl-C during a slow drain kills the process as usual. */
    sa.sa_flags = SA_RESTART | SA_RESETHAND;
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL))
        return lm_err("lm_signal_watch: sigaction: %s", strerror(errno));
    return LM_OK;
}

bool lm_signal_term(void) { return g_term != 0; }
