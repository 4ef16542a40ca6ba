/* args.c -- command-line parsing of the msadb program.
 *
 * Grammar: msadb COMMAND [OPTION | ARG]...  Options may come before or
 * after the arguments; "--name value" and "--name=value" are both accepted;
 * "--" ends the options.  Each option belongs to a set of commands; giving
 * it to another command, giving it twice (except a query's --space), a
 * missing or malformed value, or a wrong number of arguments is a usage
 * error (exit status 2).  Nothing here touches a store or a file, so the
 * parser can be fuzzed on its own (fuzz/fuzz_cli_args.c).
 */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* commands and options                                                     */
/* ------------------------------------------------------------------------ */

static const char *const cmd_names[CMD_COUNT] = {
    [CMD_NONE] = "", [CMD_HELP] = "help", [CMD_VERSION] = "version", [CMD_INIT] = "init",
    [CMD_INGEST] = "ingest", [CMD_QUERY] = "query", [CMD_STAT] = "stat", [CMD_LS] = "ls",
    [CMD_RM] = "rm", [CMD_SPACE] = "space", [CMD_VERIFY] = "verify", [CMD_DUMP] = "dump",
    [CMD_LOAD] = "load", [CMD_COMPACT] = "compact", [CMD_SPLIT] = "split", [CMD_MERGE] = "merge",
    [CMD_DOCTOR] = "doctor",
    [CMD_SEARCH] = "search", [CMD_SHOW] = "show", [CMD_VACUUM] = "vacuum",
    [CMD_UPDATE] = "update", [CMD_EXPIRE] = "expire",
};

static const char *const cmd_usage[CMD_COUNT] = {
    [CMD_HELP] = "help [COMMAND]",
    [CMD_VERSION] = "version",
    [CMD_INIT] = "init DB (--layers L --kv-heads H --q-heads Q --head-dim D | --model M.gguf)\n"
                 "           [--memory-layers LIST] [--block B] [--dtype f32|f16|bf16|int8|q4]\n"
                 "           [--summary KINDS] [--shards N] [--key-file F | --passphrase-env VAR]",
    [CMD_INGEST] = "ingest DB [--space S] [--title T] [--meta K=V]... [--ttl D] [--commit-every Nt|Nd]\n"
                   "           FILE...\n"
                   "       msadb ingest DB [-m M.gguf] [--space S] [--title T] [--split] [--meta K=V]...\n"
                   "           [--ttl D] [--commit-every Nt|Nd] [--binary-ok] [--segment MODE] TEXTFILE...",
    [CMD_QUERY] = "query DB --q FILE --layer N [--space S]... [--top-k K]\n"
                  "           [--select blocks|documents] [--summary mean|minmax|reps] [--exact]\n"
                  "           [--per-token] [--where K=V]... [--out FILE]\n"
                  "       msadb query DB [-m M.gguf] [--space S]... [--top-k K]\n"
                  "           [--select blocks|documents] [--summary mean|minmax|reps] [--exact]\n"
                  "           [--no-memory] [-n N] [--temp T] [--top-p P] [--min-score X]\n"
                  "           [--where K=V]...\n"
                  "           [--seed S] [--interleave N] [--followups N] [--query-pos P] QUESTION",
    [CMD_STAT] = "stat DB",
    [CMD_LS] = "ls DB [--space S] [--where K=V]...",
    [CMD_RM] = "rm DB [--space S] DOC... | rm DB [--space S] [--where K=V]...",
    [CMD_SPACE] = "space DB create NAME [--space-key-file F | --space-passphrase-env VAR] | drop NAME | ls",
    [CMD_VERIFY] = "verify DB",
    [CMD_DUMP] = "dump DB FILE",
    [CMD_LOAD] = "load DB FILE",
    [CMD_COMPACT] = "compact DB",
    [CMD_SPLIT] = "split DB DIR --shards N",
    [CMD_MERGE] = "merge DIR DB",
    [CMD_DOCTOR] = "doctor [-m M.gguf]",
    [CMD_SEARCH] = "search DB [-m M.gguf] [--space S]... [--top-k K] [--select blocks|documents]\n"
                   "           [--summary mean|minmax|reps] [--min-score X] [--where K=V]... QUESTION",
    [CMD_SHOW] = "show DB [--space S] DOC",
    [CMD_VACUUM] = "vacuum DB",
    [CMD_UPDATE] = "update DB DOC (FILE | --text TEXT) [-m M.gguf] [--space S] [--title T]\n"
                   "           [--meta K=V]... [--ttl D] [--segment MODE]",
    [CMD_EXPIRE] = "expire DB",
};

static const char *const cmd_summary[CMD_COUNT] = {
    [CMD_HELP] = "show help for a command",
    [CMD_VERSION] = "print the msadb version",
    [CMD_INIT] = "create a store for a model signature (or a GGUF model's)",
    [CMD_INGEST] = "add documents from safetensors/.npy files, or text through a model (one transaction)",
    [CMD_QUERY] = "memory attention for query vectors, or answer a question with a model",
    [CMD_STAT] = "show the store's signature and sizes",
    [CMD_LS] = "list documents",
    [CMD_RM] = "delete documents",
    [CMD_SPACE] = "create, drop or list spaces",
    [CMD_VERIFY] = "check every block, summary and index",
    [CMD_DUMP] = "write a portable dump of the whole store",
    [CMD_LOAD] = "restore a dump (creating the store if needed)",
    [CMD_SPLIT] = "copy a store into a new sharded store of N shards",
    [CMD_MERGE] = "copy a sharded store into a new single store",
    [CMD_COMPACT] = "rewrite summary pages without deleted entries (the file keeps its size)",
    [CMD_DOCTOR] = "say what is installed: library, format, runtime, BLAS threads, default model",
    [CMD_SEARCH] = "the memory spans a model's routing selects for a question, without generating",
    [CMD_SHOW] = "show one document: metadata, blocks and text",
    [CMD_VACUUM] = "rewrite the store into a compact copy that replaces it (gives space back)",
    [CMD_UPDATE] = "replace a document's content (it gets a new id; the old one is deleted)",
    [CMD_EXPIRE] = "delete the documents whose expiry time (ingest --ttl) has passed",
};

