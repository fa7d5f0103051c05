/* Scratch memory of the kernel calls (fastbn/_kernels.pyx): one block per call, carved into the
 * pieces its path needs (per-chunk partials, merge weights, tiled coefficients, ...).
 *
 * Per-chunk partials can reach plan.max_partials values: allocating them anew for every call
 * would map fresh pages from the OS each time (a page fault per 4 KiB), so each OS thread keeps
 * one grow-only buffer for its next call, at most `keep` bytes, freed when the thread exits (a
 * pthread key's destructor). Larger requests get a block of their own, freed after the call.
 * A buffer serves one kernel call at a time: the thread that made the call holds it until the
 * call returns (its worker threads write into it through pointers, and a thread never runs two
 * kernel calls at once).
 */
#ifndef FASTBN_SCRATCH_H
#define FASTBN_SCRATCH_H

#include <pthread.h>
#include <stdlib.h>

#define FASTBN_SCRATCH_ALIGN 64

typedef struct {
    void *data;
    size_t bytes;
} fastbn_thread_buffer;

static pthread_key_t fastbn_scratch_key;
static __thread fastbn_thread_buffer *fastbn_scratch_mine = NULL;

static void fastbn_scratch_free_buffer(void *p)
{
    fastbn_thread_buffer *buffer = (fastbn_thread_buffer *)p;
    free(buffer->data);
    free(buffer);
}

/* Create the key whose destructor frees a thread's buffer: once, at import. 0 on success. */
static int fastbn_scratch_init(void)
{
    return pthread_key_create(&fastbn_scratch_key, fastbn_scratch_free_buffer);
}

static void *fastbn_aligned_alloc(size_t bytes)
{
    void *p = NULL;
    if (posix_memalign(&p, FASTBN_SCRATCH_ALIGN, bytes ? bytes : FASTBN_SCRATCH_ALIGN))
        return NULL;
    return p;
}

/* `bytes` of uninitialised memory aligned to 64 bytes, or NULL when out of memory: this
 * thread's buffer when `bytes` <= `keep` (*owned = 0), else a block of its own (*owned = 1),
 * which fastbn_scratch_release frees. */
static void *fastbn_scratch_get(size_t bytes, size_t keep, int *owned)
{
    fastbn_thread_buffer *buffer = fastbn_scratch_mine;
    if (bytes > keep) {
        *owned = 1;
        return fastbn_aligned_alloc(bytes);
    }
    *owned = 0;
    if (buffer == NULL) {
        buffer = (fastbn_thread_buffer *)calloc(1, sizeof *buffer);
        if (buffer == NULL)
            return NULL;
        if (pthread_setspecific(fastbn_scratch_key, buffer)) {
            free(buffer);
            return NULL;
        }
        fastbn_scratch_mine = buffer;
    }
    if (buffer->data == NULL || buffer->bytes < bytes) {
        free(buffer->data);
        buffer->bytes = 0;
        buffer->data = fastbn_aligned_alloc(bytes);
        if (buffer->data == NULL)
            return NULL;
        buffer->bytes = bytes;
    }
    return buffer->data;
}

/* Give back what fastbn_scratch_get returned (a thread's own buffer is kept). */
static void fastbn_scratch_release(void *p, int owned)
{
    if (owned)
        free(p);
}

#endif
