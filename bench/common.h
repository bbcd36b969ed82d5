/*
 * bench/common.h - helpers shared by the bench programs (mqstore-bench,
 * mqs-raw-insert): monotonic clock, allocation, random bodies, latency
 * percentiles, repeat statistics and a minimal JSON writer/reader.
 *
 * Plain C11 + POSIX, no mqstore: mqs-raw-insert links it without the
 * library. Messages name the program set in bench_prog.
 */
#ifndef MQS_BENCH_COMMON_H
#define MQS_BENCH_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Program name for error messages ("mqstore-bench", "mqs-raw-insert"). */
extern const char *bench_prog;

/* Exit statuses every bench program uses. */
enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* "PROG: <message>" and "Try 'PROG --help'." on stderr; returns EXIT_USAGE. */
int bad_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The option at argv[*i] ("--name=value", "--name value" or a flag) into
 * name (namelen bytes) and *val (NULL for a flag); with_value is the
 * NULL-terminated list of the options that take a value (the value may be
 * the next argument: *i moves past it). EXIT_OK, or EXIT_USAGE after a
 * message (too long, a missing value, a value given to a flag). */
int bench_opt(int argc, char **argv, int *i, const char *const *with_value,
              char *name, size_t namelen, const char **val);
/* --help/-h (usage(stdout)) and --version/-V ("PROG VERSION"): print and
 * exit(EXIT_OK); false for any other option name. */
bool bench_std_opt(const char *name, void (*usage)(FILE *), const char *version);
/* NULL if path may be a --json file, else why not (for bad_usage): "-"
 * is refused, since stdout already carries the result table and a file of
 * that name is never what was meant. */
const char *bench_json_path_problem(const char *path);
/* A --json file: opened for writing, or NULL after "PROG: --json PATH:
 * why" on stderr. */
FILE *bench_json_open(const char *path);
/* Close what bench_json_open gave: EXIT_OK, or EXIT_FAIL after the same
 * kind of message (a full disk shows at fclose). */
int bench_json_close(FILE *f, const char *path);
/* A whole decimal number in [min, max] (nothing after it). */
bool parse_long(const char *s, long min, long max, long *out);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t mono_ns(void);
/* Sleeps ms milliseconds, resuming after signals. */
void sleep_ms(long ms);
/* calloc that never returns NULL (exits 1 with a message) and accepts 0. */
void *xcalloc(size_t n, size_t sz);
/* Client CPU time of this process (user + system), seconds. */
double cpu_seconds(void);

/* Deterministic random bytes: no backend benefits from compressible data. */
uint64_t splitmix64(uint64_t x);
void fill_body(unsigned char *b, size_t n, uint64_t seed);

/* Latencies in ns. bench_lat_summary merges the per-thread arrays, sorts
 * them (after the clock stopped) and returns the nearest-rank percentiles
 * in ms. */
typedef struct bench_lat {
    uint64_t n;
    double p50_ms, p99_ms, max_ms, mean_ms;
} bench_lat;

int cmp_u64(const void *a, const void *b);
double pct_ms(const uint64_t *sorted, size_t n, double p); /* p in 0..1 */
void bench_lat_summary(uint64_t *const *lat, const uint64_t *n, int nthreads,
                       bench_lat *out);

/* Median (mean of the two middle ones for an even count), min and max of
 * v[0..n-1]; v is left untouched. NaN for n == 0. */
typedef struct bench_spread {
    double median, min, max;
} bench_spread;
bench_spread bench_spread_of(const double *v, int n);

/* JSON output: strings escaped (NULL -> null), numbers with NaN/inf ->
 * null. */
void json_str(FILE *f, const char *s);
void json_num(FILE *f, double v);

/* gnuplot on a pipe, its output a width x height PNG at path (set
 * terminal and output written). NULL when there is no plot: *status is
 * EXIT_OK when gnuplot is not installed (said on stderr: a plot is
 * optional), EXIT_FAIL when it cannot be run. */
FILE *bench_plot_open(const char *path, int width, int height, int *status);
/* End the multiplot, close the pipe, report; EXIT_OK or EXIT_FAIL. */
int bench_plot_close(FILE *g, const char *path);

/* Reads a whole file into a malloc'ed, NUL-terminated buffer (NULL on
 * error). */
char *bench_read_file(const char *path);
/* The number after the first "key": in a JSON text one of the bench tools
 * wrote (flat search, no parsing: ask for keys that occur once, e.g.
 * "msg_per_s" in mqs-raw-insert's output). NaN when absent or null. */
double json_find_num(const char *text, const char *key);

#endif