#define C(x) (1u << CMD_##x)
#define STORE_CMDS                                                                            \
    (C(INIT) | C(INGEST) | C(QUERY) | C(STAT) | C(LS) | C(RM) | C(SPACE) | C(VERIFY) |        \
     C(DUMP) | C(LOAD) | C(COMPACT) | C(SPLIT) | C(MERGE) | C(SEARCH) | C(SHOW) | C(VACUUM) |  \
     C(UPDATE) | C(EXPIRE))
#define ALL_CMDS (STORE_CMDS | C(HELP) | C(VERSION) | C(DOCTOR))
#define ROUTE_CMDS (C(QUERY) | C(SEARCH))
#define SPACE_KEY_CMDS (C(INGEST) | ROUTE_CMDS | C(LS) | C(RM) | C(SHOW) | C(UPDATE) | C(SPACE))

enum opt_id {
    O_JSON, O_QUIET, O_HELP, O_KEY_FILE, O_PASS_ENV, O_LAYERS, O_KV_HEADS, O_Q_HEADS,
    O_HEAD_DIM, O_MEMORY_LAYERS, O_BLOCK, O_DTYPE, O_SUMMARY, O_SPACE, O_TITLE, O_Q, O_LAYER,
    O_TOP_K, O_SELECT, O_EXACT, O_PER_TOKEN, O_OUT, O_MODEL, O_SPLIT, O_NO_MEMORY,
    O_MAX_TOKENS, O_TEMPERATURE, O_TOP_P, O_SEED, O_INTERLEAVE, O_FOLLOWUPS, O_QUERY_POS, O_FORCE_MODEL,
    O_MIN_SCORE, O_SHARDS, O_COMMIT_EVERY, O_BINARY_OK, O_META, O_WHERE, O_TTL, O_TEXT, O_SPACE_KEY_FILE,
    O_SPACE_PASS_ENV, O_SEGMENT, O_COUNT
};

typedef struct opt_def {
    const char *name;
    const char *alias;  /* a second long name (llama.cpp's spelling), or NULL */
    char short_name;
    int takes_value;
    unsigned cmds;
    const char *metavar;
    const char *help;
} opt_def;

static const opt_def opts[O_COUNT] = {
    [O_JSON] = {"json", NULL, 0, 0, ALL_CMDS, NULL, "print JSON on stdout"},
    [O_QUIET] = {"quiet", NULL, 'q', 0, ALL_CMDS, NULL, "print only errors (and --json output)"},
    [O_HELP] = {"help", NULL, 'h', 0, ALL_CMDS, NULL, "show this help"},
    [O_KEY_FILE] = {"key-file", NULL, 0, 1, STORE_CMDS, "F", "32-byte key (raw or 64 hex digits)"},
    [O_PASS_ENV] = {"passphrase-env", NULL, 0, 1, STORE_CMDS, "VAR", "passphrase from $VAR"},
    [O_SPACE_KEY_FILE] = {"space-key-file", NULL, 0, 1, SPACE_KEY_CMDS, "F",
                          "the --space's own key (space create: make a keyed space)"},
    [O_SPACE_PASS_ENV] = {"space-passphrase-env", NULL, 0, 1, SPACE_KEY_CMDS, "VAR",
                          "the --space's own passphrase from $VAR (space create: make a keyed space)"},
    [O_LAYERS] = {"layers", NULL, 0, 1, C(INIT), "L", "transformer layers"},
    [O_KV_HEADS] = {"kv-heads", NULL, 0, 1, C(INIT), "H", "key/value heads"},
    [O_Q_HEADS] = {"q-heads", NULL, 0, 1, C(INIT), "Q", "query heads (a multiple of H)"},
    [O_HEAD_DIM] = {"head-dim", NULL, 0, 1, C(INIT), "D", "head dimension"},
    [O_MEMORY_LAYERS] = {"memory-layers", NULL, 0, 1, C(INIT), "LIST",
                         "memory layers, e.g. 2,3 or 2-3 (default: latter half)"},
    [O_BLOCK] = {"block", NULL, 0, 1, C(INIT), "B", "tokens per block (default 64)"},
    [O_DTYPE] = {"dtype", NULL, 0, 1, C(INIT), "T", "storage dtype f32|f16|bf16|int8|q4 (default f16)"},
    [O_SUMMARY] = {"summary", NULL, 0, 1, C(INIT) | ROUTE_CMDS, "KINDS",
                   "init: summary kinds mean,minmax,reps (default mean,reps); query: the one to route by"},
    [O_SPACE] = {"space", NULL, 0, 1, C(INGEST) | ROUTE_CMDS | C(LS) | C(RM) | C(SHOW) | C(UPDATE), "S",
                  "space (query, search: repeatable); limits ls, rm, show, update (query, search: "
                  "when given once) to it"},
    [O_TITLE] = {"title", NULL, 0, 1, C(INGEST) | C(UPDATE), "T",
                 "document title (ingest: default the file name; update: default the old one's)"},
    [O_Q] = {"q", NULL, 0, 1, C(QUERY), "FILE", "safetensors file with 'queries' [n,Q,D]"},
    [O_LAYER] = {"layer", NULL, 0, 1, C(QUERY), "N", "model layer (a memory layer)"},
    [O_TOP_K] = {"top-k", "blocks", 0, 1, ROUTE_CMDS, "K",
                 "memory blocks (or documents) each kv head selects, not sampling (default 16)"},
    [O_SELECT] = {"select", NULL, 0, 1, ROUTE_CMDS, "blocks|documents", "selection unit"},
    [O_EXACT] = {"exact", NULL, 0, 0, C(QUERY), NULL, "attend every block (dense attention)"},
    [O_PER_TOKEN] = {"per-token", NULL, 0, 0, C(QUERY), NULL, "one selection per query token"},
    [O_OUT] = {"out", NULL, 0, 1, C(QUERY), "FILE", "write 'out' [n,Q,D] and 'lse' [n,Q] (safetensors)"},
    [O_MODEL] = {"model", NULL, 'm', 1, C(INIT) | C(INGEST) | ROUTE_CMDS | C(DOCTOR) | C(UPDATE), "M.gguf",
                 "llama GGUF model (default: the store's, then $MSADB_MODEL)"},
    [O_SPLIT] = {"split", NULL, 0, 0, C(INGEST), NULL,
                 "text files: one document per paragraph (blank lines, # headings)"},
    [O_NO_MEMORY] = {"no-memory", NULL, 0, 0, C(QUERY), NULL, "with a question: answer without memory"},
    [O_MAX_TOKENS] = {"max-tokens", NULL, 'n', 1, C(QUERY), "N", "with a question: answer length limit (default 64)"},
    [O_TEMPERATURE] = {"temperature", "temp", 0, 1, C(QUERY), "T", "with a question: sampling temperature (0 = greedy)"},
    [O_TOP_P] = {"top-p", NULL, 0, 1, C(QUERY), "P", "with a question: nucleus mass in (0,1] (default 1)"},
    [O_SEED] = {"seed", NULL, 0, 1, C(QUERY), "S", "with a question: sampling seed (default 0)"},
    [O_INTERLEAVE] = {"interleave", NULL, 0, 1, C(QUERY), "N",
                      "with a question: memory-interleave rounds 0..8 (default 0)"},
    [O_FOLLOWUPS] = {"followups", NULL, 0, 1, C(QUERY), "N",
                     "with a question: follow-up questions the model may ask memory 0..8 (default 2)"},
    [O_FORCE_MODEL] = {"force-model", NULL, 0, 0, C(INGEST) | ROUTE_CMDS | C(UPDATE), NULL,
                       "use a model other than the one the store was made with (same shape)"},
    [O_MIN_SCORE] = {"min-score", NULL, 0, 1, ROUTE_CMDS, "X",
                     "routing score below which memory holds nothing relevant (see docs/cli.md)"},
    [O_QUERY_POS] = {"query-pos", NULL, 0, 1, C(QUERY), "P",
                     "with a question: position of the question's first token (default 0)"},
    [O_SHARDS] = {"shards", NULL, 0, 1, C(INIT) | C(SPLIT), "N",
                  "a sharded store of N shards (DIR/shard-0 ... shard-N-1)"},
    [O_COMMIT_EVERY] = {"commit-every", NULL, 0, 1, C(INGEST), "Nt|Nd",
                        "commit every N tokens (10000t) or documents (500d); default 8 MiB encoded"},
    [O_BINARY_OK] = {"binary-ok", NULL, 0, 0, C(INGEST), NULL,
                     "text files: ingest files that do not look like text (NUL bytes, bad UTF-8)"},
    [O_META] = {"meta", NULL, 0, 1, C(INGEST) | C(UPDATE), "K=V",
                "metadata of every document (repeatable; update: replaces the old metadata)"},
    [O_WHERE] = {"where", NULL, 0, 1, ROUTE_CMDS | C(LS) | C(RM), "K=V",
                 "only documents whose metadata has K=V (repeatable: all must hold)"},
    [O_TTL] = {"ttl", NULL, 0, 1, C(INGEST) | C(UPDATE), "D",
               "forget the documents after D: 90s, 45m, 12h or 30d (update: default the old expiry)"},
    [O_TEXT] = {"text", NULL, 0, 1, C(UPDATE), "TEXT", "the new content as text, instead of FILE"},
    [O_SEGMENT] = {"segment", NULL, 0, 1, C(INGEST) | C(UPDATE), "MODE",
                   "text: how the model reads it: document, paragraph or joined (default: the model's)"},
};

