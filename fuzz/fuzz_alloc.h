
/*
 * Copyright (C) RedisGate authors
 */


/*
 * The fuzzers' allocator: malloc() blocks kept in a list and all freed
 * after each input, as an nginx pool would be, so LeakSanitizer still
 * reports what the code under test leaks outside it (yajl, say).
 */


#ifndef _FUZZ_ALLOC_H_INCLUDED_
#define _FUZZ_ALLOC_H_INCLUDED_


#include <stdlib.h>
#include <stdio.h>

#include "ngx_http_redisgate_parse.h"


typedef struct fuzz_block_s  fuzz_block_t;

struct fuzz_block_s {
    fuzz_block_t  *next;
    /* the caller's bytes follow, aligned as malloc() aligns */
    long double    data[];
};


static fuzz_block_t  *fuzz_blocks;


static void *
fuzz_alloc(void *data, size_t size)
{
    fuzz_block_t  *b;

    (void) data;

    b = malloc(sizeof(fuzz_block_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->next = fuzz_blocks;
    fuzz_blocks = b;

    return b->data;
}


static void
fuzz_free_all(void)
{
    fuzz_block_t  *b, *next;

    for (b = fuzz_blocks; b; b = next) {
        next = b->next;
        free(b);
    }

    fuzz_blocks = NULL;
}


static ngx_http_redisgate_alloc_t  fuzz_allocator = { fuzz_alloc, NULL };


#define FUZZ_CHECK(cond)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,\
                    #cond);                                                  \
            abort();                                                         \
        }                                                                    \
    } while (0)


#endif /* _FUZZ_ALLOC_H_INCLUDED_ */
