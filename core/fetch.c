/* HTTP(S) downloads with libcurl, resumable with Range requests (`lumen pull`).
 *
 * The bytes go to a partial file that a later run continues: a model is 100 MB to
 * several GB, and a dropped connection should cost only what was not yet received.
 * The file is hashed as it grows (the bytes already there are hashed once at the
 * start), so the caller checks the pin without reading the file again. The server's
 * ETag (or Last-Modified) of the file is kept in PARTIAL.etag and sent as If-Range
 * when continuing: a file changed upstream comes whole (200) instead of being spliced
 * onto old bytes, which matters most for a URL without a pin. Moving the
 * file into place is the caller's, after that check: nothing here decides that a
 * download is good. */
#include "lumen.h"
#include "error.h"
#include "sha256.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *url, *path;
    const lm_fetch_params *p;
    int fd;
    lm_sha256_ctx sha;
    int64_t bytes;          /* in the file, all hashed */
    int64_t resumed_from;   /* bytes of an earlier run that this one kept */
    int64_t expected, total;
    bool restarted;
    /* the response whose headers came last (a redirect's come before the file's) */
    int status;
    char reason[64];
    int64_t cr_start, cr_total, content_length;
    bool body_started;
    /* how the transfer ended, besides curl's code */
    bool failed;            /* our own error; the message is set */
    bool restart;           /* begin again from zero: the server's range does not fit */
    bool cancelled;
    double t0, last_report;
    /* If-Range: the validator of the bytes kept, and the one of the response */
    char validator_path[4096];
    char if_range[256];
    char etag[256], last_modified[128];
} fetch_state;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static const char *status_reason(int status) {
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 410: return "Gone";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
    }
}

static lm_status http_error(fetch_state *st, int status) {
    const char *reason = st->status == status && st->reason[0] ? st->reason : status_reason(status);
    const char *hint = status == 401 || status == 403 ? " (a private or gated file: lumen pull sends no credentials)"
                     : status >= 500 ? " (a server error: try again later)" : "";
    st->failed = true;
    return lm_err("%s: the server answered HTTP %d%s%s%s", st->url, status, *reason ? " " : "", reason, hint);
}

/* Empties the file: the download begins again from its first byte. */
static lm_status start_over(fetch_state *st) {
    if (ftruncate(st->fd, 0) != 0) {
        st->failed = true;
        return lm_err("cannot truncate '%s': %s", st->path, strerror(errno));
    }
    lm_sha256_init(&st->sha);
    st->bytes = 0;
    st->resumed_from = 0;
    st->restarted = true;
    return LM_OK;
}

/* A header value, or "" when it does not fit (a cut validator would never match). */
static void copy_value(char *dst, size_t cap, const char *v) {
    size_t n = strlen(v);
    if (n >= cap) n = 0;
    memcpy(dst, v, n);
    dst[n] = 0;
}

