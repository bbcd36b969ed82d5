/* uri.c - store URIs: scheme, mqstore's options, password masking. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* A growable string, enough for building URIs. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (mqs__grow(&b->p, &b->cap, b->n + n + 1, 1, 64)) {
        b->oom = true;
        return;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_add(sbuf *b, const char *s) { sb_addn(b, s, strlen(s)); }

int mqs__uri_scheme(const char *uri, char *buf, size_t buflen)
{
    if (!uri)
        return MQS_EINVAL;
    size_t i = 0;
    if (!isalpha((unsigned char)uri[0]))
        return MQS_EINVAL;
    while (uri[i] && uri[i] != ':') {
        unsigned char c = (unsigned char)uri[i];
        if (!isalnum(c) && c != '+' && c != '-' && c != '.')
            return MQS_EINVAL;
        if (i + 1 >= buflen)
            return MQS_EINVAL;
        buf[i] = (char)tolower(c);
        i++;
    }
    if (uri[i] != ':')
        return MQS_EINVAL;
    buf[i] = '\0';
    return 0;
}

/* A query key that names a secret: password=, sslpassword=, passcode=,
 * pwd=, secret=, token=..., compared after percent-decoding (libpq decodes
 * keys, so `pass%77ord=` is a password too). */
static bool secret_key(const char *k, size_t n)
{
    char key[64];
    size_t m = 0;
    for (size_t i = 0; i < n && m + 1 < sizeof key; i++) {
        if (k[i] == '%' && i + 2 < n && isxdigit((unsigned char)k[i + 1]) &&
            isxdigit((unsigned char)k[i + 2])) {
            char hex[3] = {k[i + 1], k[i + 2], '\0'};
            key[m++] = (char)tolower((int)strtol(hex, NULL, 16));
            i += 2;
        } else {
            key[m++] = (char)tolower((unsigned char)k[i]);
        }
    }
    key[m] = '\0';
    static const char *const words[] = {"pass", "pwd", "secret", "token"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strstr(key, words[i]))
            return true;
    return false;
}

/* Where the password of uri sits: [*from, *to), or false when none.
 * Normally the userinfo ends at the last '@' before the first '/', '?' or
 * '#' after "://". A password holding an unencoded '/', '?' or '#' cuts
 * that short, leaving its tail and the '@' further on: then everything
 * from the first ':' after "://" to the last '@' of the whole URI is
 * taken as the password (more than needed, never less), and *ambiguous
 * is set so that opening refuses the URI. */
static bool find_password(const char *uri, const char **from, const char **to,
                          bool *ambiguous)
{
    *ambiguous = false;
    const char *a = strstr(uri, "://");
    if (!a)
        return false;
    a += 3;
    const char *end = a + strcspn(a, "/?#");
    const char *at = NULL;
    for (const char *p = a; p < end; p++)
        if (*p == '@')
            at = p;
    if (!at) {
        const char *colon = memchr(a, ':', (size_t)(end - a));
        const char *last = strrchr(end, '@');
        if (!colon || !last)
            return false;
        *ambiguous = true;
        *from = colon + 1;
        *to = last;
        return true;
    }
    const char *colon = memchr(a, ':', (size_t)(at - a));
    if (!colon)
        return false;
    *from = colon + 1;
    *to = at;
    return true;
}

bool mqs__uri_ambiguous_password(const char *uri)
{
    const char *f, *t;
    bool amb;
    return find_password(uri, &f, &t, &amb) && amb;
}

/* Masked copy: the password (see find_password) and the value of every
 * secret query key become "***". Returns NULL on OOM. */
static char *mask_dup(const char *uri)
{
    sbuf b = {0};
    const char *from, *to;
    bool amb;
    const char *rest = uri;
    if (find_password(uri, &from, &to, &amb)) {
        sb_addn(&b, uri, (size_t)(from - uri));
        sb_add(&b, "***");
        rest = to;
    }
    const char *q = strchr(rest, '?');
    sb_addn(&b, rest, q ? (size_t)(q - rest) : strlen(rest));
    if (q) {
        const char *p = q + 1;
        sb_add(&b, "?");
        bool first = true;
        while (*p) {
            const char *amp = strchr(p, '&');
            size_t len = amp ? (size_t)(amp - p) : strlen(p);
            const char *eq = memchr(p, '=', len);
            if (!first)
                sb_add(&b, "&");
            first = false;
            if (eq && secret_key(p, (size_t)(eq - p))) {
                sb_addn(&b, p, (size_t)(eq - p) + 1);
                sb_add(&b, "***");
            } else {
                sb_addn(&b, p, len);
            }
            p += len;
            if (*p == '&')
                p++;
        }
    }
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (!b.p)
        return mqs__strdup("");
    return b.p;
}

