/* vmm-img convert, compare and bench: the data-moving commands. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "img.h"

#define CHUNK (2u << 20)

enum { OPT_IMAGE_OPTS = 300, OPT_TARGET_IMAGE_OPTS, OPT_FLUSH_INTERVAL, OPT_NO_DRAIN, OPT_PATTERN,
       OPT_OBJECT, OPT_SALVAGE, OPT_BITMAPS, OPT_SKIP_BROKEN };

static bool buffer_is_zero(const uint8_t *buf, size_t len)
{
    /* Check a word at a time: the common case is one long zero run. */
    const uint64_t *w = (const uint64_t *)buf;
    size_t n = len / 8;
    for (size_t i = 0; i < n; i++)
        if (w[i])
            return false;
    for (size_t i = n * 8; i < len; i++)
        if (buf[i])
            return false;
    return true;
}

/* ---- convert -------------------------------------------------------------- */

struct source {
    vmm_block *blk;
    uint64_t base, size;
};

struct convert {
    struct source *src;
    int nsrc;
    uint64_t total;
    vmm_block *dst;
    bool target_zero;       /* unwritten target ranges already read as zero */
    bool compress, ordered;
    uint64_t cluster;       /* compressed writes go one cluster at a time */
    uint64_t sparse;        /* -S: zero detection granularity, 0 = off */
    pthread_mutex_t lock;
    pthread_cond_t turn[16]; /* chunk seq % 16: wakes only the next writer */
    uint64_t next_off, next_seq, write_seq, done;
    int failed;             /* first failure's exit status */
    char *error;
    struct progress *pg;
};

static const struct source *source_at(const struct convert *cv, uint64_t off)
{
    for (int i = 0; i < cv->nsrc; i++)
        if (off < cv->src[i].base + cv->src[i].size)
            return &cv->src[i];
    return NULL;
}

/* Status of the concatenated sources at `off`, clipped to one source. */
static int concat_status(struct convert *cv, uint64_t off, uint64_t len, bool *zero, uint64_t *got)
{
    const struct source *s = source_at(cv, off);
    uint64_t in = off - s->base;
    if (len > s->size - in)
        len = s->size - in;
    struct vmm_block_extent e = { .size = sizeof(e) };
    if (vmm_block_block_status(s->blk, in, len, &e) < 0)
        return -1;
    *zero = (e.flags & VMM_BLOCK_STATUS_ZERO) && !(e.flags & VMM_BLOCK_STATUS_DATA);
    *got = e.length;
    return 0;
}

static int concat_read(struct convert *cv, uint64_t off, uint8_t *buf, uint64_t len)
{
    while (len) {
        const struct source *s = source_at(cv, off);
        uint64_t in = off - s->base, n = s->size - in < len ? s->size - in : len;
        if (vmm_block_read(s->blk, in, buf, n) < 0)
            return -1;
        off += n;
        buf += n;
        len -= n;
    }
    return 0;
}

static int write_data(struct convert *cv, uint64_t off, const uint8_t *buf, uint64_t len)
{
    if (!cv->compress)
        return vmm_block_write(cv->dst, off, buf, len, 0);
    for (uint64_t done = 0; done < len;) {
        uint64_t n = cv->cluster - (off + done) % cv->cluster;
        if (n > len - done)
            n = len - done;
        if (!buffer_is_zero(buf + done, n) &&
            vmm_block_write(cv->dst, off + done, buf + done, n, VMM_BLOCK_REQ_COMPRESSED) < 0)
            return -1;
        done += n;
    }
    return 0;
}

static int write_zero(struct convert *cv, uint64_t off, uint64_t len)
{
    if (cv->target_zero)
        return 0;
    return vmm_block_write_zeroes(cv->dst, off, len, VMM_BLOCK_REQ_MAY_UNMAP);
}

/* A planned write: data from the buffer, or zeroes. */
struct piece {
    uint64_t off, len;
    bool zero;
};