const char *cli_cmd_name(cli_cmd c)
{
    return (unsigned)c < CMD_COUNT ? cmd_names[c] : "";
}

void cli_usage(FILE *fp, cli_cmd c)
{
    if (c <= CMD_NONE || c >= CMD_COUNT) {
        fprintf(fp, "usage: msadb COMMAND [OPTIONS] ...\n\ncommands:\n");
        for (int i = CMD_HELP; i < CMD_COUNT; i++)
            fprintf(fp, "  %-9s %s\n", cmd_names[i], cmd_summary[i]);
        fprintf(fp,
                "\ncommon options: --json, --quiet, --key-file F, --passphrase-env VAR, --help\n"
                "exit status: 0 success, 1 error, 2 usage error\n"
                "Run 'msadb help COMMAND' for a command's options; see msadb(1).\n");
        return;
    }
    fprintf(fp, "usage: msadb %s\n  %s\n", cmd_usage[c], cmd_summary[c]);
    int any = 0;
    for (int i = 0; i < O_COUNT; i++) {
        if (!(opts[i].cmds & (1u << c)))
            continue;
        if (!any++)
            fprintf(fp, "options:\n");
        char left[64], also[48] = "";
        if (opts[i].short_name)
            snprintf(also, sizeof also, "-%c, ", opts[i].short_name);
        snprintf(left, sizeof left, "%s--%s%s%s", also, opts[i].name, opts[i].metavar ? " " : "",
                 opts[i].metavar ? opts[i].metavar : "");
        fprintf(fp, "  %-26s %s\n", left, opts[i].help);
        if (opts[i].alias)
            fprintf(fp, "  %-26s (also --%s)\n", "", opts[i].alias);
    }
}

/* ------------------------------------------------------------------------ */
/* value parsers                                                            */
/* ------------------------------------------------------------------------ */

static int push(const char ***arr, size_t *n, const char *s);

CLI_PRINTF(3, 4)
static int usage_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return CLI_USAGE;
}

/* Decimal digits only: no sign, no spaces, no overflow. */
static int parse_u64(const char *s, uint64_t *v)
{
    uint64_t x = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        if (__builtin_mul_overflow(x, 10, &x) || __builtin_add_overflow(x, (uint64_t)(*s - '0'), &x))
            return -1;
    }
    *v = x;
    return 0;
}

static int parse_u32_opt(const char *opt, const char *s, uint32_t lo, uint32_t hi, uint32_t *out,
                         char *err, size_t errlen)
{
    uint64_t v;
    if (parse_u64(s, &v) != 0 || v < lo || v > hi)
        return usage_err(err, errlen, "--%s: expected an integer in %u..%u, got '%.40s'", opt, lo,
                         hi, s);
    *out = (uint32_t)v;
    return CLI_OK;
}