static size_t on_header(char *buf, size_t size, size_t n, void *ud) {
    fetch_state *st = ud;
    size_t len = size * n;
    char line[512];
    size_t m = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, buf, m);
    line[m] = 0;
    while (m && (line[m - 1] == '\r' || line[m - 1] == '\n')) line[--m] = 0;
    if (strncmp(line, "HTTP/", 5) == 0) {
        /* "HTTP/1.1 206 Partial Content", "HTTP/2 200": a new response begins */
        const char *sp = strchr(line, ' ');
        const char *r = sp ? strchr(sp + 1, ' ') : NULL;
        st->status = sp ? atoi(sp + 1) : 0;
        snprintf(st->reason, sizeof st->reason, "%s", r ? r + 1 : "");
        st->cr_start = st->cr_total = st->content_length = -1;
        st->etag[0] = st->last_modified[0] = 0;
        st->body_started = false;
    } else if (strncasecmp(line, "content-range:", 14) == 0) {
        const char *v = line + 14;
        long long a, b, t;
        while (*v == ' ' || *v == '\t') v++;
        if (sscanf(v, "bytes %lld-%lld/%lld", &a, &b, &t) == 3) { st->cr_start = a; st->cr_total = t; }
        else if (sscanf(v, "bytes %lld-%lld", &a, &b) == 2) st->cr_start = a;
        else if (sscanf(v, "bytes */%lld", &t) == 1) st->cr_total = t;
    } else if (strncasecmp(line, "etag:", 5) == 0) {
        const char *v = line + 5;
        while (*v == ' ' || *v == '\t') v++;
        if (strncmp(v, "W/", 2) != 0) copy_value(st->etag, sizeof st->etag, v);  /* If-Range takes strong ones only */
    } else if (strncasecmp(line, "last-modified:", 14) == 0) {
        const char *v = line + 14;
        while (*v == ' ' || *v == '\t') v++;
        copy_value(st->last_modified, sizeof st->last_modified, v);
    } else if (strncasecmp(line, "content-length:", 15) == 0) {
        st->content_length = strtoll(line + 15, NULL, 10);
    }
    return len;
}

/* Remembers what identifies the file now being written, for If-Range next time. */
static void save_validator(fetch_state *st) {
    const char *v = st->etag[0] ? st->etag : st->last_modified;
    if (!*v) { unlink(st->validator_path); return; }
    FILE *f = fopen(st->validator_path, "w");
    if (!f) return;  /* then the next run asks without If-Range, as for an older partial file */
    fprintf(f, "%s\n", v);
    fclose(f);
}

static void load_validator(fetch_state *st) {
    st->if_range[0] = 0;
    FILE *f = fopen(st->validator_path, "r");
    if (!f) return;
    if (!fgets(st->if_range, sizeof st->if_range, f)) st->if_range[0] = 0;
    fclose(f);
    st->if_range[strcspn(st->if_range, "\r\n")] = 0;
}