struct plan {
    struct piece *p;
    int n, cap;
};

static int plan_add(struct plan *pl, uint64_t off, uint64_t len, bool zero)
{
    struct piece *last = pl->n ? &pl->p[pl->n - 1] : NULL;
    if (last && last->zero == zero && last->off + last->len == off) {
        last->len += len;
        return 0;
    }
    if (pl->n == pl->cap) {
        int cap = pl->cap ? pl->cap * 2 : 64;
        struct piece *g = realloc(pl->p, sizeof(*g) * (size_t)cap);
        if (!g)
            return -1;
        pl->p = g;
        pl->cap = cap;
    }
    pl->p[pl->n++] = (struct piece){ off, len, zero };
    return 0;
}

/* Split [off, off+len) of `buf` into data and zero pieces of -S granularity. */
static int plan_sparse(struct convert *cv, uint64_t off, const uint8_t *buf, uint64_t len, struct plan *pl)
{
    uint64_t g = cv->compress ? cv->cluster : cv->sparse;
    for (uint64_t at = 0; at < len;) {
        uint64_t n = g - (off + at) % g;
        if (n > len - at)
            n = len - at;
        if (plan_add(pl, off + at, n, buffer_is_zero(buf + at, n)) < 0)
            return -1;
        at += n;
    }
    return 0;
}

static int convert_chunk(struct convert *cv, uint64_t off, uint64_t len, uint8_t *buf, uint64_t seq,
                         struct plan *pl)
{
    pl->n = 0;
    /* Plan: zero extents by block status, data extents read and scanned. */
    for (uint64_t at = 0; at < len;) {
        bool zero;
        uint64_t got;
        int r = 0;
        if (concat_status(cv, off + at, len - at, &zero, &got) < 0)
            return -1;
        if (zero && cv->sparse && !cv->compress) { /* -c plans whole clusters */
            r = plan_add(pl, off + at, got, true);
        } else {
            uint8_t *b = buf + at;
            if (zero)
                memset(b, 0, got);
            else if (concat_read(cv, off + at, b, got) < 0)
                return -1;
            if (cv->compress)
                r = 0; /* planned below, whole clusters at a time */
            else if (!cv->sparse)
                r = plan_add(pl, off + at, got, false);
            else
                r = plan_sparse(cv, off + at, b, got, pl);
        }
        if (r < 0)
            return 1;
        at += got;
    }
    if (cv->compress && plan_sparse(cv, off, buf, len, pl) < 0)
        return 1;
    if (cv->ordered) { /* writes go out in order, like qemu-img without -W */
        pthread_mutex_lock(&cv->lock);
        while (cv->write_seq != seq && !cv->failed)
            pthread_cond_wait(&cv->turn[seq % 16], &cv->lock);
        pthread_mutex_unlock(&cv->lock);
    }
    for (int i = 0; i < pl->n; i++) {
        const struct piece *p = &pl->p[i];
        int ret = p->zero ? write_zero(cv, p->off, p->len) : write_data(cv, p->off, buf + (p->off - off), p->len);
        if (ret < 0)
            return -1;
    }
    return 0;
}

static void convert_fail(struct convert *cv, const char *why)
{
    pthread_mutex_lock(&cv->lock);
    if (!cv->failed) {
        cv->failed = 1;
        cv->error = strdup(why ? why : vmm_get_error());
    }
    for (int i = 0; i < 16; i++)
        pthread_cond_broadcast(&cv->turn[i]);
    pthread_mutex_unlock(&cv->lock);
}