/* --ttl: a count and a unit, s, m, h or d, at most 100 years. */
static int parse_ttl(const char *s, cli_args *a, char *err, size_t errlen)
{
    static const struct {
        char unit;
        uint64_t secs;
    } units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {'d', 86400}};
    size_t n = strlen(s);
    char digits[24];
    uint64_t v = 0, mul = 0;
    for (size_t i = 0; n >= 2 && i < sizeof units / sizeof units[0]; i++)
        if (s[n - 1] == units[i].unit)
            mul = units[i].secs;
    int ok = mul && n - 1 < sizeof digits;
    if (ok) {
        memcpy(digits, s, n - 1);
        digits[n - 1] = 0;
        ok = parse_u64(digits, &v) == 0 && v >= 1 && v <= 36600ull * 86400 / mul;
    }
    if (!ok)
        return usage_err(err, errlen,
                         "--ttl: expected a duration such as 90s, 45m, 12h or 30d (at most 36600d), "
                         "got '%.40s'",
                         s);
    a->ttl = (int64_t)(v * mul);
    return CLI_OK;
}

/* --meta and --where: KEY=VALUE (msadb_meta_term_check); --meta keys once. */
static int parse_kv(int id, const char *v, cli_args *a, char *err, size_t errlen)
{
    const char *name = id == O_META ? "meta" : "where";
    if (msadb_meta_term_check(v) != 0)
        return usage_err(err, errlen,
                         "--%s: expected KEY=VALUE (KEY: 1..%d letters, digits and ._-:@/; VALUE: up "
                         "to %d bytes, no newline), got '%.60s'",
                         name, MSADB_META_KEY_MAX, MSADB_META_VALUE_MAX, v);
    const char ***arr = id == O_META ? &a->meta : &a->where;
    size_t *n = id == O_META ? &a->n_meta : &a->n_where;
    size_t kl = (size_t)(strchr(v, '=') - v);
    for (size_t i = 0; id == O_META && i < *n; i++)
        if (strncmp((*arr)[i], v, kl + 1) == 0)
            return usage_err(err, errlen, "--meta: key '%.*s' given twice", (int)kl, v);
    if (push(arr, n, v) != 0)
        return usage_err(err, errlen, "out of memory");
    return CLI_OK;
}

/* A finite decimal number in [lo, hi] (lo excluded when open_lo). */
/* --commit-every: a count and its unit, "10000t" (tokens) or "500d"
 * (documents), 1..2^40. */
static int parse_commit_every(const char *s, cli_args *a, char *err, size_t errlen)
{
    size_t n = strlen(s);
    char digits[32];
    uint64_t v = 0;
    char unit = n ? s[n - 1] : 0;
    int ok = n >= 2 && n - 1 < sizeof digits && (unit == 't' || unit == 'd');
    if (ok) {
        memcpy(digits, s, n - 1);
        digits[n - 1] = 0;
        ok = parse_u64(digits, &v) == 0 && v >= 1 && v <= (1ull << 40);
    }
    if (!ok)
        return usage_err(err, errlen,
                         "--commit-every: expected a count and a unit, e.g. 100000t (tokens) or 500d "
                         "(documents), got '%.40s'",
                         s);
    a->commit_tokens = unit == 't' ? v : 0;
    a->commit_docs = unit == 'd' ? v : 0;
    return CLI_OK;
}

static int parse_float_opt(const char *opt, const char *s, double lo, int open_lo, double hi,
                           float *out, char *err, size_t errlen)
{
    char *end = NULL;
    double v = 0;
    int ok = *s && (s[0] == '.' || (s[0] >= '0' && s[0] <= '9'));
    if (ok) {
        v = strtod(s, &end);
        ok = end && !*end && isfinite(v) && (open_lo ? v > lo : v >= lo) && v <= hi;
    }
    if (!ok)
        return usage_err(err, errlen, "--%s: expected a number in %s%g..%g%s, got '%.40s'", opt,
                         open_lo ? "(" : "", lo, hi, open_lo ? "]" : "", s);
    *out = (float)v;
    return CLI_OK;
}

/* "2,3", "2-3", "0,4-6": a set of layer indexes, returned ascending. */
static int parse_layer_list(const char *s, cli_args *a, char *err, size_t errlen)
{
    unsigned char seen[MSADB_MAX_LAYERS] = {0};
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char item[32];
        if (n == 0 || n >= sizeof item)
            return usage_err(err, errlen, "--memory-layers: bad item in '%.60s' (expected e.g. 2,3 or 2-3)", s);
        memcpy(item, p, n);
        item[n] = 0;
        uint64_t lo, hi;
        char *dash = strchr(item, '-');
        if (dash) {
            *dash = 0;
            if (parse_u64(item, &lo) != 0 || parse_u64(dash + 1, &hi) != 0 || lo > hi)
                return usage_err(err, errlen, "--memory-layers: bad range in '%.60s' (expected A-B with A <= B)", s);
        } else if (parse_u64(item, &lo) != 0) {
            return usage_err(err, errlen, "--memory-layers: '%.30s' is not a layer number", item);
        } else {
            hi = lo;
        }
        if (hi >= MSADB_MAX_LAYERS)
            return usage_err(err, errlen, "--memory-layers: layer %llu is out of range (at most %d)",
                             (unsigned long long)hi, MSADB_MAX_LAYERS - 1);
        for (uint64_t l = lo; l <= hi; l++) {
            if (seen[l])
                return usage_err(err, errlen, "--memory-layers: layer %llu listed twice",
                                 (unsigned long long)l);
            seen[l] = 1;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    a->n_memory_layers = 0;
    for (int l = 0; l < MSADB_MAX_LAYERS; l++)
        if (seen[l])
            a->memory_layers[a->n_memory_layers++] = (uint16_t)l;
    a->has_memory_layers = 1;
    return CLI_OK;
}

static int parse_kind(const char *s, size_t n, uint32_t *out)
{
    if (n == 3 && memcmp(s, "all", 3) == 0) {
        *out = MSADB_SUMMARY_ALL;
        return 0;
    }
    for (const cli_kind_name *k = cli_summary_kinds; k->name; k++)
        if (strlen(k->name) == n && memcmp(s, k->name, n) == 0) {
            *out = k->kind;
            return 0;
        }
    return -1;
}

static int parse_summary(cli_cmd cmd, const char *s, uint32_t *out, char *err, size_t errlen)
{
    uint32_t kinds = 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        uint32_t k;
        if (parse_kind(p, n, &k) != 0)
            return usage_err(err, errlen, "--summary: unknown kind in '%.60s' (expected mean, minmax, reps or all)",
                             s);
        kinds |= k;
        if (!comma)
            break;
        p = comma + 1;
    }
    if (cmd == CMD_QUERY && kinds != MSADB_SUMMARY_MEAN && kinds != MSADB_SUMMARY_MINMAX &&
        kinds != MSADB_SUMMARY_REPS)
        return usage_err(err, errlen, "--summary: a query routes by one kind: mean, minmax or reps, got '%.60s'", s);
    *out = kinds;
    return CLI_OK;
}