/* The first body byte of the final response: decide what the bytes are. */
static lm_status begin_body(fetch_state *st) {
    if (st->status == 200) {
        /* the whole file: the server ignored the Range request (or none was sent) */
        if (st->bytes > 0 && start_over(st) != LM_OK) return LM_ERR;
        st->total = st->content_length;
        save_validator(st);
    } else if (st->status == 206) {
        if (st->cr_start != st->bytes) {
            st->restart = true;
            return lm_err("%s: asked for bytes from %lld, the server sent them from %lld", st->url,
                          (long long)st->bytes, (long long)st->cr_start);
        }
        st->total = st->cr_total;
    } else if (st->status == 416) {
        return LM_OK;  /* its body is discarded; decided after the transfer */
    } else {
        return http_error(st, st->status);
    }
    if (st->expected > 0 && st->total >= 0 && st->total != st->expected) {
        st->failed = true;
        return lm_err("%s: the server has a file of %lld bytes, but %lld are expected", st->url,
                      (long long)st->total, (long long)st->expected);
    }
    return LM_OK;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud) {
    fetch_state *st = ud;
    size_t len = size * n;
    if (st->status >= 300 && st->status < 400) return len;  /* a redirect's own body */
    if (!st->body_started) {
        st->body_started = true;
        if (begin_body(st) != LM_OK) return 0;
    }
    if (st->status == 416) return len;
    if (st->expected > 0 && st->bytes + (int64_t)len > st->expected) {
        st->failed = true;
        lm_err("%s: the server sends more than the %lld bytes expected", st->url, (long long)st->expected);
        return 0;
    }
    for (size_t off = 0; off < len;) {
        ssize_t w = pwrite(st->fd, buf + off, len - off, (off_t)(st->bytes + (int64_t)off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            st->failed = true;
            lm_err("cannot write '%s': %s", st->path, w < 0 ? strerror(errno) : "no space");
            return 0;
        }
        off += (size_t)w;
    }
    lm_sha256_update(&st->sha, buf, len);
    st->bytes += (int64_t)len;
    return len;
}

static int report(fetch_state *st) {
    if (!st->p->progress) return 0;
    lm_fetch_progress pr = {st->bytes, st->expected > 0 ? st->expected : st->total, st->resumed_from,
                            now_s() - st->t0};
    if (st->p->progress(&pr, st->p->ctx) != 0) st->cancelled = true;
    return st->cancelled;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
    (void)dltotal; (void)dlnow; (void)ultotal; (void)ulnow;
    fetch_state *st = ud;
    double interval = st->p->progress_interval_s > 0 ? st->p->progress_interval_s : 0.25;
    double t = now_s();
    if (t - st->last_report < interval) return 0;
    st->last_report = t;
    return report(st);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_code;
static void curl_init(void) { curl_init_code = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* One request (with Range when bytes are there); st->restart asks the caller for another from zero. */
static lm_status transfer(fetch_state *st) {
    const lm_fetch_params *p = st->p;
    CURL *c = curl_easy_init();
    if (!c) return lm_err("%s: cannot start libcurl", st->url);
    char errbuf[CURL_ERROR_SIZE] = "", range[32], agent[32], if_range[300];
    struct curl_slist *headers = NULL;
    st->status = 0;
    st->reason[0] = 0;
    st->body_started = st->failed = st->restart = st->cancelled = false;
    st->total = st->expected > 0 ? st->expected : -1;
    snprintf(agent, sizeof agent, "lumen/%s", lm_version());
    curl_easy_setopt(c, CURLOPT_URL, st->url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)(p->connect_timeout_s > 0 ? p->connect_timeout_s : 30));
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)(p->low_speed_time_s > 0 ? p->low_speed_time_s : 60));
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, (long)(p->low_speed_bytes > 0 ? p->low_speed_bytes : 1024));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_USERAGENT, agent);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, st);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, st);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, st);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    if (st->bytes > 0) {
        /* CURLOPT_RANGE, not RESUME_FROM: curl would fail on a 200; we start over instead */
        snprintf(range, sizeof range, "%lld-", (long long)st->bytes);
        curl_easy_setopt(c, CURLOPT_RANGE, range);
        load_validator(st);
        if (st->if_range[0]) {
            snprintf(if_range, sizeof if_range, "If-Range: %s", st->if_range);
            headers = curl_slist_append(NULL, if_range);
            curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
        }
    }
    st->t0 = st->last_report = now_s();
    CURLcode res = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);

    if (st->restart && st->bytes > 0) return LM_OK;
    if (st->failed || st->restart) return LM_ERR;
    if (st->cancelled) return lm_err("%s: cancelled", st->url);
    if (res != CURLE_OK)
        return lm_err("%s: %s", st->url, errbuf[0] ? errbuf : curl_easy_strerror(res));
    if (code == 416) {
        if (st->bytes > 0 && st->cr_total == st->bytes) return LM_OK;  /* it was all there */
        if (st->bytes > 0) { st->restart = true; return LM_OK; }
        return http_error(st, 416);
    }
    if (code != 200 && code != 206) return http_error(st, (int)code);
    if (!st->body_started && begin_body(st) != LM_OK) return LM_ERR;  /* an empty body */
    if (st->total >= 0 && st->bytes != st->total)
        return lm_err("%s: the transfer ended after %lld of %lld bytes", st->url, (long long)st->bytes,
                      (long long)st->total);
    if (st->expected > 0 && st->bytes != st->expected)
        return lm_err("%s: the file has %lld bytes, but %lld are expected", st->url, (long long)st->bytes,
                      (long long)st->expected);
    return LM_OK;
}

static lm_status make_parent_dirs(const char *path) {
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) return lm_err("path too long: '%s'", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return LM_OK;
    *slash = 0;
    for (char *s = dir + 1;; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(dir, 0755) != 0 && errno != EEXIST) return lm_err("cannot create '%s': %s", dir, strerror(errno));
            *s = c;
            if (!c) break;
        }
    }
    return LM_OK;
}