static void *convert_worker(void *opaque)
{
    struct convert *cv = opaque;
    uint64_t chunk = cv->compress && cv->cluster > CHUNK ? cv->cluster : CHUNK;
    uint8_t *buf = NULL;
    struct plan pl = { 0 };
    if (posix_memalign((void **)&buf, 4096, chunk)) {
        convert_fail(cv, "out of memory");
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&cv->lock);
        if (cv->failed || cv->next_off >= cv->total) {
            pthread_mutex_unlock(&cv->lock);
            break;
        }
        uint64_t off = cv->next_off, seq = cv->next_seq++;
        uint64_t len = cv->total - off < chunk ? cv->total - off : chunk;
        cv->next_off += len;
        pthread_mutex_unlock(&cv->lock);
        int r = convert_chunk(cv, off, len, buf, seq, &pl);
        if (r) {
            convert_fail(cv, r > 0 ? "out of memory" : NULL);
            break;
        }
        pthread_mutex_lock(&cv->lock);
        cv->write_seq++;
        cv->done += len;
        progress_update(cv->pg, cv->done, cv->total);
        pthread_cond_signal(&cv->turn[cv->write_seq % 16]);
        pthread_mutex_unlock(&cv->lock);
    }
    free(buf);
    free(pl.p);
    return NULL;
}

static int run_convert(struct convert *cv, int threads)
{
    pthread_t tid[16];
    int n = 0;
    pthread_mutex_init(&cv->lock, NULL);
    for (int i = 0; i < 16; i++)
        pthread_cond_init(&cv->turn[i], NULL);
    for (int i = 0; i < threads; i++)
        if (!pthread_create(&tid[n], NULL, convert_worker, cv))
            n++;
    if (!n)
        convert_worker(cv);
    for (int i = 0; i < n; i++)
        pthread_join(tid[i], NULL);
    pthread_mutex_destroy(&cv->lock);
    for (int i = 0; i < 16; i++)
        pthread_cond_destroy(&cv->turn[i]);
    return cv->failed ? -1 : 0;
}

int cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { "object", required_argument, NULL, OPT_OBJECT },
        { "salvage", no_argument, NULL, OPT_SALVAGE }, { "bitmaps", no_argument, NULL, OPT_BITMAPS },
        { "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN }, { 0 } };
    const char *fmt = NULL, *out_fmt = NULL, *backing = NULL, *backing_fmt = NULL;
    const char *cache = NULL, *src_cache = NULL;
    char *opts = NULL;
    bool compress = false, quiet = false, no_create = false, out_of_order = false;
    bool image_opts = false, target_image_opts = false, share = false;
    uint64_t sparse = 4096;
    long coroutines = 8;
    struct progress pg = { false, -1 };
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'B': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'c': compress = true; break;
        case 'C': return err(1, "-C (copy offloading) is not supported");
        case 'o': {
            if (!strcmp(optarg, "help") || !strcmp(optarg, "?")) {
                free(opts);
                return print_create_options(out_fmt ? out_fmt : "raw");
            }
            size_t old = opts ? strlen(opts) : 0;
            char *s = realloc(opts, old + strlen(optarg) + 2);
            if (!s)
                return err(1, "out of memory");
            opts = s;
            if (old)
                s[old++] = ',';
            strcpy(s + old, optarg);
            break;
        }
        case 'l': return err(1, "-l: converting from snapshots is not supported");
        case 'S':
            if (vmm_parse_size(optarg, &sparse) < 0 || sparse % 512 || sparse > 16777216)
                return err(1, "Invalid buffer size for sparse output specified. Valid sizes are multiples "
                              "of 512 up to 16777216. Select 0 to disable sparse detection (fully "
                              "allocates output).");
            break;
        case 'p': pg.enabled = true; break;
        case 't': cache = optarg; break;
        case 'T': src_cache = optarg; break;
        case 'q': quiet = true; break;
        case 'n': no_create = true; break;
        case 'm': {
            char *end;
            coroutines = strtol(optarg, &end, 10);
            if (*end || coroutines < 1 || coroutines > 16)
                return err(1, "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16");
            break;
        }
        case 'W': out_of_order = true; break;
        case 'U': share = true; break;
        case 'r': return err(1, "-r (rate limit) is not supported");
        case 'h': return usage_ok();
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_TARGET_IMAGE_OPTS: target_image_opts = true; break;
        case OPT_OBJECT: case OPT_SALVAGE: case OPT_BITMAPS: case OPT_SKIP_BROKEN:
            return err(1, "%s is not supported", argv[optind - 1]);
        default: return usage_bad_opt(c);
        }
    }
    if (quiet)
        pg.enabled = false;
    int nsrc = argc - optind - 1;
    if (nsrc < 1) {
        free(opts);
        return err(1, "Expecting at least one source filename and one target filename "
                      "(try 'vmm-img convert --help')");
    }
    if (!out_fmt)
        out_fmt = "raw";
    if (no_create && (opts || backing)) {
        free(opts);
        return err(1, "-n and -o / -B cannot be used together");
    }
    if (target_image_opts && !no_create) {
        free(opts);
        return err(1, "--target-image-opts requires use of -n flag");
    }
    if (backing && !backing_fmt) {
        free(opts);
        return err(1, "-B needs a backing format (-F)");
    }
    const char *out_name = argv[argc - 1];
    struct convert cv = { 0 };
    cv.nsrc = nsrc;
    cv.src = calloc((size_t)nsrc, sizeof(*cv.src));
    cv.sparse = sparse;
    cv.compress = compress;
    /* Compression runs inside the write, so ordered writes would compress
     * one cluster at a time: -c always writes out of order (only the host
     * layout differs, never the content). */
    cv.ordered = !out_of_order && !compress;
    cv.pg = &pg;
    int ret = 1;
    unsigned src_flags = (share ? VMM_BLOCK_FORCE_SHARE : 0) |
                         (src_cache && !strcmp(src_cache, "none") ? VMM_BLOCK_NOCACHE : 0);
    for (int i = 0; i < nsrc; i++) {
        cv.src[i].blk = open_image(argv[optind + i], fmt, src_flags, image_opts);
        if (!cv.src[i].blk)
            goto out;
        cv.src[i].base = cv.total;
        cv.src[i].size = (uint64_t)vmm_block_size(cv.src[i].blk);
        cv.total += cv.src[i].size;
    }
    /* qemu-img convert's target cache mode defaults to "unsafe": no flushes. */
    if (!cache)
        cache = "unsafe";
    unsigned dst_flags = VMM_BLOCK_RDWR;
    if (!strcmp(cache, "none") || !strcmp(cache, "directsync"))
        dst_flags |= VMM_BLOCK_NOCACHE;
    else if (!strcmp(cache, "unsafe"))
        dst_flags |= VMM_BLOCK_NO_FLUSH;
    else if (strcmp(cache, "writeback") && strcmp(cache, "writethrough")) {
        err(1, "Invalid cache option: %s", cache);
        goto out;
    }
    if (!no_create) {
        char *all = opts;
        char buf[4096];
        if (backing) {
            snprintf(buf, sizeof(buf), "%s%sbacking_file=%s,backing_fmt=%s", opts ? opts : "", opts ? "," : "",
                     backing, backing_fmt);
            all = buf;
        }
        if (vmm_block_create(out_name, out_fmt, (int64_t)cv.total, all) < 0) {
            api_err(1);
            goto out;
        }
        cv.target_zero = !backing;
        dst_flags |= VMM_BLOCK_NO_BACKING;
        cv.dst = open_image(out_name, out_fmt, dst_flags, false);
    } else {
        cv.dst = open_image(out_name, out_fmt, dst_flags, target_image_opts);
    }
    if (!cv.dst)
        goto out;
    if (no_create && (uint64_t)vmm_block_size(cv.dst) < cv.total) {
        err(1, "The target is smaller than the source (%" PRId64 " < %" PRIu64 " bytes)",
            vmm_block_size(cv.dst), cv.total);
        goto out;
    }
    if (compress) {
        int64_t cs = vmm_block_cluster_size(cv.dst);
        if (cs <= 0) {
            err(1, "Compression not supported for this file format");
            goto out;
        }
        cv.cluster = (uint64_t)cs;
    }
    progress_update(&pg, 0, cv.total);
    if (run_convert(&cv, (int)coroutines) < 0) {
        err(1, "error while converting %s: %s", out_fmt, cv.error ? cv.error : "unknown error");
        goto out;
    }
    if (vmm_block_flush(cv.dst) < 0) {
        api_err(1);
        goto out;
    }
    progress_end(&pg);
    ret = 0;