/* A name-valued option: *out gets values[i] for s == names[i]; otherwise a
 * usage error listing the n names ("expected a, b or c"). */
typedef struct choice {
    const char *name;
    int value;
} choice;

static int parse_choice(const char *opt, const char *s, const choice *t, size_t n, int *out, char *err,
                        size_t errlen)
{
    char list[128] = "";
    for (size_t i = 0; i < n; i++) {
        if (strcmp(s, t[i].name) == 0) {
            *out = t[i].value;
            return CLI_OK;
        }
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", i == 0 ? "" : i + 1 == n ? " or " : ", ", t[i].name);
    }
    return usage_err(err, errlen, "--%s: expected %s, got '%.40s'", opt, list, s);
}

#define CHOICES(t) t, sizeof t / sizeof t[0]

static int parse_dtype(const char *s, int *out, char *err, size_t errlen)
{
    static const choice t[] = {{"f32", MSADB_DTYPE_F32}, {"f16", MSADB_DTYPE_F16}, {"bf16", MSADB_DTYPE_BF16},
                               {"int8", MSADB_DTYPE_INT8}, {"q4", MSADB_DTYPE_Q4}};
    return parse_choice("dtype", s, CHOICES(t), out, err, errlen);
}

int cli_space_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MSADB_NAME_MAX)
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("._-:@/", c)))
            return 0;
    }
    return 1;
}

static int check_space(const char *what, const char *s, char *err, size_t errlen)
{
    if (cli_space_name_ok(s))
        return CLI_OK;
    return usage_err(err, errlen,
                     "%s: invalid space name '%.70s' (1..%d bytes of letters, digits and ._-:@/)",
                     what, s, MSADB_NAME_MAX);
}

/* ------------------------------------------------------------------------ */
/* the parser                                                               */
/* ------------------------------------------------------------------------ */

static int push(const char ***arr, size_t *n, const char *s)
{
    const char **na = realloc((void *)*arr, (*n + 1) * sizeof(char *));
    if (!na)
        return -1;
    na[(*n)++] = s;
    *arr = na;
    return 0;
}

static int find_option(const char *arg, size_t len, char short_name)
{
    for (int i = 0; i < O_COUNT; i++) {
        if (short_name ? opts[i].short_name == short_name
                       : (strlen(opts[i].name) == len && memcmp(opts[i].name, arg, len) == 0) ||
                             (opts[i].alias && strlen(opts[i].alias) == len &&
                              memcmp(opts[i].alias, arg, len) == 0))
            return i;
    }
    return -1;
}

