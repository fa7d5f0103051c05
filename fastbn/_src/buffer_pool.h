/* The buffer cache behind fastbn's returned arrays: a NumPy memory handler (NEP 49).
 *
 * fastbn sets this handler only around its own allocation of an output or dx array (see
 * fastbn/_buffers.pyx), so that the array NumPy makes is an ordinary array that owns its data,
 * with this handler recorded in it. When the array (or the last view of it) goes, NumPy hands the
 * memory back here, and it is kept, up to a byte limit, for the next output of a size it fits:
 * its pages are already mapped, so the next call does not page-fault the whole output again
 * (glibc serves such sizes with fresh mmaps and unmaps them on free).
 *
 * Every block is one anonymous mapping, page-aligned, whose first bytes record its length; the
 * data starts at a requested offset within a page (a page further in when that offset leaves
 * no room for the 64-byte header), so that an output can sit at the same offset within a page as
 * its input: the kernels' loops then meet line and page boundaries in both at once
 * (docs/decisions.md has the measurements). The mapping is found from the data by rounding down
 * (data - 64) to the page. Mappings of 2 MiB or more start on a 2 MiB boundary and are advised
 * MADV_HUGEPAGE; their length is a multiple of the page only, so that the part past the last
 * whole 2 MiB stays in small pages (an output of exactly 2 MiB, which the header pushes a little
 * past a boundary, does not fault in a second huge page). The pool is a short list of free
 * mappings, oldest first, taken best-fit (at most twice the size asked for) and evicted
 * oldest-first; a mutex guards it, since NumPy may free an array from any thread. When the
 * system refuses a new mapping, the free blocks are unmapped and the mapping tried once more.
 */
#ifndef FASTBN_BUFFER_POOL_H
#define FASTBN_BUFFER_POOL_H

#include <Python.h>
#include <numpy/arrayobject.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FASTBN_POOL_HEADER 64
#define FASTBN_POOL_SLOTS 32
#define FASTBN_HUGE_PAGE ((size_t)2 << 20)

typedef struct {
    size_t length; /* of the whole mapping, header included */
} fastbn_block_header;

/* The offset within a page of the next block's data: set by the caller of np.empty in the same
 * thread (fastbn/_buffers.pyx), so per thread, and used once: any other allocation through the
 * handler gets FASTBN_POOL_HEADER (a 64-byte aligned start). */
static __thread size_t fastbn_pool_offset = FASTBN_POOL_HEADER;

typedef struct {
    void *base;
    size_t length;
} fastbn_free_block;

static pthread_mutex_t fastbn_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static fastbn_free_block fastbn_pool[FASTBN_POOL_SLOTS];
static int fastbn_pool_count = 0;
static size_t fastbn_pool_bytes = 0;     /* held in the pool, free */
static size_t fastbn_pool_max = 0;       /* the limit on fastbn_pool_bytes */
static uint64_t fastbn_pool_hits = 0, fastbn_pool_misses = 0;
static size_t fastbn_pool_live = 0;      /* handed out and not yet returned */

static size_t fastbn_round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

/* The header (at the start of the mapping) of the block whose data is at `data`. */
static fastbn_block_header *fastbn_header_of(void *data)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    return (fastbn_block_header *)(((uintptr_t)data - FASTBN_POOL_HEADER) & ~(page - 1));
}