out:
    for (int i = 0; i < nsrc; i++)
        vmm_block_close(cv.src[i].blk);
    if (cv.dst && vmm_block_close(cv.dst) < 0 && ret == 0)
        ret = api_err(1);
    free(cv.src);
    free(cv.error);
    free(opts);
    return ret;
}

/* ---- compare --------------------------------------------------------------- */

static uint64_t first_difference(const uint8_t *a, const uint8_t *b, uint64_t len)
{
    uint64_t i = 0;
    while (i < len && a[i] == b[i])
        i++;
    return i / 512 * 512; /* qemu reports the sector */
}

static int status_of(vmm_block *blk, uint64_t off, uint64_t len, unsigned *flags, uint64_t *got)
{
    struct vmm_block_extent e = { .size = sizeof(e) };
    if (vmm_block_block_status(blk, off, len, &e) < 0)
        return -1;
    *flags = e.flags;
    *got = e.length;
    return 0;
}

static bool reads_zero(unsigned flags)
{
    return (flags & VMM_BLOCK_STATUS_ZERO) && !(flags & VMM_BLOCK_STATUS_DATA);
}

/* Check that [off, end) of the larger image reads as zeroes. */
static int check_tail(vmm_block *blk, uint64_t off, uint64_t end, uint8_t *buf, bool quiet)
{
    while (off < end) {
        unsigned flags;
        uint64_t got;
        if (status_of(blk, off, end - off < CHUNK ? end - off : CHUNK, &flags, &got) < 0)
            return api_err(2);
        if (!reads_zero(flags)) {
            if (vmm_block_read(blk, off, buf, got) < 0)
                return api_err(2);
            for (uint64_t i = 0; i < got; i++) {
                if (buf[i]) {
                    if (!quiet)
                        printf("Content mismatch at offset %" PRIu64 "!\n", (off + i) / 512 * 512);
                    return 1;
                }
            }
        }
        off += got;
    }
    return 0;
}

