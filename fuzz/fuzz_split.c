/* fuzz_split.c -- the --split paragraph splitter (cli_split_paragraphs in
 * cli/input/textfile.c).  Every paragraph must be a non-empty, in-order,
 * non-overlapping range of the input that starts on a non-blank line; its
 * section must name a heading found before it; headings hold no line
 * breaks. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    split_text s;
    const char *text = (const char *)data;
    if (cli_split_paragraphs(text, size, &s) != 0)
        abort();
    size_t prev_end = 0;
    long prev_section = -1;
    for (size_t i = 0; i < s.n; i++) {
        const para *p = &s.p[i];
        if (p->start >= p->end || p->end > size || (i > 0 && p->start <= prev_end))
            abort();
        if (p->section < prev_section || p->section >= (long)s.n_headings)
            abort();
        char c = text[p->start];
        if (c == '\n' || (p->start > 0 && text[p->start - 1] != '\n'))
            abort();
        prev_end = p->end;
        prev_section = p->section;
    }
    for (size_t i = 0; i < s.n_headings; i++)
        if (strpbrk(s.headings[i], "\r\n\t"))
            abort();
    cli_split_free(&s);
    return 0;
}