static int set_option(cli_args *a, int id, const char *v, char *err, size_t errlen)
{
    switch (id) {
    case O_JSON: a->json = 1; return CLI_OK;
    case O_QUIET: a->quiet = 1; return CLI_OK;
    case O_HELP: a->help = 1; return CLI_OK;
    case O_EXACT: a->exact = 1; return CLI_OK;
    case O_PER_TOKEN: a->per_token = 1; return CLI_OK;
    case O_SPLIT: a->split = 1; return CLI_OK;
    case O_BINARY_OK: a->binary_ok = 1; return CLI_OK;
    case O_COMMIT_EVERY: return parse_commit_every(v, a, err, errlen);
    case O_NO_MEMORY: a->no_memory = 1; return CLI_OK;
    case O_FORCE_MODEL: a->force_model = 1; return CLI_OK;
    case O_MIN_SCORE: {
        char *end = NULL;
        double x = strtod(v, &end);
        if (!*v || !end || *end || !isfinite(x))
            return usage_err(err, errlen, "--min-score: expected a number, got '%.40s'", v);
        a->min_score = (float)x;
        a->has_min_score = 1;
        return CLI_OK;
    }
    case O_MODEL:
        if (!*v)
            return usage_err(err, errlen, "--model: expected a GGUF file");
        a->model = v;
        return CLI_OK;
    case O_MAX_TOKENS: return parse_u32_opt("max-tokens", v, 1, 1u << 16, &a->max_tokens, err, errlen);
    case O_INTERLEAVE: return parse_u32_opt("interleave", v, 0, 8, &a->interleave, err, errlen);
    case O_FOLLOWUPS: return parse_u32_opt("followups", v, 0, 8, &a->followups, err, errlen);
    case O_QUERY_POS: return parse_u32_opt("query-pos", v, 0, 1u << 24, &a->query_pos, err, errlen);
    case O_TEMPERATURE: return parse_float_opt("temperature", v, 0, 0, 100, &a->temperature, err, errlen);
    case O_TOP_P: return parse_float_opt("top-p", v, 0, 1, 1, &a->top_p, err, errlen);
    case O_SEED:
        if (parse_u64(v, &a->seed) != 0)
            return usage_err(err, errlen, "--seed: expected an unsigned integer, got '%.40s'", v);
        return CLI_OK;
    case O_KEY_FILE: a->key_file = v; return CLI_OK;
    case O_SPACE_KEY_FILE: a->space_key_file = v; return CLI_OK;
    case O_SPACE_PASS_ENV:
        if (!*v)
            return usage_err(err, errlen, "--space-passphrase-env: expected an environment variable name");
        a->space_passphrase_env = v;
        return CLI_OK;
    case O_PASS_ENV:
        if (!*v)
            return usage_err(err, errlen, "--passphrase-env: expected an environment variable name");
        a->passphrase_env = v;
        return CLI_OK;
    case O_LAYERS: return parse_u32_opt("layers", v, 1, MSADB_MAX_LAYERS, &a->layers, err, errlen);
    case O_KV_HEADS: return parse_u32_opt("kv-heads", v, 1, MSADB_MAX_HEADS, &a->kv_heads, err, errlen);
    case O_Q_HEADS: return parse_u32_opt("q-heads", v, 1, 65536, &a->q_heads, err, errlen);
    case O_HEAD_DIM: return parse_u32_opt("head-dim", v, 1, MSADB_MAX_HEAD_DIM, &a->head_dim, err, errlen);
    case O_BLOCK: return parse_u32_opt("block", v, 1, MSADB_MAX_BLOCK, &a->block, err, errlen);
    case O_LAYER: return parse_u32_opt("layer", v, 0, MSADB_MAX_LAYERS - 1, &a->layer, err, errlen);
    case O_SHARDS: return parse_u32_opt("shards", v, 1, MSADB_SHARDS_MAX, &a->shards, err, errlen);
    case O_META:
    case O_WHERE: return parse_kv(id, v, a, err, errlen);
    case O_TTL: return parse_ttl(v, a, err, errlen);
    case O_TEXT:
        if (!*v)
            return usage_err(err, errlen, "--text: the text is empty");
        a->text = v;
        return CLI_OK;
    case O_SEGMENT: {
        static const choice t[] = {{"document", MSADB_SEGMENT_DOCUMENT},
                                   {"paragraph", MSADB_SEGMENT_PARAGRAPH},
                                   {"joined", MSADB_SEGMENT_JOINED}};
        return parse_choice("segment", v, CHOICES(t), &a->segment, err, errlen);
    }
    case O_TOP_K: return parse_u32_opt("top-k", v, 1, MSADB_MAX_TOP_K, &a->top_k, err, errlen);
    case O_MEMORY_LAYERS: return parse_layer_list(v, a, err, errlen);
    case O_DTYPE: return parse_dtype(v, &a->dtype, err, errlen);
    case O_SUMMARY: return parse_summary(a->cmd, v, &a->summary, err, errlen);
    case O_TITLE:
        if (strlen(v) > MSADB_TITLE_MAX)
            return usage_err(err, errlen, "--title: %zu bytes, at most %d", strlen(v), MSADB_TITLE_MAX);
        if (!*v)
            return usage_err(err, errlen, "--title: empty (leave it out to title documents by file name)");
        if (!cli_utf8_valid(v, strlen(v)))
            return usage_err(err, errlen, "--title: not valid UTF-8");
        a->title = v;
        return CLI_OK;
    case O_Q: a->q_file = v; return CLI_OK;
    case O_OUT: a->out = v; return CLI_OK;
    case O_SELECT: {
        static const choice t[] = {{"blocks", MSADB_SELECT_BLOCKS}, {"documents", MSADB_SELECT_DOCUMENTS}};
        return parse_choice("select", v, CHOICES(t), &a->select, err, errlen);
    }
    case O_SPACE:
        if (check_space("--space", v, err, errlen) != CLI_OK)
            return CLI_USAGE;
        if (a->cmd != CMD_QUERY && a->cmd != CMD_SEARCH) {
            a->space = v;
            return CLI_OK;
        }
        if (push(&a->spaces, &a->n_spaces, v) != 0)
            return usage_err(err, errlen, "out of memory");
        return CLI_OK;
    }
    return usage_err(err, errlen, "internal error: option %d", id);
}

/* One "--name[=value]" or "-x" argument at argv[*i]. */
static int parse_option(cli_args *a, int argc, char **argv, int *i, uint64_t *seen, char *err,
                        size_t errlen)
{
    const char *arg = argv[*i];
    const char *inline_val = NULL;
    int id;
    if (arg[1] == '-') {
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        inline_val = eq ? eq + 1 : NULL;
        id = find_option(name, len, 0);
    } else {
        id = arg[2] == 0 ? find_option(NULL, 0, arg[1]) : -1;
    }
    const char *cmd = cli_cmd_name(a->cmd);
    if (id < 0)
        return usage_err(err, errlen, "%s: unknown option '%.60s'", cmd, arg);
    const opt_def *o = &opts[id];
    if (!(o->cmds & (1u << a->cmd)))
        return usage_err(err, errlen, "%s: option --%s does not apply to this command", cmd, o->name);
    int repeatable = (id == O_SPACE && (a->cmd == CMD_QUERY || a->cmd == CMD_SEARCH)) || id == O_META ||
                     id == O_WHERE;
    if ((*seen & (1ull << id)) && !repeatable)
        return usage_err(err, errlen, "%s: option --%s given twice", cmd, o->name);
    *seen |= 1ull << id;
    if (!o->takes_value) {
        if (inline_val)
            return usage_err(err, errlen, "%s: option --%s takes no value", cmd, o->name);
        return set_option(a, id, NULL, err, errlen);
    }
    if (!inline_val) {
        if (*i + 1 >= argc)
            return usage_err(err, errlen, "%s: option --%s needs a value (%s)", cmd, o->name, o->metavar);
        inline_val = argv[++*i];
    }
    return set_option(a, id, inline_val, err, errlen);
}

static cli_cmd find_command(const char *s)
{
    for (int i = CMD_HELP; i < CMD_COUNT; i++)
        if (strcmp(s, cmd_names[i]) == 0)
            return (cli_cmd)i;
    return CMD_NONE;
}

static int need(int have, const char *cmd, const char *opt, char *err, size_t errlen)
{
    return have ? CLI_OK : usage_err(err, errlen, "%s: missing %s", cmd, opt);
}

static int check_init(cli_args *a, uint64_t seen, char *err, size_t errlen)
{
    static const int req[] = {O_LAYERS, O_KV_HEADS, O_Q_HEADS, O_HEAD_DIM};
    if (a->model) {
        /* the model gives the dimensions; memory layers are checked
         * against it once it is loaded */
        for (size_t i = 0; i < 4; i++)
            if (seen & (1ull << req[i]))
                return usage_err(err, errlen,
                                 "init: --%s cannot be combined with --model (the model gives the "
                                 "dimensions)",
                                 opts[req[i]].name);
        return CLI_OK;
    }
    for (size_t i = 0; i < 4; i++)
        if (!(seen & (1ull << req[i])))
            return usage_err(err, errlen, "init: missing --%s (or --model M.gguf)", opts[req[i]].name);
    if (a->q_heads % a->kv_heads != 0)
        return usage_err(err, errlen, "init: --q-heads %u is not a multiple of --kv-heads %u",
                         a->q_heads, a->kv_heads);
    if (a->has_memory_layers) {
        uint32_t last = a->memory_layers[a->n_memory_layers - 1];
        if (last >= a->layers)
            return usage_err(err, errlen,
                             "init: --memory-layers: layer %u is out of range (the model has %u "
                             "layers: 0..%u)",
                             last, a->layers, a->layers - 1);
    }
    return CLI_OK;
}