/* snprintf(buf, buflen, "%s", str) for the URI functions: the length str
 * needs. */
static size_t copy_out(char *buf, size_t buflen, const char *str)
{
    size_t n = strlen(str);
    if (buflen) {
        size_t c = n < buflen - 1 ? n : buflen - 1;
        memcpy(buf, str, c);
        buf[c] = '\0';
    }
    return n;
}

size_t mqs_uri_mask(const char *uri, char *buf, size_t buflen)
{
    if (!uri)
        uri = "";
    char *m = mask_dup(uri);
    size_t n = copy_out(buf, buflen, m ? m : "");
    free(m);
    return m ? n : 0;
}

/* Percent-decode src[0..n) into a new string. */
static char *pct_decode(const char *src, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '%' && i + 2 < n &&
            isxdigit((unsigned char)src[i + 1]) &&
            isxdigit((unsigned char)src[i + 2])) {
            char hex[3] = {src[i + 1], src[i + 2], 0};
            d[j++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            d[j++] = src[i];
        }
    }
    d[j] = '\0';
    return d;
}

size_t mqs_uri_cluster(const char *uri, char *buf, size_t buflen)
{
    char scheme[64];
    const char *name = "default";
    char *found = NULL;
    if (!uri || mqs__uri_scheme(uri, scheme, sizeof scheme)) {
        copy_out(buf, buflen, "");
        return 0;
    }
    /* Keys are decoded as opening decodes them (parse_query), so
     * `clus%74er=` names the cluster here too. The last one wins here;
     * opening refuses a URI with two. */
    const char *q = strchr(uri, '?');
    for (const char *p = q ? q + 1 : NULL; p && *p;) {
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        char *key = eq ? pct_decode(p, (size_t)(eq - p)) : NULL;
        if (key && !strcmp(key, "cluster")) {
            free(found);
            found = pct_decode(eq + 1, len - (size_t)(eq - p) - 1);
        }
        free(key);
        p += len + (p[len] == '&');
    }
    if (found && *found)
        name = found;
    size_t n = copy_out(buf, buflen, name);
    free(found);
    return n;
}

/* ---- the URI taken apart for the backend (mqs_be_uri) ----
 *
 * Hand-written rather than liburiparser: a store URI's authority may list
 * several hosts ("h1:5432,h2:5433", libpq's and JDBC's failover form),
 * which RFC 3986 (and so liburiparser) reads as one host with an invalid
 * port. The grammar is otherwise RFC 3986's generic one, small enough to
 * take apart here, once, for every backend. */

/* Strict percent-decoding of src[0..n) into a new string for the parts:
 * a '%' must start two hex digits and may not encode NUL. NULL with *bad
 * pointing at the bad escape, or with *bad NULL on OOM. */
static char *pct_decode_strict(const char *src, size_t n, const char **bad)
{
    *bad = NULL;
    for (size_t i = 0; i < n; i++)
        if (src[i] == '%' &&
            (i + 2 >= n || !isxdigit((unsigned char)src[i + 1]) ||
             !isxdigit((unsigned char)src[i + 2]) ||
             (src[i + 1] == '0' && src[i + 2] == '0'))) {
            *bad = src + i;
            return NULL;
        }
    return pct_decode(src, n);
}

/* Decode src[0..n) into *out for part `what`; 0 or an error naming it. */
static int part_decode(const char *masked, const char *what, const char *src,
                       size_t n, char **out)
{
    const char *bad;
    *out = pct_decode_strict(src, n, &bad);
    if (*out)
        return 0;
    if (!bad)
        return mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    /* The escape itself is not shown: it may sit in the password. */
    return mqs__err(NULL, MQS_EINVAL,
                    "URI %s: bad percent-escape in the %s: '%%' must be "
                    "followed by two hex digits (and %%00 is not allowed); "
                    "write a literal '%%' as %%25",
                    masked, what);
}

