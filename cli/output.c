/* output.c -- messages, progress, tables and JSON for the msadb program. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* messages                                                                 */
/* ------------------------------------------------------------------------ */

static int progress_shown;

static void clear_progress(void)
{
    if (progress_shown) {
        fputs("\r\033[K", stderr);
        progress_shown = 0;
    }
}

int cli_error(const char *fmt, ...)
{
    clear_progress();
    va_list ap;
    va_start(ap, fmt);
    fputs("msadb: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_ERROR;
}

int cli_error_rc(int rc, const char *fmt, ...)
{
    clear_progress();
    va_list ap;
    va_start(ap, fmt);
    fputs("msadb: ", stderr);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ": %s\n", msadb_strerror(rc));
    va_end(ap);
    return CLI_ERROR;
}

static int tty_flag(int fd, int *cache)
{
    if (*cache < 0)
        *cache = isatty(fd) ? 1 : 0;
    return *cache;
}

int cli_stdout_tty(void)
{
    static int c = -1;
    return tty_flag(1, &c);
}

int cli_stderr_tty(void)
{
    static int c = -1;
    return tty_flag(2, &c);
}

void cli_progress(const cli_args *a, const char *fmt, ...)
{
    if (a->quiet || !cli_stderr_tty())
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("\r\033[Kmsadb: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
    progress_shown = 1;
}

void cli_progress_end(const cli_args *a)
{
    (void)a;
    clear_progress();
}

double cli_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                     */
/* ------------------------------------------------------------------------ */

int cli_json_print(json_t *v)
{
    if (!v)
        return cli_error("out of memory");
    size_t flags = JSON_REAL_PRECISION(9) | (cli_stdout_tty() ? JSON_INDENT(2) : JSON_COMPACT);
    int rc = json_dumpf(v, stdout, flags);
    json_decref(v);
    fputc('\n', stdout);
    if (rc != 0 || fflush(stdout) != 0)
        return cli_error("cannot write to stdout");
    return CLI_OK;
}

size_t cli_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

int cli_utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0, l; i < n; i += l)
        if ((l = cli_utf8_seq((const unsigned char *)s + i, n - i)) == 0 || s[i] == 0)
            return 0;
    return 1;
}

void cli_utf8_fix(char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0, l; i < n; i += l)
        if ((l = cli_utf8_seq((const unsigned char *)s + i, n - i)) == 0) {
            s[i] = '?';
            l = 1;
        }
}

json_t *cli_json_bytes(const char *s, size_t n)
{
    char *buf = malloc(n * 3 + 1);
    if (!buf)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t l = cli_utf8_seq((const unsigned char *)s + i, n - i);
        if (l == 0 || s[i] == 0) {
            memcpy(buf + o, "\xef\xbf\xbd", 3); /* U+FFFD */
            o += 3;
            i++;
        } else {
            memcpy(buf + o, s + i, l);
            o += l;
            i += l;
        }
    }
    json_t *j = json_stringn(buf, o);
    free(buf);
    return j;
}

/* ------------------------------------------------------------------------ */
/* tables                                                                   */
/* ------------------------------------------------------------------------ */

struct cli_table {
    size_t ncols, nrows, cap;
    char **cells; /* (nrows + 1) * ncols, row 0 = headers */
};

static char *dup_cell(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d)
        return NULL;
    for (char *p = d; *p; p++) /* keep rows on one line */
        if (*p == '\t' || *p == '\n' || *p == '\r')
            *p = ' ';
    return d;
}

cli_table *cli_table_new(size_t ncols, const char *const *headers)
{
    cli_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ncols = ncols;
    cli_table_add(t, headers);
    return t;
}

void cli_table_add(cli_table *t, const char *const *cells)
{
    if (!t)
        return;
    size_t row = t->cells ? t->nrows + 1 : 0;
    if (cli_grow(&t->cells, &t->cap, row + 1, t->ncols * sizeof(char *), 16))
        return;
    for (size_t c = 0; c < t->ncols; c++)
        t->cells[row * t->ncols + c] = dup_cell(cells[c]);
    if (row > 0)
        t->nrows++;
}

void cli_table_addf(cli_table *t, const char *fmt, ...)
{
    if (!t)
        return;
    char *line = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    const char **cells = calloc(t->ncols, sizeof(char *));
    if (cells) {
        char *p = line;
        for (size_t c = 0; c < t->ncols; c++) {
            cells[c] = p ? p : "";
            char *tab = p ? strchr(p, '\t') : NULL;
            if (tab && c + 1 < t->ncols) {
                *tab = 0;
                p = tab + 1;
            } else {
                p = NULL;
            }
        }
        cli_table_add(t, cells);
        free(cells);
    }
    free(line);
}