static int check_rm(cli_args *a, const char **pos, size_t n_pos, char *err, size_t errlen)
{
    if (a->n_where && n_pos > 1)
        return usage_err(err, errlen, "rm: give DOC ids or a filter (--where K=V), not both");
    if ((a->space || a->n_where) && n_pos == 1)
        return CLI_OK; /* every document of the space that passes the filter */
    if (n_pos < 2)
        return usage_err(err, errlen,
                         "rm: missing DOC (document ids to delete, or --space S and/or --where K=V)");
    a->doc_ids = calloc(n_pos - 1, sizeof(uint64_t));
    if (!a->doc_ids)
        return usage_err(err, errlen, "out of memory");
    for (size_t i = 1; i < n_pos; i++) {
        if (parse_u64(pos[i], &a->doc_ids[i - 1]) != 0)
            return usage_err(err, errlen, "rm: '%.40s' is not a document id", pos[i]);
    }
    a->n_doc_ids = n_pos - 1;
    return CLI_OK;
}

static int check_space_cmd(cli_args *a, const char **pos, size_t n_pos, char *err, size_t errlen)
{
    if (n_pos < 2)
        return usage_err(err, errlen, "space: missing action (create, drop or ls)");
    const char *act = pos[1];
    if (strcmp(act, "ls") == 0) {
        a->space_action = SPACE_LS;
        if (a->space_key_file || a->space_passphrase_env)
            return usage_err(err, errlen, "space ls: --space-key-file and --space-passphrase-env do not apply");
        return n_pos == 2 ? CLI_OK : usage_err(err, errlen, "space ls: unexpected argument '%.40s'", pos[2]);
    }
    if (strcmp(act, "create") == 0)
        a->space_action = SPACE_CREATE;
    else if (strcmp(act, "drop") == 0)
        a->space_action = SPACE_DROP;
    else
        return usage_err(err, errlen, "space: unknown action '%.40s' (expected create, drop or ls)", act);
    if (n_pos != 3)
        return usage_err(err, errlen, "space %s: expected exactly one NAME", act);
    a->space_name = pos[2];
    return check_space("space", pos[2], err, errlen);
}

/* The QUESTION of query's model form and of search: one argument. */
static int check_question(cli_args *a, const char **pos, size_t n_pos, char *err, size_t errlen)
{
    const char *cmd = cli_cmd_name(a->cmd);
    if (n_pos < 2)
        return usage_err(err, errlen, "%s: missing QUESTION", cmd);
    if (n_pos > 2)
        return usage_err(err, errlen,
                         "%s: unexpected argument '%.40s' (quote the question as one argument)",
                         cmd, pos[2]);
    if (!*pos[1])
        return usage_err(err, errlen, "%s: the question is empty", cmd);
    a->question = pos[1];
    a->use_model = 1;
    return CLI_OK;
}

/* query: the tensor form (--q FILE --layer N) and the model form (a
 * question; the model from -m, the store or $MSADB_MODEL) take different
 * options. */
static int check_query(cli_args *a, const char **pos, size_t n_pos, uint64_t seen, char *err,
                       size_t errlen)
{
    static const int tensor_only[] = {O_Q, O_LAYER, O_OUT, O_PER_TOKEN};
    static const int model_only[] = {O_MODEL, O_NO_MEMORY, O_MAX_TOKENS, O_TEMPERATURE, O_TOP_P,
                                     O_SEED, O_INTERLEAVE, O_FOLLOWUPS, O_QUERY_POS, O_FORCE_MODEL,
                                     O_MIN_SCORE};
    int tensor = 0;
    for (size_t i = 0; i < sizeof tensor_only / sizeof tensor_only[0]; i++)
        tensor |= (seen >> tensor_only[i]) & 1;
    if (!tensor)
        return check_question(a, pos, n_pos, err, errlen);
    for (size_t i = 0; i < sizeof model_only / sizeof model_only[0]; i++)
        if (seen & (1ull << model_only[i]))
            return usage_err(err, errlen,
                             "query: --%s applies to a question, not to query vectors (--q)",
                             opts[model_only[i]].name);
    if (n_pos > 1)
        return usage_err(err, errlen,
                         "query: unexpected argument '%.40s' (a question and --q FILE are two "
                         "forms of query: give one)",
                         pos[1]);
    if (need(a->q_file != NULL, "query", "--q FILE", err, errlen) != CLI_OK)
        return CLI_USAGE;
    return need((seen >> O_LAYER) & 1, "query", "--layer N", err, errlen);
}

/* show DB DOC */
static int check_show(cli_args *a, const char **pos, size_t n_pos, char *err, size_t errlen)
{
    if (n_pos != 2)
        return usage_err(err, errlen, "show: expected DB and one DOC (a document id)");
    uint64_t id;
    if (parse_u64(pos[1], &id) != 0)
        return usage_err(err, errlen, "show: '%.40s' is not a document id", pos[1]);
    a->doc_ids = calloc(1, sizeof *a->doc_ids);
    if (!a->doc_ids)
        return usage_err(err, errlen, "out of memory");
    a->doc_ids[0] = id;
    a->n_doc_ids = 1;
    return CLI_OK;
}

/* update DB DOC (FILE | --text TEXT) */
static int check_update(cli_args *a, const char **pos, size_t n_pos, char *err, size_t errlen)
{
    if (n_pos < 2)
        return usage_err(err, errlen, "update: missing DOC (the id of the document to replace)");
    uint64_t id;
    if (parse_u64(pos[1], &id) != 0)
        return usage_err(err, errlen, "update: '%.40s' is not a document id", pos[1]);
    if (n_pos > 3)
        return usage_err(err, errlen, "update: unexpected argument '%.40s'", pos[3]);
    if ((n_pos == 3) == (a->text != NULL))
        return usage_err(err, errlen, "update: give the new content as FILE or as --text TEXT (one of them)");
    a->doc_ids = calloc(1, sizeof *a->doc_ids);
    if (!a->doc_ids)
        return usage_err(err, errlen, "out of memory");
    a->doc_ids[0] = id;
    a->n_doc_ids = 1;
    if (n_pos == 3) {
        a->files = pos + 2;
        a->n_files = 1;
    }
    return CLI_OK;
}