/* One "host[:port]" or "[v6][:port]" of the authority into h. */
static int split_host(const char *masked, const char *p, size_t n, size_t i,
                      mqs_be_host *h)
{
    const char *port = NULL;
    size_t hlen = n, hoff = 0;
    if (n && p[0] == '[') {
        const char *rb = memchr(p, ']', n);
        if (!rb)
            return mqs__err(NULL, MQS_EINVAL,
                            "URI %s: host %zu starts with '[' but has no "
                            "']': write an IPv6 address as [::1]:5432",
                            masked, i + 1);
        hoff = 1;
        hlen = (size_t)(rb - p) - 1;
        if (rb + 1 < p + n) {
            if (rb[1] != ':')
                return mqs__err(NULL, MQS_EINVAL,
                                "URI %s: host %zu: only ':port' may follow "
                                "']'",
                                masked, i + 1);
            port = rb + 2;
        }
    } else {
        const char *c = memchr(p, ':', n);
        if (c) {
            hlen = (size_t)(c - p);
            port = c + 1;
        }
    }
    if (hlen == 0)
        return mqs__err(NULL, MQS_EINVAL,
                        "URI %s: host %zu is empty: write host[:port], "
                        "separated by ','",
                        masked, i + 1);
    char *host = NULL;
    int rc = part_decode(masked, "host", p + hoff, hlen, &host);
    if (rc)
        return rc;
    h->host = host;
    if (port) {
        size_t plen = (size_t)(p + n - port);
        long v = 0;
        for (size_t k = 0; k < plen && v <= 65535; k++)
            v = isdigit((unsigned char)port[k]) ? v * 10 + (port[k] - '0')
                                                 : 99999;
        if (plen == 0 || plen > 5 || v < 1 || v > 65535)
            return mqs__err(NULL, MQS_EINVAL,
                            "URI %s: the port of host %zu ('%.*s') is not a "
                            "number from 1 to 65535",
                            masked, i + 1, (int)(plen > 16 ? 16 : plen), port);
        char *ps = malloc(plen + 1);
        if (!ps)
            return mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
        memcpy(ps, port, plen);
        ps[plen] = '\0';
        h->port = ps;
    }
    return 0;
}

/* The authority auth[0..n): userinfo and host list into out. */
static int split_authority(mqs_parsed_uri *out, const char *auth, size_t n)
{
    const char *at = NULL;
    for (const char *p = auth; p < auth + n; p++)
        if (*p == '@')
            at = p;
    int rc = 0;
    const char *hl = auth;
    if (at) {
        size_t ulen = (size_t)(at - auth);
        const char *colon = memchr(auth, ':', ulen);
        size_t nlen = colon ? (size_t)(colon - auth) : ulen;
        rc = part_decode(out->masked, "user name", auth, nlen, &out->user);
        if (rc == 0 && colon) {
            size_t plen = ulen - nlen - 1;
            rc = part_decode(out->masked, "password", colon + 1, plen,
                             &out->password);
            if (rc == 0 && !(out->pw_raw = malloc(plen + 1)))
                rc = mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
            if (rc == 0) {
                memcpy(out->pw_raw, colon + 1, plen);
                out->pw_raw[plen] = '\0';
            }
        }
        hl = at + 1;
    }
    size_t hn = (size_t)(auth + n - hl), count = hn ? 1 : 0;
    for (size_t i = 0; i < hn; i++)
        count += hl[i] == ',';
    if (rc == 0 && count) {
        out->hosts = calloc(count, sizeof *out->hosts);
        if (!out->hosts)
            return mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
        out->parts.nhosts = count;
        const char *p = hl;
        for (size_t i = 0; i < count && rc == 0; i++) {
            const char *e = memchr(p, ',', (size_t)(hl + hn - p));
            size_t len = e ? (size_t)(e - p) : (size_t)(hl + hn - p);
            rc = split_host(out->masked, p, len, i, &out->hosts[i]);
            p += len + 1;
        }
    }
    return rc;
}

/* Fill out->parts from uri (everything but the options, added by the
 * caller as it reads the query). */
static int split_parts(const char *uri, mqs_parsed_uri *out)
{
    if (strchr(uri, '#'))
        return mqs__err(NULL, MQS_EINVAL,
                        "URI %s: '#' starts a fragment, which a store URI "
                        "does not have: percent-encode a '#' in a name or "
                        "password as %%23",
                        out->masked);
    const char *hier = strchr(uri, ':') + 1; /* the scheme was checked */
    const char *q = strchr(hier, '?');
    const char *end = q ? q : hier + strlen(hier);
    const char *path = hier;
    int rc = 0;
    if (end - hier >= 2 && hier[0] == '/' && hier[1] == '/') {
        out->parts.has_authority = 1;
        const char *auth = hier + 2;
        path = auth + strcspn(auth, "/?");
        if (path > end)
            path = end;
        rc = split_authority(out, auth, (size_t)(path - auth));
    }
    if (rc == 0)
        rc = part_decode(out->masked, "path", path, (size_t)(end - path),
                         &out->path);
    return rc;
}