/* Hashes what an earlier run left, so the digest covers the whole file at the end. */
static lm_status hash_prefix(fetch_state *st) {
    size_t cap = 1 << 20;
    char *buf = malloc(cap);
    if (!buf) return lm_err("out of memory");
    for (int64_t off = 0; off < st->bytes;) {
        size_t want = st->bytes - off < (int64_t)cap ? (size_t)(st->bytes - off) : cap;
        ssize_t r = pread(st->fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            return lm_err("cannot read '%s': %s", st->path, r < 0 ? strerror(errno) : "it shrank");
        }
        lm_sha256_update(&st->sha, buf, (size_t)r);
        off += r;
    }
    free(buf);
    return LM_OK;
}

lm_status lm_fetch_file(const char *url, const char *partial_path, const lm_fetch_params *params,
                        lm_fetch_result *out) {
    if (!url || !partial_path || !out) return lm_err("lm_fetch_file: url, partial_path or out is NULL");
    memset(out, 0, sizeof *out);
    if (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)
        return lm_err("'%s': only http:// and https:// URLs can be fetched", url);
    pthread_once(&curl_once, curl_init);
    if (curl_init_code != CURLE_OK) return lm_err("libcurl: %s", curl_easy_strerror(curl_init_code));
    if (make_parent_dirs(partial_path) != LM_OK) return LM_ERR;
    int fd = open(partial_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return lm_err("cannot open '%s': %s", partial_path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        close(fd);
        return lm_err("'%s': another download is writing it", partial_path);
    }
    lm_fetch_params defaults = {0};
    fetch_state st = {.url = url, .path = partial_path, .p = params ? params : &defaults, .fd = fd};
    st.expected = st.p->expected_size > 0 ? st.p->expected_size : -1;
    snprintf(st.validator_path, sizeof st.validator_path, "%s.etag", partial_path);
    lm_sha256_init(&st.sha);
    struct stat sb;
    lm_status rc = LM_OK;
    if (fstat(fd, &sb) != 0) rc = lm_err("cannot stat '%s': %s", partial_path, strerror(errno));
    if (rc == LM_OK) {
        st.bytes = sb.st_size;
        if (st.expected > 0 && st.bytes > st.expected) rc = start_over(&st);  /* not the file we want */
    }
    if (rc == LM_OK) rc = hash_prefix(&st);
    st.resumed_from = st.bytes;
    if (rc == LM_OK && !(st.expected > 0 && st.bytes == st.expected)) {
        rc = transfer(&st);
        if (rc == LM_OK && st.restart) {
            /* once: a server whose ranges do not fit a second time is not worth a loop */
            rc = start_over(&st);
            if (rc == LM_OK) rc = transfer(&st);
            if (rc == LM_OK && st.restart) rc = lm_err("%s: the server's answers to Range requests do not fit the file", url);
        }
        out->http_status = st.status == 416 ? 0 : (int32_t)st.status;  /* 416: it was all there */
    }
    if (rc == LM_OK) report(&st);
    if (rc == LM_OK && fsync(fd) != 0) rc = lm_err("cannot write '%s': %s", partial_path, strerror(errno));
    if (rc == LM_OK || st.bytes == 0) unlink(st.validator_path);
    if (rc != LM_OK && st.bytes == 0) unlink(partial_path);  /* nothing to continue from: no litter */
    close(fd);
    if (rc != LM_OK) {
        if (st.bytes > 0) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", lm_last_error());
            lm_err("%s; the %lld bytes received are kept in '%s' and the next run continues from there", msg,
                   (long long)st.bytes, partial_path);
        }
        return LM_ERR;
    }
    out->size = st.bytes;
    out->resumed_from = st.resumed_from;
    out->restarted = st.restarted;
    lm_sha256_final_hex(&st.sha, out->sha256);
    return LM_OK;
}