/* Checks positional arguments and required options per command. */
static int check_command(cli_args *a, const char **pos, size_t n_pos, uint64_t seen, char *err,
                         size_t errlen)
{
    const char *cmd = cli_cmd_name(a->cmd);
    if (a->cmd == CMD_HELP) {
        if (n_pos > 1)
            return usage_err(err, errlen, "help: expected at most one COMMAND");
        if (n_pos == 1 && (a->help_cmd = find_command(pos[0])) == CMD_NONE)
            return usage_err(err, errlen, "help: unknown command '%.40s'", pos[0]);
        return CLI_OK;
    }
    if (a->cmd == CMD_VERSION || a->cmd == CMD_DOCTOR)
        return n_pos ? usage_err(err, errlen, "%s: unexpected argument '%.40s'", cmd, pos[0]) : CLI_OK;
    if (n_pos == 0)
        return usage_err(err, errlen, "%s: missing DB (the store directory)", cmd);
    a->db = pos[0];
    if (a->key_file && a->passphrase_env)
        return usage_err(err, errlen, "%s: give --key-file or --passphrase-env, not both", cmd);
    if (a->space_key_file && a->space_passphrase_env)
        return usage_err(err, errlen, "%s: give --space-key-file or --space-passphrase-env, not both", cmd);
    if ((a->space_key_file || a->space_passphrase_env) && a->cmd != CMD_SPACE && !a->space && a->n_spaces != 1)
        return usage_err(err, errlen, "%s: --space-key-file and --space-passphrase-env need --space S, given once "
                         "(the space whose key it is)", cmd);
    switch (a->cmd) {
    case CMD_INIT:
        if (n_pos > 1)
            return usage_err(err, errlen, "init: unexpected argument '%.40s'", pos[1]);
        a->use_model = a->model != NULL;
        return check_init(a, seen, err, errlen);
    case CMD_INGEST:
        if (n_pos < 2)
            return usage_err(err, errlen,
                             "ingest: missing FILE (text files, safetensors or X.keys.npy)");
        a->files = pos + 1;
        a->n_files = n_pos - 1;
        return CLI_OK;
    case CMD_QUERY: return check_query(a, pos, n_pos, seen, err, errlen);
    case CMD_SEARCH: return check_question(a, pos, n_pos, err, errlen);
    case CMD_SHOW: return check_show(a, pos, n_pos, err, errlen);
    case CMD_UPDATE: return check_update(a, pos, n_pos, err, errlen);
    case CMD_RM: return check_rm(a, pos, n_pos, err, errlen);
    case CMD_SPACE: return check_space_cmd(a, pos, n_pos, err, errlen);
    case CMD_SPLIT:
    case CMD_MERGE:
        if (a->cmd == CMD_SPLIT && need((seen >> O_SHARDS) & 1, "split", "--shards N", err, errlen) != CLI_OK)
            return CLI_USAGE;
        if (n_pos != 2)
            return usage_err(err, errlen, "%s: expected %s", cmd, a->cmd == CMD_SPLIT ? "DB and DIR" : "DIR and DB");
        a->files = pos + 1;
        a->n_files = 1;
        return CLI_OK;
    case CMD_DUMP:
    case CMD_LOAD:
        if (n_pos != 2)
            return usage_err(err, errlen, "%s: expected DB and FILE", cmd);
        a->files = pos + 1;
        a->n_files = 1;
        return CLI_OK;
    default:
        if (n_pos > 1)
            return usage_err(err, errlen, "%s: unexpected argument '%.40s'", cmd, pos[1]);
        return CLI_OK;
    }
}

static void args_defaults(cli_args *a)
{
    memset(a, 0, sizeof *a);
    a->dtype = -1;
    a->top_k = 16;
    a->select = MSADB_SELECT_BLOCKS;
    a->max_tokens = 64;
    a->followups = 2;
    a->top_p = 1.0f;
}

int cli_parse(int argc, char **argv, cli_args *a, char *err, size_t errlen)
{
    args_defaults(a);
    if (errlen)
        err[0] = 0;
    if (argc < 2)
        return usage_err(err, errlen, "missing COMMAND");
    const char *c = argv[1];
    if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0)
        c = "help";
    else if (strcmp(c, "--version") == 0 || strcmp(c, "-V") == 0)
        c = "version";
    a->cmd = find_command(c);
    if (a->cmd == CMD_NONE)
        return usage_err(err, errlen, "unknown command '%.40s'", c);
    const char **pos = NULL;
    size_t n_pos = 0;
    uint64_t seen = 0;
    int only_pos = 0, rc = CLI_OK;
    for (int i = 2; i < argc && rc == CLI_OK; i++) {
        const char *arg = argv[i];
        if (!only_pos && strcmp(arg, "--") == 0)
            only_pos = 1;
        else if (!only_pos && arg[0] == '-' && arg[1] != 0)
            rc = parse_option(a, argc, argv, &i, &seen, err, errlen);
        else if (push(&pos, &n_pos, arg) != 0)
            rc = usage_err(err, errlen, "out of memory");
    }
    if (rc == CLI_OK && a->help) {
        a->help_cmd = a->cmd;
        a->cmd = CMD_HELP;
    } else if (rc == CLI_OK) {
        rc = check_command(a, pos, n_pos, seen, err, errlen);
    }
    a->pos_owner_ = pos; /* a->files points into it */
    return rc;
}

void cli_args_free(cli_args *a)
{
    free((void *)a->pos_owner_);
    free((void *)a->spaces);
    free((void *)a->meta);
    free((void *)a->where);
    free(a->doc_ids);
    a->pos_owner_ = NULL;
    a->spaces = NULL;
    a->meta = a->where = NULL;
    a->doc_ids = NULL;
}