int cmd_compare(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { "object", required_argument, NULL, OPT_OBJECT }, { 0 } };
    const char *fmt1 = NULL, *fmt2 = NULL;
    bool quiet = false, strict = false, image_opts = false;
    unsigned flags = 0;
    struct progress pg = { false, -1 };
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt1 = optarg; break;
        case 'F': fmt2 = optarg; break;
        case 'T': break;
        case 'p': pg.enabled = true; break;
        case 'q': quiet = true; break;
        case 's': strict = true; break;
        case 'U': flags |= VMM_BLOCK_FORCE_SHARE; break;
        case 'h': usage_ok(); return 0;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_OBJECT: return err(2, "--object is not supported");
        default: usage_bad_opt(c); return 2;
        }
    }
    if (quiet)
        pg.enabled = false;
    if (optind != argc - 2) {
        usage_bad();
        return 2;
    }
    if (fmt1 && !fmt2)
        fmt2 = fmt1; /* qemu-img: -f applies to both unless -F is given */
    vmm_block *a = open_image(argv[optind], fmt1, flags, image_opts);
    if (!a)
        return 2;
    vmm_block *b = open_image(argv[optind + 1], fmt2, flags, image_opts);
    if (!b) {
        vmm_block_close(a);
        return 2;
    }
    uint64_t sa = (uint64_t)vmm_block_size(a), sb = (uint64_t)vmm_block_size(b);
    uint64_t common = sa < sb ? sa : sb, total = sa > sb ? sa : sb;
    uint8_t *ba = malloc(CHUNK), *bb = malloc(CHUNK);
    int ret = 0;
    if (!ba || !bb) {
        ret = err(2, "out of memory");
        goto out;
    }
    if (strict && sa != sb) {
        if (!quiet)
            printf("Strict mode: Image size mismatch!\n");
        ret = 1;
        goto out;
    }
    for (uint64_t off = 0; off < common && !ret;) {
        unsigned fa, fb;
        uint64_t la, lb, len = common - off < CHUNK ? common - off : CHUNK;
        if (status_of(a, off, len, &fa, &la) < 0 || status_of(b, off, len, &fb, &lb) < 0) {
            ret = api_err(2);
            break;
        }
        len = la < lb ? la : lb;
        if (strict && ((fa ^ fb) & VMM_BLOCK_STATUS_ALLOCATED)) {
            if (!quiet)
                printf("Strict mode: Offset %" PRIu64 " block status mismatch!\n", off);
            ret = 1;
            break;
        }
        if (!(reads_zero(fa) && reads_zero(fb))) {
            if (vmm_block_read(a, off, ba, len) < 0 || vmm_block_read(b, off, bb, len) < 0) {
                ret = api_err(2);
                break;
            }
            if (memcmp(ba, bb, len)) {
                if (!quiet)
                    printf("Content mismatch at offset %" PRIu64 "!\n", off + first_difference(ba, bb, len));
                ret = 1;
                break;
            }
        }
        off += len;
        progress_update(&pg, off, total);
    }
    if (!ret && sa != sb) {
        if (!quiet)
            printf("Warning: Image size mismatch!\n");
        ret = check_tail(sa > sb ? a : b, common, total, ba, quiet);
    }
    if (!ret) {
        progress_end(&pg);
        if (!quiet)
            printf("Images are identical.\n");
    }
out:
    free(ba);
    free(bb);
    vmm_block_close(a);
    vmm_block_close(b);
    return ret;
}

/* ---- bench ------------------------------------------------------------------ */

struct bench {
    vmm_block *blk;
    bool write, drain;
    uint64_t size, offset, start, step, bufsize, image_size;
    int count, depth, flush_interval;
    int submitted, completed, inflight, writes_since_flush;
    bool flushing;
    uint8_t *bufs;
    int failed;
    char *error;
};

struct bench_slot {
    struct bench *b;
    uint8_t *buf;
    struct iovec iov;
    bool is_flush;
};

static void bench_done(void *opaque, int ret);

static int bench_submit_io(struct bench *b, struct bench_slot *slot)
{
    slot->is_flush = false;
    slot->iov = (struct iovec){ slot->buf, b->bufsize };
    struct vmm_block_request req = {
        .size = sizeof(req), .op = b->write ? VMM_BLOCK_OP_WRITE : VMM_BLOCK_OP_READ,
        .offset = b->offset, .length = b->bufsize, .iov = &slot->iov, .iovcnt = 1,
        .done = bench_done, .user_data = slot,
    };
    b->offset += b->step;
    if (b->offset + b->bufsize > b->image_size)
        b->offset = b->start;
    b->submitted++;
    b->inflight++;
    return vmm_block_submit(b->blk, &req);
}

static struct bench_slot *bench_slots, bench_flush_slot;

static int bench_submit_flush(struct bench *b)
{
    bench_flush_slot.b = b;
    bench_flush_slot.is_flush = true;
    struct vmm_block_request req = { .size = sizeof(req), .op = VMM_BLOCK_OP_FLUSH,
                                     .done = bench_done, .user_data = &bench_flush_slot };
    b->inflight++;
    b->flushing = true;
    b->writes_since_flush = 0;
    return vmm_block_submit(b->blk, &req);
}

/* `slot` is free: flush when one is due, else send its next request.  With
 * draining flushes a free slot stays parked until the flush completes. */
