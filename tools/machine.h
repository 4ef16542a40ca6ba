/* machine.h -- what the benchmarks print about the machine they ran on:
 * the CPU model and the load average (other work on the machine skews
 * timings, so every result carries it). */
#ifndef MSADB_TOOLS_MACHINE_H
#define MSADB_TOOLS_MACHINE_H

#include <stdio.h>
#include <string.h>

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

#endif
