/* stream.c -- what the two forms of `msadb ingest` share: a batch that
 * commits in bounded chunks (--commit-every, or 8 MiB of encoded data),
 * SIGINT/SIGTERM stopping at a document boundary, progress with a total,
 * percent and ETA on a terminal, and the closing messages.  Uses only the
 * public API (msadb.h). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static volatile sig_atomic_t stop_signal;
static struct sigaction old_int, old_term;

static void on_signal(int sig) { stop_signal = sig; }

static msadb_commit_fn commit_fn; /* for a store of several (one commit at the end) */
static void *commit_user;

int cli_stream_begin(const cli_args *a, cli_db *db, msadb_commit_fn on_commit, void *user)
{
    msadb_store *st = cli_db_store(db);
    int rc;
    if (!st) {
        /* The shards of a store commit their parts of a batch one after the
         * other and pick each document's shard by load: bounded commits and
         * per-document keys are not offered there. */
        if (a->commit_tokens || a->commit_docs) {
            fprintf(stderr,
                    "msadb: ingest: --commit-every works on an ordinary store only; %s is sharded, and its "
                    "ingest is one batch (drop --commit-every, or 'msadb merge' it into one store first)\n",
                    a->db);
            return CLI_USAGE;
        }
        rc = db->ops->batch_begin(db);
        commit_fn = on_commit;
        commit_user = user;
    } else {
        commit_fn = NULL;
        rc = msadb_batch_begin(st, (msadb_batch **)&db->batch);
        if (rc == 0 && (a->commit_tokens || a->commit_docs))
            rc = msadb_batch_set_flush(db->batch, (size_t)a->commit_docs, a->commit_tokens, 0, on_commit, user);
        else if (rc == 0)
            rc = msadb_batch_set_flush(db->batch, 0, 0, CLI_COMMIT_BYTES, on_commit, user);
    }
    if (rc != 0)
        return cli_error_rc(rc, "%s: cannot begin a batch", a->db);
    /* The first signal asks for a stop at the next document boundary; the
     * handler is then reset, so a second one ends the process at once (an
     * unfinished LMDB transaction is simply not there). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = (int)SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    stop_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    return CLI_OK;
}

static void cli_stream_end(void)
{
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
}

int cli_stream_stop_signal(void) { return stop_signal; }

int cli_stream_finish(const cli_args *a, cli_db *db, size_t n_held, int rc, int *sig)
{
    *sig = stop_signal;
    if (rc == CLI_OK || *sig) {
        /* what is held is whole documents: commit it, also when stopping */
        uint64_t *ids = NULL;
        int crc = commit_fn ? cli_commit_db(a, db, n_held, &ids) : CLI_OK;
        if (!commit_fn) {
            int mrc = db->ops->batch_commit(db, NULL);
            crc = mrc ? cli_error_rc(mrc, "%s: commit failed", a->db) : CLI_OK;
        }
        if (crc == CLI_OK && commit_fn && n_held)
            commit_fn(ids, n_held, commit_user);
        free(ids);
        if (crc != CLI_OK)
            rc = crc;
    }
    db->ops->batch_abort(db);
    cli_stream_end();
    cli_progress_end(a);
    return rc;
}

static void duration(double s, char *buf, size_t cap)
{
    if (s < 0 || s > 1e7)
        snprintf(buf, cap, "?");
    else if (s < 60)
        snprintf(buf, cap, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, cap, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, cap, "%dh%02dm", (int)s / 3600, (int)s / 60 % 60);
}

void cli_stream_progress(const cli_args *a, cli_progress_state *p, uint64_t done, uint64_t committed)
{
    if (a->quiet || !cli_stderr_tty())
        return;
    double now = cli_now_ms();
    if (done < p->total && now - p->last_ms < 100)
        return; /* at most ten lines a second */
    p->last_ms = now;
    double s = (now - p->t0) / 1e3, rate = s > 0 ? (double)done / s : 0;
    char eta[32];
    duration(rate > 0 && p->total > done ? (double)(p->total - done) / rate : 0, eta, sizeof eta);
    cli_progress(a, "ingest: %llu/%llu %s (%.0f%%), %llu documents committed, %.0f %s/s, ETA %s",
                 (unsigned long long)done, (unsigned long long)p->total, p->unit,
                 p->total ? 100.0 * (double)done / (double)p->total : 100.0, (unsigned long long)committed, rate,
                 p->unit, eta);
}

int cli_stream_interrupted(const cli_args *a, int sig, uint64_t committed, uint64_t already)
{
    cli_error("ingest: interrupted by %s: %llu documents committed to %s%s; run the same command again "
              "to resume (documents already in the store are skipped)",
              sig == SIGTERM ? "SIGTERM" : "SIGINT", (unsigned long long)committed, a->db,
              already ? ", the others were already there" : "");
    return 128 + sig;
}

void cli_stream_failed(const cli_args *a, uint64_t committed)
{
    if (committed == 0)
        fprintf(stderr, "msadb: ingest: nothing was written to %s\n", a->db);
    else
        fprintf(stderr,
                "msadb: ingest: %llu documents were committed to %s before the error; run the same command "
                "again to resume (documents already in the store are skipped)\n",
                (unsigned long long)committed, a->db);
}