/* Append the backend option key=val (decoded) to out->opts. */
static int add_opt(mqs_parsed_uri *out, size_t *cap, const char *raw_k,
                   size_t klen, const char *raw_v, size_t vlen)
{
    if (mqs__grow(&out->opts, cap, out->parts.nopts + 1, sizeof *out->opts,
                  8))
        return mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    char *k = NULL, *v = NULL;
    int rc = part_decode(out->masked, "option names", raw_k, klen, &k);
    if (rc == 0)
        rc = part_decode(out->masked, "option values", raw_v, vlen, &v);
    if (rc) {
        free(k);
        return rc;
    }
    out->opts[out->parts.nopts++] = (mqs_be_kv){k, v};
    return 0;
}

/* The core options, from MQS_CORE_OPTIONS: how each is parsed and which
 * mqs_config field it sets. */
typedef struct core_opt {
    const char *name, *def, *doc;
    mqs_opt_kind kind;
    const char *yes, *no; /* FLAG: the words for true and false */
    long long lo, hi;     /* SIZE, MS: accepted range */
    size_t off, size;     /* the field in mqs_config */
} core_opt;

static const core_opt core_opts[] = {
#define MQS_OPT_ROW_(n, field, parse, def_, doc_)                              \
    {.name = #n, .def = def_, .doc = doc_, parse,                              \
     .off = offsetof(mqs_config, field),                                       \
     .size = sizeof(((mqs_config *)0)->field)},
    MQS_CORE_OPTIONS(MQS_OPT_ROW_)
#undef MQS_OPT_ROW_
};
#define N_CORE (sizeof core_opts / sizeof core_opts[0])

static int parse_size(const char *masked, const char *name, const char *v,
                      long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi)
        return mqs__err(NULL, MQS_EINVAL,
                        "option %s=%s in %s: expected a whole number from "
                        "%lld to %lld",
                        name, v, masked, lo, hi);
    *out = x;
    return 0;
}

/* A FLAG: the message lists the default word first. */
static int parse_flag(const core_opt *o, const char *masked, const char *v,
                      bool *out)
{
    if (strcmp(v, o->yes) && strcmp(v, o->no)) {
        bool def_yes = !strcmp(o->def, o->yes);
        return mqs__err(NULL, MQS_EINVAL,
                        "option %s=%s in %s: expected %s or %s", o->name, v,
                        masked, def_yes ? o->yes : o->no,
                        def_yes ? o->no : o->yes);
    }
    *out = !strcmp(v, o->yes);
    return 0;
}

/* A TEXT into dst[cap]. */
static int parse_text(const core_opt *o, const char *masked, const char *v,
                      char *dst, size_t cap)
{
    if (!strcmp(v, "<hostname>:<pid>")) {
        char host[200] = "localhost";
        gethostname(host, sizeof host - 1);
        snprintf(dst, cap, "%s:%ld", host, (long)getpid());
    } else if (!*v || strlen(v) >= cap) {
        return mqs__err(NULL, MQS_EINVAL,
                        "option %s in %s: expected 1 to %zu bytes", o->name,
                        masked, cap - 1);
    } else {
        snprintf(dst, cap, "%s", v);
    }
    return 0;
}

/* Apply core option i (decoded value v); c is left as it was on error. */
static int set_core(mqs_config *c, const char *masked, size_t i,
                    const char *v)
{
    const core_opt *o = &core_opts[i];
    char *field = (char *)c + o->off;
    long long x = 0;
    bool b = false;
    int rc;
    switch (o->kind) {
    case MQS_OPT_K_FLAG:
        if (!(rc = parse_flag(o, masked, v, &b)))
            *(bool *)field = b;
        return rc;
    case MQS_OPT_K_SIZE:
        if (!(rc = parse_size(masked, o->name, v, o->lo, o->hi, &x)))
            *(size_t *)field = (size_t)x;
        return rc;
    case MQS_OPT_K_MS:
        if (!(rc = parse_size(masked, o->name, v, o->lo, o->hi, &x)))
            *(int64_t *)field = x;
        return rc;
    case MQS_OPT_K_TEXT:
        return parse_text(o, masked, v, field, o->size);
    }
    return 0;
}

