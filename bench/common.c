/* bench/common.c - see common.h. */
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

const char *bench_prog = "bench";

int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", bench_prog);
        exit(1);
    }
    return p;
}

double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

void fill_body(unsigned char *b, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i += 8) {
        uint64_t r = splitmix64(seed + i);
        size_t m = n - i < 8 ? n - i : 8;
        memcpy(b + i, &r, m);
    }
}

int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
double pct_ms(const uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(p * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return (double)v[rank - 1] / 1e6;
}

void bench_lat_summary(uint64_t *const *lat, const uint64_t *n, int nthreads,
                       bench_lat *out)
{
    uint64_t total = 0;
    for (int i = 0; i < nthreads; i++)
        total += n[i];
    uint64_t *all = xcalloc(total, sizeof *all);
    uint64_t k = 0;
    double sum = 0;
    for (int i = 0; i < nthreads; i++)
        for (uint64_t j = 0; j < n[i]; j++) {
            all[k++] = lat[i][j];
            sum += (double)lat[i][j];
        }
    qsort(all, total, sizeof *all, cmp_u64);
    out->n = total;
    out->p50_ms = pct_ms(all, total, 0.50);
    out->p99_ms = pct_ms(all, total, 0.99);
    out->max_ms = total ? (double)all[total - 1] / 1e6 : 0;
    out->mean_ms = total ? sum / (double)total / 1e6 : 0;
    free(all);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

bench_spread bench_spread_of(const double *v, int n)
{
    bench_spread s = {NAN, NAN, NAN};
    double tmp[64];
    int m = 0;
    for (int i = 0; i < n && m < (int)(sizeof tmp / sizeof *tmp); i++)
        if (v[i] == v[i]) /* NaN: a run that did not happen */
            tmp[m++] = v[i];
    if (m == 0)
        return s;
    qsort(tmp, (size_t)m, sizeof *tmp, cmp_double);
    s.min = tmp[0];
    s.max = tmp[m - 1];
    s.median = m % 2 ? tmp[m / 2] : (tmp[m / 2 - 1] + tmp[m / 2]) / 2;
    return s;
}

void json_str(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

/* JSON has no NaN/inf: a ratio with a zero denominator is null. */
void json_num(FILE *f, double v)
{
    if (v != v || v > 1e300 || v < -1e300)
        fputs("null", f);
    else
        fprintf(f, "%.6g", v);
}

char *bench_read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0)
            break;
        if (cap - len - 1 == 0) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

double json_find_num(const char *text, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = text ? strstr(text, pat) : NULL;
    if (!p)
        return NAN;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    char *end;
    double v = strtod(p, &end);
    return end == p ? NAN : v;
}

int bad_usage(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", bench_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help'.\n", bench_prog);
    return EXIT_USAGE;
}

int bench_opt(int argc, char **argv, int *i, const char *const *with_value,
              char *name, size_t namelen, const char **val)
{
    const char *a = argv[*i];
    const char *eq = strchr(a, '=');
    size_t nl = eq ? (size_t)(eq - a) : strlen(a);
    *val = NULL;
    if (nl >= namelen)
        return bad_usage("unknown option '%s'", a);
    memcpy(name, a, nl);
    name[nl] = '\0';
    bool needs = false;
    for (size_t k = 0; with_value[k]; k++)
        needs |= strcmp(name, with_value[k]) == 0;
    if (needs) {
        if (eq)
            *val = eq + 1;
        else if (*i + 1 < argc)
            *val = argv[++*i];
        else
            return bad_usage("%s needs a value", name);
    } else if (eq) {
        return bad_usage("%s takes no value", name);
    }
    return EXIT_OK;
}

bool bench_std_opt(const char *name, void (*usage)(FILE *), const char *version)
{
    if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
        usage(stdout);
        exit(EXIT_OK);
    }
    if (!strcmp(name, "--version") || !strcmp(name, "-V")) {
        printf("%s %s\n", bench_prog, version);
        exit(EXIT_OK);
    }
    return false;
}

const char *bench_json_path_problem(const char *path)
{
    if (!*path)
        return "--json: empty file name";
    if (!strcmp(path, "-"))
        return "--json -: stdout carries the result table; give a file name "
               "(e.g. --json /tmp/result.json)";
    return NULL;
}

FILE *bench_json_open(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        fprintf(stderr, "%s: --json %s: %s\n", bench_prog, path,
                strerror(errno));
    return f;
}

int bench_json_close(FILE *f, const char *path)
{
    if (fclose(f) != 0) {
        fprintf(stderr, "%s: --json %s: %s\n", bench_prog, path,
                strerror(errno));
        return EXIT_FAIL;
    }
    return EXIT_OK;
}

bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

FILE *bench_plot_open(const char *path, int width, int height, int *status)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "%s: gnuplot not found: skipping --plot %s\n",
                bench_prog, path);
        *status = EXIT_OK;
        return NULL;
    }
    FILE *g = popen("gnuplot", "w");
    if (!g) {
        fprintf(stderr, "%s: cannot run gnuplot: %s\n", bench_prog,
                strerror(errno));
        *status = EXIT_FAIL;
        return NULL;
    }
    fprintf(g, "set terminal pngcairo size %d,%d noenhanced font 'sans,10'\n"
               "set output '",
            width, height);
    for (const char *p = path; *p; p++) /* quote for gnuplot's '...' */
        fputs(*p == '\'' ? "''" : (char[]){*p, 0}, g);
    fprintf(g, "'\n");
    *status = EXIT_OK;
    return g;
}

int bench_plot_close(FILE *g, const char *path)
{
    fprintf(g, "unset multiplot\n");
    int st = pclose(g);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s: gnuplot failed (status %d): no plot\n",
                bench_prog, st);
        return EXIT_FAIL;
    }
    fprintf(stderr, "plot written to %s\n", path);
    return EXIT_OK;
}
