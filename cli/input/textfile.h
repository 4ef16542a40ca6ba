/* textfile.h -- text input for the --model commands (textfile.c). */
#ifndef MSADB_CLI_TEXTFILE_H
#define MSADB_CLI_TEXTFILE_H

#include <stddef.h>

/* One document cut from a text file. */
typedef struct para {
    size_t start, end;  /* byte range in the file */
    long section;       /* index into the headings, -1 before the first */
} para;

typedef struct split_text {
    para *p;
    size_t n, cap;
    char **headings;    /* heading texts, NUL-terminated */
    size_t n_headings, cap_headings;
} split_text;

/* Reads a whole file ("-": stdin); *buf is malloc'ed and NUL-terminated.
 * Returns CLI_OK, or CLI_ERROR after a message naming the file. */
int cli_read_file(const char *path, char **buf, size_t *len);

/* Whether text read from `path` looks like text: no NUL byte, and at most
 * 1% of its bytes outside valid UTF-8 sequences.  CLI_OK, or CLI_ERROR
 * after a message naming the file, the evidence and --binary-ok. */
int cli_text_check(const char *path, const char *text, size_t len);

/* Cuts text into paragraphs: runs of non-blank lines; a heading line ends a
 * paragraph and names the section that follows; blank lines and "#" lines
 * inside a fenced code block belong to the block.  0, or -1 out of memory
 * (s is then still to be freed). */
int cli_split_paragraphs(const char *text, size_t len, split_text *s);
void cli_split_free(split_text *s);

#endif