static int core_index(const char *name)
{
    for (size_t i = 0; i < N_CORE; i++)
        if (!strcmp(core_opts[i].name, name))
            return (int)i;
    return -1;
}

static bool be_has_option(const mqs_backend *be, const char *name)
{
    for (size_t i = 0; i < be->n_options; i++)
        if (!strcmp(be->options[i].name, name))
            return true;
    return false;
}

static int unknown_option(const mqs_backend *be, const char *masked,
                          const char *name)
{
    sbuf b = {0};
    for (size_t i = 0; i < N_CORE; i++) {
        sb_add(&b, i ? ", " : "");
        sb_add(&b, core_opts[i].name);
    }
    sbuf o = {0};
    for (size_t i = 0; i < be->n_options; i++) {
        sb_add(&o, i ? ", " : "");
        sb_add(&o, be->options[i].name);
    }
    int rc = mqs__err(NULL, MQS_EINVAL,
                      "unknown option '%s' in %s: mqstore options are %s; "
                      "%s backend options are %s",
                      name, masked, b.p ? b.p : "", be->name,
                      o.p ? o.p : "(none)");
    free(b.p);
    free(o.p);
    return rc;
}

static void cfg_defaults(mqs_config *c)
{
    /* Defaults come from the same table as the docs, so they cannot drift. */
    for (size_t i = 0; i < N_CORE; i++)
        (void)set_core(c, "", i, core_opts[i].def);
}

/* One query option key=value (raw p[0..len), '=' at eq or NULL): a core
 * option sets out->cfg, a backend option goes to out->opts and be_uri. */
static int take_option(const mqs_backend *be, mqs_parsed_uri *out,
                       const char *p, size_t len, bool *seen, sbuf *be_uri,
                       size_t *opt_cap)
{
    const char *eq = memchr(p, '=', len);
    size_t klen = eq ? (size_t)(eq - p) : len;
    char *key = pct_decode(p, klen);
    char *val = eq ? pct_decode(eq + 1, len - klen - 1) : mqs__strdup("");
    int rc = 0, i;
    if (!key || !val) {
        rc = mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    } else if ((i = core_index(key)) >= 0) {
        if (seen[i])
            rc = mqs__err(NULL, MQS_EINVAL, "option '%s' given twice in %s",
                          key, out->masked);
        else if (!eq || !*val)
            rc = mqs__err(NULL, MQS_EINVAL,
                          "option '%s' in %s has no value (default %s)", key,
                          out->masked, core_opts[i].def);
        else
            rc = set_core(&out->cfg, out->masked, (size_t)i, val);
        seen[i] = true;
    } else if (be_has_option(be, key)) {
        sb_add(be_uri, be_uri->p && strchr(be_uri->p, '?') ? "&" : "?");
        sb_addn(be_uri, p, len);
        if (!eq)
            rc = mqs__err(NULL, MQS_EINVAL,
                          "option '%s' in %s has no value: write %s=VALUE "
                          "(see `mqstore options %s`)",
                          key, out->masked, key, out->scheme);
        else
            rc = add_opt(out, opt_cap, p, klen, eq + 1, len - klen - 1);
        /* A secret option's value is scrubbed from messages like the
         * password (be_call.c). */
        if (rc == 0 && !out->pw_opt && secret_key(p, klen) &&
            !(out->pw_opt = mqs__strdup(val)))
            rc = mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    } else {
        rc = unknown_option(be, out->masked, key);
    }
    free(key);
    free(val);
    return rc;
}

/* The query of uri: every option through take_option; out->be_uri is the
 * URI without the core options. */
static int parse_query(const char *uri, const mqs_backend *be,
                       mqs_parsed_uri *out)
{
    const char *q = strchr(uri, '?');
    sbuf be_uri = {0};
    sb_addn(&be_uri, uri, q ? (size_t)(q - uri) : strlen(uri));
    bool seen[N_CORE] = {0};
    size_t opt_cap = 0;
    int rc = 0;
    for (const char *p = q ? q + 1 : NULL; p && *p && rc == 0;) {
        size_t len = strcspn(p, "&");
        if (len) /* "a=1&&b=2" and a trailing '&' are tolerated */
            rc = take_option(be, out, p, len, seen, &be_uri, &opt_cap);
        p += len + (p[len] == '&');
    }
    if (rc == 0 && be_uri.oom)
        rc = mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    out->be_uri = be_uri.p;
    return rc;
}