static void *fastbn_map_plain(size_t length)
{
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* A fresh mapping of `length` bytes (a multiple of the page size), or NULL; from 2 MiB on,
 * starting on a 2 MiB boundary where the address space allows. */
static void *fastbn_map(size_t length)
{
    if (length < FASTBN_HUGE_PAGE)
        return fastbn_map_plain(length);
    /* map 2 MiB more, keep the 2 MiB-aligned part: transparent huge pages need the alignment */
    char *p = mmap(NULL, length + FASTBN_HUGE_PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return fastbn_map_plain(length);
    char *aligned = (char *)fastbn_round_up((uintptr_t)p, FASTBN_HUGE_PAGE);
    size_t head = (size_t)(aligned - p), tail = FASTBN_HUGE_PAGE - head;
    if (head)
        munmap(p, head);
    if (tail)
        munmap(aligned + length, tail);
#ifdef MADV_HUGEPAGE
    madvise(aligned, length, MADV_HUGEPAGE);
#endif
    return aligned;
}

/* Drop free blocks, oldest first, until the pool holds at most `limit` bytes; lock held. */
static void fastbn_pool_trim(size_t limit)
{
    int drop = 0;
    while (drop < fastbn_pool_count && fastbn_pool_bytes > limit) {
        munmap(fastbn_pool[drop].base, fastbn_pool[drop].length);
        fastbn_pool_bytes -= fastbn_pool[drop].length;
        drop++;
    }
    if (drop) {
        memmove(fastbn_pool, fastbn_pool + drop, (size_t)(fastbn_pool_count - drop) * sizeof *fastbn_pool);
        fastbn_pool_count -= drop;
    }
}

/* The data pointer of a block for `size` bytes, `offset` bytes (mod the page size) past a page
 * boundary; *fresh says whether its pages are new (zero). */
static void *fastbn_pool_take(size_t size, size_t offset, int *fresh)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    /* the data at the asked offset within a page, with room for the header before it */
    size_t skip = offset % page >= FASTBN_POOL_HEADER ? offset % page : page + offset % page;
    size_t length = size + skip;
    if (length < size || length > SIZE_MAX - page)
        return NULL;
    length = fastbn_round_up(length, page);
    void *base = NULL;
    pthread_mutex_lock(&fastbn_pool_lock);
    int best = -1;
    for (int i = 0; i < fastbn_pool_count; i++) {
        size_t have = fastbn_pool[i].length;
        if (have >= length && have / 2 <= length && (best < 0 || have < fastbn_pool[best].length))
            best = i;
    }
    if (best >= 0) {
        base = fastbn_pool[best].base;
        length = fastbn_pool[best].length;
        fastbn_pool_bytes -= length;
        memmove(fastbn_pool + best, fastbn_pool + best + 1,
                (size_t)(fastbn_pool_count - best - 1) * sizeof *fastbn_pool);
        fastbn_pool_count--;
        fastbn_pool_hits++;
    } else {
        fastbn_pool_misses++;
    }
    pthread_mutex_unlock(&fastbn_pool_lock);
    *fresh = base == NULL;
    if (base == NULL && (base = fastbn_map(length)) == NULL) {
        pthread_mutex_lock(&fastbn_pool_lock); /* the free blocks may hold the room */
        fastbn_pool_trim(0);
        pthread_mutex_unlock(&fastbn_pool_lock);
        if ((base = fastbn_map(length)) == NULL)
            return NULL;
    }
    char *data = (char *)base + skip;
    ((fastbn_block_header *)base)->length = length;
    pthread_mutex_lock(&fastbn_pool_lock);
    fastbn_pool_live += length;
    pthread_mutex_unlock(&fastbn_pool_lock);
    return data;
}

static void fastbn_pool_give(void *ptr)
{
    if (ptr == NULL)
        return;
    fastbn_block_header *h = fastbn_header_of(ptr);
    void *base = h;
    size_t length = h->length;
    pthread_mutex_lock(&fastbn_pool_lock);
    fastbn_pool_live -= length;
    if (length > fastbn_pool_max) {
        pthread_mutex_unlock(&fastbn_pool_lock);
        munmap(base, length);
        return;
    }
    fastbn_pool_trim(fastbn_pool_max - length);
    if (fastbn_pool_count == FASTBN_POOL_SLOTS)
        fastbn_pool_trim(fastbn_pool_bytes - fastbn_pool[0].length);
    fastbn_pool[fastbn_pool_count].base = base;
    fastbn_pool[fastbn_pool_count].length = length;
    fastbn_pool_count++;
    fastbn_pool_bytes += length;
    pthread_mutex_unlock(&fastbn_pool_lock);
}

/* This thread's offset for its next block, once. */
static size_t fastbn_pool_next_offset(void)
{
    size_t offset = fastbn_pool_offset;
    fastbn_pool_offset = FASTBN_POOL_HEADER;
    return offset;
}

/* The NEP 49 allocator functions. */
static void *fastbn_handler_malloc(void *ctx, size_t size)
{
    int fresh;
    (void)ctx;
    return fastbn_pool_take(size, fastbn_pool_next_offset(), &fresh);
}

static void *fastbn_handler_calloc(void *ctx, size_t nelem, size_t elsize)
{
    int fresh;
    (void)ctx;
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    void *p = fastbn_pool_take(nelem * elsize, fastbn_pool_next_offset(), &fresh);
    if (p != NULL && !fresh)
        memset(p, 0, nelem * elsize);
    return p;
}

static void fastbn_handler_free(void *ctx, void *ptr, size_t size)
{
    (void)ctx;
    (void)size;
    fastbn_pool_give(ptr);
}

static void *fastbn_handler_realloc(void *ctx, void *ptr, size_t new_size)
{
    if (ptr == NULL)
        return fastbn_handler_malloc(ctx, new_size);
    fastbn_block_header *h = fastbn_header_of(ptr);
    size_t capacity = h->length - (size_t)((char *)ptr - (char *)h);
    if (new_size <= capacity)
        return ptr;
    /* at the block's own offset within a page: the data keeps its alignment */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    int fresh;
    void *p = fastbn_pool_take(new_size, (uintptr_t)ptr % page, &fresh);
    if (p != NULL) {
        memcpy(p, ptr, capacity);
        fastbn_pool_give(ptr);
    }
    return p;
}

static PyDataMem_Handler fastbn_handler = {
    "fastbn_buffer_cache",
    1,
    {NULL, fastbn_handler_malloc, fastbn_handler_calloc, fastbn_handler_realloc,
     fastbn_handler_free},
};

static void fastbn_pool_set_offset(size_t offset) { fastbn_pool_offset = offset; }

/* Garbage collection paused around one allocation through the handler (returns whether it was
 * enabled): a collection that starts while the handler is this thread's current one (on
 * CPython <= 3.11 it can start inside PyDataMem_SetHandler's own allocations) would run Python
 * code (__del__, weakref callbacks) whose arrays came from the pool. */
static int fastbn_gc_pause(void)
{
#if PY_VERSION_HEX >= 0x030A0000
    return PyGC_Disable();
#else
    int was = 0;
    PyObject *gc = PyImport_ImportModule("gc"), *r;
    if (gc != NULL) {
        if ((r = PyObject_CallMethod(gc, "isenabled", NULL)) != NULL) {
            was = PyObject_IsTrue(r) == 1;
            Py_DECREF(r);
        }
        Py_XDECREF(PyObject_CallMethod(gc, "disable", NULL));
        Py_DECREF(gc);
    }
    PyErr_Clear();
    return was;
#endif
}

static void fastbn_gc_resume(int was)
{
    if (!was)
        return;
#if PY_VERSION_HEX >= 0x030A0000
    PyGC_Enable();
#else
    PyObject *gc = PyImport_ImportModule("gc");
    if (gc != NULL) {
        Py_XDECREF(PyObject_CallMethod(gc, "enable", NULL));
        Py_DECREF(gc);
    }
    PyErr_Clear();
#endif
}

static PyObject *fastbn_pool_capsule(void)
{
    return PyCapsule_New(&fastbn_handler, "mem_handler", NULL);
}

static void fastbn_pool_set_max(size_t max_bytes)
{
    pthread_mutex_lock(&fastbn_pool_lock);
    fastbn_pool_max = max_bytes;
    fastbn_pool_trim(max_bytes);
    pthread_mutex_unlock(&fastbn_pool_lock);
}

typedef struct {
    size_t max_bytes, cached_bytes, live_bytes;
    int blocks;
    uint64_t hits, misses;
} fastbn_pool_stats;

static fastbn_pool_stats fastbn_pool_info(void)
{
    fastbn_pool_stats s;
    pthread_mutex_lock(&fastbn_pool_lock);
    s.max_bytes = fastbn_pool_max;
    s.cached_bytes = fastbn_pool_bytes;
    s.live_bytes = fastbn_pool_live;
    s.blocks = fastbn_pool_count;
    s.hits = fastbn_pool_hits;
    s.misses = fastbn_pool_misses;
    pthread_mutex_unlock(&fastbn_pool_lock);
    return s;
}

#endif