/* Display width of a UTF-8 string (code points; good enough for a table). */
static size_t width(const char *s)
{
    size_t w = 0;
    for (; s && *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

void cli_table_print(cli_table *t, FILE *fp)
{
    if (!t || !t->cells)
        return;
    int tty = fp == stdout ? cli_stdout_tty() : 0;
    size_t *wid = calloc(t->ncols, sizeof(size_t));
    if (!wid)
        return;
    for (size_t r = 0; r <= t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t w = width(t->cells[r * t->ncols + c]);
            if (w > wid[c])
                wid[c] = w;
        }
    for (size_t r = 0; r <= t->nrows; r++) {
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r * t->ncols + c];
            s = s ? s : "";
            if (!tty) {
                fprintf(fp, "%s%s", c ? "\t" : "", s);
            } else if (c + 1 == t->ncols) {
                fputs(s, fp);
            } else {
                fputs(s, fp);
                for (size_t k = width(s); k < wid[c] + 2; k++)
                    fputc(' ', fp);
            }
        }
        fputc('\n', fp);
    }
    free(wid);
}

void cli_table_free(cli_table *t)
{
    if (!t)
        return;
    if (t->cells)
        for (size_t i = 0; i < (t->nrows + 1) * t->ncols; i++)
            free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* signatures                                                               */
/* ------------------------------------------------------------------------ */

void cli_layers_str(const msadb_signature *sig, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (uint32_t i = 0; i < sig->n_memory_layers && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%u", i ? "," : "", sig->memory_layers[i]);
}

const cli_kind_name cli_summary_kinds[] = {
    {MSADB_SUMMARY_MEAN, "mean"}, {MSADB_SUMMARY_MINMAX, "minmax"}, {MSADB_SUMMARY_REPS, "reps"}, {0, NULL}};

const char *cli_summary_name(uint32_t kind)
{
    for (const cli_kind_name *k = cli_summary_kinds; k->name; k++)
        if (k->kind == kind)
            return k->name;
    return "?";
}

void cli_summary_str(uint32_t kinds, char *buf, size_t cap)
{
    size_t o = 0;
    buf[0] = 0;
    for (const cli_kind_name *k = cli_summary_kinds; k->name && o < cap; k++)
        if (kinds & k->kind)
            o += (size_t)snprintf(buf + o, cap - o, "%s%s", o ? "," : "", k->name);
}

json_t *cli_signature_json(const msadb_signature *sig)
{
    json_t *layers = json_array();
    for (uint32_t i = 0; layers && i < sig->n_memory_layers; i++)
        json_array_append_new(layers, json_integer(sig->memory_layers[i]));
    json_t *kinds = json_array();
    for (const cli_kind_name *k = cli_summary_kinds; kinds && k->name; k++)
        if (sig->summary_kinds & k->kind)
            json_array_append_new(kinds, json_string(k->name));
    const char *dt = msadb_dtype_name((int)sig->dtype);
    return json_pack("{s:I, s:I, s:I, s:I, s:o, s:I, s:s, s:o, s:s}", "layers",
                     (json_int_t)sig->n_layers, "kv_heads", (json_int_t)sig->n_kv_heads,
                     "q_heads", (json_int_t)sig->n_q_heads, "head_dim", (json_int_t)sig->head_dim,
                     "memory_layers", layers, "block", (json_int_t)sig->block_size, "dtype",
                     dt ? dt : "?", "summary", kinds, "positions",
                     sig->position_scheme == MSADB_POSITIONS_DOCUMENT ? "document" : "?");
}

static int json_u32(json_t *o, const char *key, uint32_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX) {
        snprintf(err, errlen, "signature: '%s' is missing or not an unsigned integer", key);
        return -1;
    }
    *out = (uint32_t)json_integer_value(v);
    return 0;
}

int cli_signature_from_json(json_t *j, msadb_signature *sig, char *err, size_t errlen)
{
    memset(sig, 0, sizeof *sig);
    if (!json_is_object(j)) {
        snprintf(err, errlen, "signature is not a JSON object");
        return -1;
    }
    if (json_u32(j, "layers", &sig->n_layers, err, errlen) ||
        json_u32(j, "kv_heads", &sig->n_kv_heads, err, errlen) ||
        json_u32(j, "q_heads", &sig->n_q_heads, err, errlen) ||
        json_u32(j, "head_dim", &sig->head_dim, err, errlen) ||
        json_u32(j, "block", &sig->block_size, err, errlen))
        return -1;
    json_t *ml = json_object_get(j, "memory_layers");
    if (!json_is_array(ml) || json_array_size(ml) == 0 || json_array_size(ml) > MSADB_MAX_LAYERS) {
        snprintf(err, errlen, "signature: 'memory_layers' is not a list of 1..%d layers",
                 MSADB_MAX_LAYERS);
        return -1;
    }
    sig->n_memory_layers = (uint32_t)json_array_size(ml);
    for (size_t i = 0; i < json_array_size(ml); i++) {
        json_t *v = json_array_get(ml, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= MSADB_MAX_LAYERS) {
            snprintf(err, errlen, "signature: 'memory_layers' entry %zu is not a layer index", i);
            return -1;
        }
        sig->memory_layers[i] = (uint16_t)json_integer_value(v);
    }
    json_t *dt = json_object_get(j, "dtype");
    int d = json_is_string(dt) ? msadb_dtype_parse(json_string_value(dt)) : MSADB_EINVAL;
    if (d < 0) {
        snprintf(err, errlen, "signature: 'dtype' is missing or unknown");
        return -1;
    }
    sig->dtype = (uint32_t)d;
    json_t *kinds = json_object_get(j, "summary");
    if (!json_is_array(kinds)) {
        snprintf(err, errlen, "signature: 'summary' is not a list of kinds");
        return -1;
    }
    for (size_t i = 0; i < json_array_size(kinds); i++) {
        const char *k = json_string_value(json_array_get(kinds, i));
        const cli_kind_name *kn = cli_summary_kinds;
        while (kn->name && !(k && strcmp(k, kn->name) == 0))
            kn++;
        if (!kn->name) {
            snprintf(err, errlen, "signature: unknown summary kind");
            return -1;
        }
        sig->summary_kinds |= kn->kind;
    }
    json_t *pos = json_object_get(j, "positions");
    if (!json_is_string(pos) || strcmp(json_string_value(pos), "document") != 0) {
        snprintf(err, errlen, "signature: 'positions' is not \"document\"");
        return -1;
    }
    sig->position_scheme = MSADB_POSITIONS_DOCUMENT;
    if (msadb_signature_validate(sig) != 0) {
        snprintf(err, errlen, "signature is not valid (dimensions out of range or inconsistent)");
        return -1;
    }
    return 0;
}

int cli_grow(void *pp, size_t *cap, size_t n, size_t size, size_t first)
{
    if (n <= *cap)
        return 0;
    size_t nc = *cap ? *cap : (first ? first : 1);
    while (nc < n)
        nc = nc > SIZE_MAX / 2 ? n : nc * 2;
    void *np = size && nc <= SIZE_MAX / size ? realloc(*(void **)pp, nc * size) : NULL;
    if (!np)
        return -1;
    *(void **)pp = np;
    *cap = nc;
    return 0;
}

json_t *cli_model_json(const msadb_model_id *m)
{
    char hex[2 * MSADB_MODEL_HASH_BYTES + 1];
    for (int i = 0; i < MSADB_MODEL_HASH_BYTES; i++)
        snprintf(hex + 2 * i, 3, "%02x", m->hash[i]);
    return json_pack("{s:o, s:s, s:I}", "path", cli_json_bytes(m->path, strlen(m->path)),
                     "blake2b", hex, "file_size", (json_int_t)m->file_size);
}

void cli_time_str(int64_t t, char *buf, size_t cap)
{
    time_t tt = (time_t)t;
    struct tm tm;
    buf[0] = 0;
    if (cap && gmtime_r(&tt, &tm))
        strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

json_t *cli_meta_json(const char *meta, size_t len)
{
    json_t *o = json_object();
    char term[MSADB_META_KEY_MAX + MSADB_META_VALUE_MAX + 2];
    for (size_t i = 0; o && i < len;) {
        const char *nl = memchr(meta + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - meta) : len, n = end - i;
        if (n >= sizeof term || !cli_utf8_valid(meta + i, n))
            break;
        memcpy(term, meta + i, n);
        term[n] = 0;
        if (msadb_meta_term_check(term) != 0)
            break;
        char *eq = strchr(term, '=');
        *eq = 0;
        json_object_set_new(o, term, json_string(eq + 1));
        i = end + 1;
        if (i >= len) /* every line was a term */
            return o;
    }
    json_decref(o);
    return NULL;
}