static void bench_refill(struct bench *b, struct bench_slot *slot)
{
    if (b->failed)
        return;
    if (b->flush_interval && b->writes_since_flush >= b->flush_interval && !b->flushing) {
        if (b->drain && b->inflight)
            return;
        if (bench_submit_flush(b) < 0)
            goto fail;
    }
    if (b->flushing && b->drain)
        return;
    if (b->submitted < b->count) {
        b->writes_since_flush++;
        if (bench_submit_io(b, slot) < 0)
            goto fail;
    }
    return;
fail:
    b->failed = 1;
    b->error = strdup(vmm_get_error());
}

static void bench_done(void *opaque, int ret)
{
    struct bench_slot *slot = opaque;
    struct bench *b = slot->b;
    b->inflight--;
    if (ret < 0 && !b->failed) {
        b->failed = 1;
        b->error = strdup(vmm_get_error());
    }
    if (!slot->is_flush) {
        b->completed++;
        bench_refill(b, slot);
        return;
    }
    b->flushing = false;
    if (b->drain) /* every slot was parked: start them all again */
        for (int i = 0; i < b->depth; i++)
            bench_refill(b, &bench_slots[i]);
}

int cmd_bench(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS }, { "pattern", required_argument, NULL, OPT_PATTERN },
        { "no-drain", no_argument, NULL, OPT_NO_DRAIN }, { "force-share", no_argument, NULL, 'U' }, { 0 } };
    const char *fmt = NULL;
    struct bench b = { .count = 75000, .depth = 64, .bufsize = 4096, .drain = true };
    bool quiet = false, image_opts = false, step_given = false;
    unsigned flags = 0;
    int pattern = 0, c;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts, NULL)) != -1) {
        char *end;
        long v;
        uint64_t sz;
        switch (c) {
        case 'c':
            v = strtol(optarg, &end, 0);
            if (*end || v <= 0 || v > 1000000000)
                return err(1, "Invalid request count specified");
            b.count = (int)v;
            break;
        case 'd':
            v = strtol(optarg, &end, 0);
            if (*end || v <= 0 || v > 4096)
                return err(1, "Invalid queue depth specified");
            b.depth = (int)v;
            break;
        case 'f': fmt = optarg; break;
        case 'n': flags |= VMM_BLOCK_NATIVE_AIO; break; /* qemu-img bench: -n is native AIO */
        case 'i':
            if (!strcmp(optarg, "native"))
                flags |= VMM_BLOCK_NATIVE_AIO;
            else if (strcmp(optarg, "threads"))
                return err(1, "Invalid aio option: %s", optarg);
            break;
        case 'o':
            if (vmm_parse_size(optarg, &sz) < 0)
                return err(1, "Invalid offset specified");
            b.start = sz;
            break;
        case 'q': quiet = true; break;
        case 's':
            if (vmm_parse_size(optarg, &sz) < 0 || !sz || sz > INT32_MAX)
                return err(1, "Invalid buffer size specified");
            b.bufsize = sz;
            break;
        case 'S':
            if (vmm_parse_size(optarg, &sz) < 0 || sz > INT32_MAX)
                return err(1, "Invalid step size specified");
            b.step = sz;
            step_given = true;
            break;
        case 't':
            if (!strcmp(optarg, "none") || !strcmp(optarg, "directsync"))
                flags |= VMM_BLOCK_NOCACHE;
            else if (strcmp(optarg, "writeback") && strcmp(optarg, "unsafe") && strcmp(optarg, "writethrough"))
                return err(1, "Invalid cache mode");
            break;
        case 'w': b.write = true; break;
        case 'U': flags |= VMM_BLOCK_FORCE_SHARE; break;
        case 'h': return usage_ok();
        case OPT_FLUSH_INTERVAL:
            v = strtol(optarg, &end, 0);
            if (*end || v < 0 || v > INT32_MAX)
                return err(1, "Invalid flush interval specified");
            b.flush_interval = (int)v;
            break;
        case OPT_PATTERN:
            v = strtol(optarg, &end, 0);
            if (*end || v < 0 || v > 0xff)
                return err(1, "Invalid pattern byte specified");
            pattern = (int)v;
            break;
        case OPT_NO_DRAIN: b.drain = false; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    if (b.flush_interval && !b.write)
        return err(1, "--flush-interval is only available in write tests");
    if (b.flush_interval && b.flush_interval < b.depth)
        return err(1, "Flush interval can't be smaller than depth");
    if (!b.drain && !b.flush_interval)
        return err(1, "--no-drain only makes sense with --flush-interval");
    if (!step_given)
        b.step = b.bufsize;
    if (b.write)
        flags |= VMM_BLOCK_RDWR;
    b.blk = open_image(argv[optind], fmt, flags, image_opts);
    if (!b.blk)
        return 1;
    b.image_size = (uint64_t)vmm_block_size(b.blk);
    b.offset = b.start;
    if (b.start + b.bufsize > b.image_size) {
        vmm_block_close(b.blk);
        return err(1, "The image is too small for the given offset and buffer size");
    }
    if (!quiet) {
        printf("Sending %d %s requests, %" PRIu64 " bytes each, %d in parallel (starting at offset %" PRIu64
               ", step size %" PRIu64 ")\n", b.count, b.write ? "write" : "read", b.bufsize, b.depth,
               b.start, b.step);
        if (b.flush_interval)
            printf("Sending flush every %d requests\n", b.flush_interval);
        fflush(stdout);
    }
    size_t slot_size = (b.bufsize + 4095) / 4096 * 4096;
    const char *w = getenv("VMM_IMG_BENCH_WORKERS"); /* tuning knob for bench/ */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN), pool = cpus > 0 ? 4 * cpus : 8;
    if (pool > 64)
        pool = 64;
    vmm_block_set_workers(b.blk, w ? (unsigned)atoi(w) : b.depth < pool ? (unsigned)b.depth : (unsigned)pool);
    int efd = vmm_block_completion_fd(b.blk);
    bench_slots = calloc((size_t)b.depth, sizeof(*bench_slots));
    if (efd < 0 || !bench_slots || posix_memalign((void **)&b.bufs, 4096, slot_size * (size_t)b.depth)) {
        vmm_block_close(b.blk);
        return efd < 0 ? api_err(1) : err(1, "out of memory");
    }
    memset(b.bufs, pattern, slot_size * (size_t)b.depth);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < b.depth; i++) {
        bench_slots[i] = (struct bench_slot){ &b, b.bufs + slot_size * (size_t)i, { 0 }, false };
        bench_refill(&b, &bench_slots[i]);
    }
    while (b.inflight && !b.failed) {
        /* Look for completions a little before sleeping in poll(): at low
         * queue depths the next one is usually microseconds away. */
        int n = vmm_block_dispatch(b.blk);
        struct timespec s0, s1;
        clock_gettime(CLOCK_MONOTONIC, &s0);
        while (n == 0) { /* up to 50 us: cheaper than a wake-up on an idle CPU */
            n = vmm_block_dispatch(b.blk);
            clock_gettime(CLOCK_MONOTONIC, &s1);
            if ((s1.tv_sec - s0.tv_sec) * 1000000000L + (s1.tv_nsec - s0.tv_nsec) > 50000)
                break;
        }
        if (n == 0) {
            struct pollfd pfd = { efd, POLLIN, 0 };
            poll(&pfd, 1, 1000);
            vmm_block_dispatch(b.blk);
        }
    }
    vmm_block_drain(b.blk);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int ret = 0;
    if (b.failed)
        ret = err(1, "Failed request: %s", b.error ? b.error : "unknown error");
    else if (!quiet)
        printf("Run completed in %3.3f seconds.\n",
               (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (vmm_block_close(b.blk) < 0 && !ret)
        ret = api_err(1);
    free(b.bufs);
    free(bench_slots);
    free(b.error);
    return ret;
}