int mqs__uri_parse(const char *uri, const mqs_backend *be, mqs_parsed_uri *out)
{
    memset(out, 0, sizeof *out);
    char scheme[64];
    int rc = 0;
    out->masked = mask_dup(uri);
    if (!out->masked)
        return mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    if (mqs__uri_scheme(uri, scheme, sizeof scheme))
        rc = mqs__err(NULL, MQS_EINVAL,
                      "URI %s has no scheme: expected e.g. "
                      "sqlite:///path/store.db, postgresql://host/db or "
                      "mysql://host/db",
                      out->masked);
    else if (mqs__uri_ambiguous_password(uri))
        rc = mqs__err(NULL, MQS_EINVAL,
                      "URI %s: an '@' after the host part. If it ends the "
                      "user:password, the password holds an unencoded '/', "
                      "'?' or '#': percent-encode them (%%2F, %%3F, %%23). "
                      "If it is in an option value, write it as %%40",
                      out->masked);
    else if (!(out->scheme = mqs__strdup(scheme)))
        rc = mqs__err(NULL, MQS_ENOMEM, "out of memory parsing URI");
    cfg_defaults(&out->cfg);
    if (rc == 0)
        rc = split_parts(uri, out);
    if (rc == 0)
        rc = parse_query(uri, be, out);
    /* Refused, not warned about: a renewal must be able to fail twice and
     * still land before the lease ends, or a healthy master loses it. */
    if (rc == 0 && out->cfg.renew_ms * 3 > out->cfg.lease_ms)
        rc = mqs__err(NULL, MQS_EINVAL,
                      "renew_ms=%lld with lease_ms=%lld in %s: renew_ms must "
                      "be at most lease_ms/3 (%lld) so a late renewal cannot "
                      "lose a healthy master its lock",
                      (long long)out->cfg.renew_ms,
                      (long long)out->cfg.lease_ms, out->masked,
                      (long long)(out->cfg.lease_ms / 3));
    if (rc) {
        mqs__uri_free(out);
        return rc;
    }
    out->parts = (mqs_be_uri){out->scheme, out->parts.has_authority,
                              out->user,   out->password,
                              out->hosts,  out->parts.nhosts,
                              out->path,   out->opts,
                              out->parts.nopts};
    return 0;
}

/* free() of a string held through a const pointer (the mqs_be_uri
 * members), without a cast that drops the qualifier. */
static void free_const(const char *p)
{
    char *q;
    memcpy(&q, &p, sizeof q);
    free(q);
}

void mqs__uri_free(mqs_parsed_uri *u)
{
    free(u->scheme);
    free(u->be_uri);
    free(u->masked);
    free(u->user);
    if (u->password) /* a secret: not left in freed memory */
        memset(u->password, 0, strlen(u->password));
    free(u->password);
    if (u->pw_raw)
        memset(u->pw_raw, 0, strlen(u->pw_raw));
    free(u->pw_raw);
    if (u->pw_opt)
        memset(u->pw_opt, 0, strlen(u->pw_opt));
    free(u->pw_opt);
    free(u->path);
    for (size_t i = 0; u->hosts && i < u->parts.nhosts; i++) {
        free_const(u->hosts[i].host);
        free_const(u->hosts[i].port);
    }
    free(u->hosts);
    for (size_t i = 0; i < u->parts.nopts; i++) {
        free_const(u->opts[i].key);
        free_const(u->opts[i].value);
    }
    free(u->opts);
    memset(u, 0, sizeof *u);
}

int mqs_option_foreach(const char *scheme, mqs_option_fn fn, void *ud)
{
    if (!fn)
        return mqs__err(NULL, MQS_EINVAL, "mqs_option_foreach: fn is NULL");
    for (size_t i = 0; i < N_CORE; i++) {
        mqs_option_info o = {core_opts[i].name, core_opts[i].def,
                             core_opts[i].doc, "core"};
        fn(ud, &o);
    }
    if (!scheme)
        return 0;
    const mqs_backend *be;
    int rc = mqs__load_backend(scheme, &be);
    if (rc)
        return rc;
    for (size_t i = 0; i < be->n_options; i++) {
        mqs_option_info o = {be->options[i].name,
                             be->options[i].default_value,
                             be->options[i].doc, be->name};
        fn(ud, &o);
    }
    return 0;
}
