/* textfile.c -- text input for the --model commands: whole files (or
 * stdin) read into memory, and the --split paragraph splitter (Markdown-ish
 * headings name the sections, fenced code blocks stay whole). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------------ */
/* reading                                                                  */
/* ------------------------------------------------------------------------ */

/* Reads a whole file; *buf is malloc'ed (NUL-terminated), or a message. */
int cli_read_file(const char *path, char **buf, size_t *len)
{
    char err[256];
    int fd;
    struct stat sb;
    *buf = NULL;
    *len = 0;
    if (tf_input_open(path, &fd, &sb, err, sizeof err) != 0)
        return cli_error("%s: %s", path, err);
    size_t max = tf_input_max();
    int rc = 0;
    if (S_ISREG(sb.st_mode) && (uint64_t)sb.st_size > max)
        rc = cli_error("%s: %llu bytes, more than the %zu bytes of text read at once (split the "
                       "file, or set MSADB_INPUT_MAX)",
                       path, (unsigned long long)sb.st_size, max);
    else if (tf_read_fd(fd, max, (uint8_t **)buf, len, err, sizeof err) != 0)
        rc = cli_error("%s: %s", path, err);
    close(fd);
    return rc;
}

int cli_text_check(const char *path, const char *text, size_t len)
{
    const char *nul = memchr(text, 0, len);
    if (nul)
        return cli_error("%s: does not look like text (a NUL byte at offset %zu); give --binary-ok to "
                         "ingest it anyway",
                         path, (size_t)(nul - text));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < len;) {
        size_t l = cli_utf8_seq((const unsigned char *)text + i, len - i);
        if (l == 0) {
            if (!bad++)
                first = i;
            l = 1;
        }
        i += l;
    }
    if (bad * 100 > len)
        return cli_error("%s: does not look like text (%zu of %zu bytes are not valid UTF-8, the first at "
                         "offset %zu); give --binary-ok to ingest it anyway",
                         path, bad, len, first);
    return CLI_OK;
}

void cli_split_free(split_text *s)
{
    for (size_t i = 0; i < s->n_headings; i++)
        free(s->headings[i]);
    free(s->headings);
    free(s->p);
    memset(s, 0, sizeof *s);
}

static int is_blank(const char *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (l[i] != ' ' && l[i] != '\t' && l[i] != '\r' && l[i] != '\f' && l[i] != '\v')
            return 0;
    return 1;
}

/* Up to 3 spaces of indentation; returns the offset of the content. */
static size_t indent(const char *l, size_t n)
{
    size_t i = 0;
    while (i < n && i < 3 && l[i] == ' ')
        i++;
    return i;
}

/* A fence line: ``` or ~~~ (3 or more) after at most 3 spaces. */
static int fence_char(const char *l, size_t n)
{
    size_t i = indent(l, n);
    if (i + 3 <= n && (l[i] == '`' || l[i] == '~') && l[i + 1] == l[i] && l[i + 2] == l[i])
        return l[i];
    return 0;
}

/* An ATX heading: 1..6 '#' then a space, a tab or the end of the line.
 * On success *t, *tn is the heading's text (closing #s and spaces cut). */
static int heading(const char *l, size_t n, const char **t, size_t *tn)
{
    size_t i = indent(l, n), h = 0;
    while (i + h < n && l[i + h] == '#')
        h++;
    if (h == 0 || h > 6 || (i + h < n && l[i + h] != ' ' && l[i + h] != '\t' && l[i + h] != '\r'))
        return 0;
    size_t a = i + h, b = n;
    while (a < b && (l[a] == ' ' || l[a] == '\t'))
        a++;
    while (b > a && (l[b - 1] == ' ' || l[b - 1] == '\t' || l[b - 1] == '\r'))
        b--;
    size_t c = b; /* optional closing sequence: " ##" */
    while (c > a && l[c - 1] == '#')
        c--;
    if (c < b && (c == a || l[c - 1] == ' ' || l[c - 1] == '\t')) {
        b = c;
        while (b > a && (l[b - 1] == ' ' || l[b - 1] == '\t'))
            b--;
    }
    *t = l + a;
    *tn = b - a;
    return 1;
}

static int push_para(split_text *s, size_t start, size_t end)
{
    if (cli_grow(&s->p, &s->cap, s->n + 1, sizeof *s->p, 32))
        return -1;
    s->p[s->n++] = (para){start, end, (long)s->n_headings - 1};
    return 0;
}

static int push_heading(split_text *s, const char *t, size_t n)
{
    if (cli_grow(&s->headings, &s->cap_headings, s->n_headings + 1, sizeof *s->headings, 16))
        return -1;
    char *h = strndup(t, n);
    if (!h)
        return -1;
    for (char *c = h; *c; c++) /* a title is one line */
        if (*c == '\t' || *c == '\r' || *c == '\n')
            *c = ' ';
    s->headings[s->n_headings++] = h;
    return 0;
}

/* Paragraphs: runs of non-blank lines; a heading line ends a paragraph and
 * names the section that follows; blank lines and "#" lines inside a fenced
 * code block belong to the block. */
int cli_split_paragraphs(const char *text, size_t len, split_text *s)
{
    memset(s, 0, sizeof *s);
    size_t pos = 0, para_start = 0;
    int in_para = 0, fence = 0;
    size_t para_end = 0;
    while (pos < len) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t eol = nl ? (size_t)(nl - text) : len, next = nl ? eol + 1 : len;
        const char *l = text + pos;
        size_t n = eol - pos;
        const char *ht;
        size_t hn;
        if (fence) {
            if (fence_char(l, n) == fence)
                fence = 0;
            para_end = eol;
        } else if (is_blank(l, n)) {
            if (in_para && push_para(s, para_start, para_end))
                return -1;
            in_para = 0;
        } else if (heading(l, n, &ht, &hn)) {
            if (in_para && push_para(s, para_start, para_end))
                return -1;
            in_para = 0;
            if (push_heading(s, ht, hn))
                return -1;
        } else {
            if (!in_para) {
                in_para = 1;
                para_start = pos;
            }
            fence = fence_char(l, n);
            para_end = eol;
        }
        pos = next;
    }
    if (in_para && push_para(s, para_start, para_end))
        return -1;
    /* a trailing '\r' of a CRLF line is not part of the paragraph */
    for (size_t i = 0; i < s->n; i++)
        while (s->p[i].end > s->p[i].start && text[s->p[i].end - 1] == '\r')
            s->p[i].end--;
    return 0;
}

