/* tidemalloc: a malloc replacement (libtidemalloc.so / libtidemalloc.a).
 *
 * Preload it into any program:   LD_PRELOAD=/path/to/libtidemalloc.so program
 * or link it:                     cc prog.c -L/path/to -ltidemalloc
 *
 * The standard functions (malloc, free, calloc, realloc, reallocarray, posix_memalign,
 * aligned_alloc, memalign, valloc, pvalloc, malloc_usable_size, free_sized,
 * free_aligned_sized, mallopt, malloc_trim, mallinfo, mallinfo2, malloc_stats, malloc_info)
 * behave as glibc documents them; they are declared by <stdlib.h> and <malloc.h>.
 * This header declares tidemalloc's own extensions.
 */
#ifndef TIDEMALLOC_H
#define TIDEMALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Counters, as returned by tidemalloc_get_stats. Fields are only ever appended; the whole
 * struct is written, so a program must be compiled with the header of the library it runs
 * on (or a newer one). */
struct tidemalloc_stats {
    size_t in_use;        /* bytes in live blocks (block-size granular) */
    size_t peak_in_use;   /* highest in_use seen */
    size_t reserved_brk;  /* bytes of the program break held by tidemalloc */
    size_t reserved_mmap; /* bytes of live mappings (large blocks and cache, segments, metadata) */
    size_t large_blocks;  /* live blocks that have their own mapping */
    size_t brk_calls;     /* system calls made, by kind */
    size_t mmap_calls;
    size_t munmap_calls;
    size_t mremap_calls;
    size_t madvise_calls;
    size_t release_failures; /* madvise/munmap calls the kernel refused (memory stayed) */
    size_t reserved_arena_mmap; /* bytes of the arena in anonymous mappings (break not ours) */
    size_t large_bytes;         /* bytes of live large blocks (also in in_use) */
    /* Where the memory is (bytes unless said; see the README's "Statistics"): */
    size_t page_bytes;           /* arena pages that hold blocks of a size class */
    size_t free_in_pages;        /* free inside those pages (page_bytes minus live small blocks) */
    size_t uncarved_in_pages;    /* ... of which not yet carved into blocks (untouched if fresh) */
    size_t free_pages;           /* free pages in segments held by heaps (count) */
    size_t free_pages_dirty;     /* ... used since last released: resident until released */
    size_t free_pages_clean;     /* ... released or never used: not resident */
    size_t segments;             /* 4 MiB segments held by heaps, cut into pages (count) */
    size_t huge_blocks;          /* live arena blocks of whole segments (count) */
    size_t huge_bytes;           /* their bytes (also in in_use) */
    size_t free_spans;           /* free runs of segments in the arena (count) */
    size_t free_spans_dirty;     /* ... freed within the purge delay: resident */
    size_t free_spans_clean;     /* ... released or never used: not resident */
    size_t arena_other;          /* arena bytes in none of these (alignment padding) */
    size_t large_cache_blocks;   /* freed large mappings kept for reuse (count) */
    size_t large_cache_bytes;    /* their bytes (resident) */
    size_t meta_segment_headers; /* headers of segments and huge blocks (in the arena) */
    size_t meta_heaps;           /* mapped for thread heaps */
    size_t meta_large_table;     /* mapped for the large-block registry */
    size_t mmap_other;           /* reserved_mmap bytes in none of the mapped figures */
    size_t reserved_arena_peak;  /* highest reserved_brk + reserved_arena_mmap */
    size_t prof_samples;         /* heap profiler: samples recorded since start */
    size_t meta_prof;            /* heap profiler: bytes mapped for its stack table */
    size_t prof_table_used;      /* heap profiler: bytes of that table holding stacks */
};

/* Fills *out with the current counters. */
void tidemalloc_get_stats(struct tidemalloc_stats *out);

/* Most bytes tidemalloc_stats_json needs, NUL included. */
#define TIDEMALLOC_STATS_JSON_MAX 4096

/* Writes the counters as one line of JSON (what TIDEMALLOC_SHOW_STATS=json prints at exit:
 * {"version":1,"pid":...,"in_use":..., every field of struct tidemalloc_stats by name}
 * and a newline), as snprintf does: at most len bytes into buf, NUL included; returns the
 * length of the whole text without the NUL (a result >= len means it was cut). buf may be
 * NULL when len is 0. Allocates nothing. */
size_t tidemalloc_stats_json(char *buf, size_t len);

/* Requests of at least `bytes` get their own mapping; smaller ones come from the arena.
 * Any value from 0 to 1 GiB. Returns 1 on success, 0 (no change) if out of range.
 * Same as mallopt(M_MMAP_THRESHOLD, bytes) but for values above INT_MAX too. */
int tidemalloc_set_mmap_threshold(size_t bytes);

/* The current mmap threshold (default 128 KiB). */
size_t tidemalloc_get_mmap_threshold(void);

/* Writes the counters as text to file descriptor fd (no allocation). */
void tidemalloc_print_stats(int fd);

/* Same as malloc_trim(pad): returns free memory of every thread to the OS. */
int tidemalloc_trim(size_t pad);

/* Heap profiling (run with TIDEMALLOC_PROF=1 or TIDEMALLOC_LEAKS=1; see the README).
 * Writes the sampled heap profile, pprof's profile.proto gzipped, to `path`, or with NULL
 * to <TIDEMALLOC_PROF_PREFIX>.<pid>.<seq>.pb.gz. Returns 0 on success, -1 with errno set
 * on failure (ENOSYS: profiling is off; EBUSY: another dump is running). No allocation:
 * safe to call from a signal handler. */
int tidemalloc_prof_dump(const char *path);

/* Writes the leak report (sampled blocks still live, grouped by stack, biggest first, with
 * symbol names) to file descriptor fd. */
void tidemalloc_leak_report(int fd);

#ifdef __cplusplus
}
#endif

#endif /* TIDEMALLOC_H */
