/* machine.h -- what the benchmarks share: a monotonic clock, a seeded
 * random stream, and what they print about the machine they ran on (the
 * CPU model and the load average: other work skews timings, so every
 * result carries it). */
#ifndef MSADB_TOOLS_MACHINE_H
#define MSADB_TOOLS_MACHINE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Seconds on the monotonic clock. */
static inline double machine_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* splitmix64: deterministic from the seed on every machine. */
static inline uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Standard normal (Box-Muller). */
static inline float rng_normal(uint64_t *s)
{
    double u1 = ((rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = ((rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* The "model name" line of /proc/cpuinfo, or "unknown". */
static inline void machine_cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ' || *p == '\t')
                    p++;
                p[strcspn(p, "\n")] = 0;
                snprintf(buf, cap, "%s", p);
            }
            break;
        }
    }
    fclose(f);
}

/* Writes `"cpu": "MODEL", "cores": N, ` (the machine a JSON result was
 * measured on; tools/bench/plot.py names it in its titles). */
static inline void machine_json(void)
{
    char cpu[256];
    machine_cpu_model(cpu, sizeof cpu);
    printf("\"cpu\": \"");
    for (const char *c = cpu; *c; c++)
        if (*c == '"' || *c == '\\')
            printf("\\%c", *c);
        else if ((unsigned char)*c >= 0x20)
            putchar(*c);
    printf("\", \"cores\": %ld, ", sysconf(_SC_NPROCESSORS_ONLN));
}

/* The 1-minute load average, or -1. */
static inline double machine_load(void)
{
    double l = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1.0;
        fclose(f);
    }
    return l;
}

/* A failed step: "PROG: WHAT: the error", exit status 1. */
static inline void machine_die(const char *prog, const char *what, const char *err)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, err ? err : "failed");
    exit(1);
}

static inline int machine_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The p-quantile (0..1, nearest rank) of v[0,n); sorts v.  NAN if n is 0. */
static inline double machine_percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    qsort(v, n, sizeof *v, machine_cmp_double);
    return v[(size_t)(p * (double)(n - 1) + 0.5)];
}

#endif
