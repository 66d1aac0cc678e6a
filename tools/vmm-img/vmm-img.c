/* vmm-img: disk image tool with qemu-img's command-line conventions, a thin
 * client of libvmm's public block API. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "img.h"

/* ---- shared helpers ---------------------------------------------------- */

int err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("vmm-img: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

int api_err(int code)
{
    return err(code, "%s", vmm_get_error());
}

int parse_size_arg(const char *text, uint64_t *out)
{
    if (vmm_parse_size(text, out) < 0) {
        err(1, "Invalid image size specified. You may use k, M, G, T, P or E suffixes for "
               "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return -1;
    }
    if (*out > INT64_MAX) {
        err(1, "Image size must be less than 8 EiB!");
        return -1;
    }
    return 0;
}

vmm_block *open_image(const char *name, const char *fmt, unsigned flags, bool image_opts)
{
    vmm_block *blk = vmm_block_open(name, fmt, flags | (image_opts ? VMM_BLOCK_IMAGE_OPTS : 0));
    if (!blk)
        api_err(1);
    return blk;
}

/* Close the image after a command's work (ret: its result); a failed close fails a
 * command that had succeeded. Returns the process exit status. */
static int close_image_exit_status(vmm_block *blk, int ret)
{
    if (vmm_block_close(blk) < 0 && ret == 0)
        ret = api_err(-1);
    return ret < 0 ? 1 : 0;
}

void progress_update(struct progress *p, uint64_t done, uint64_t total)
{
    if (!p->enabled)
        return;
    double pct = total ? 100.0 * (double)done / (double)total : 100.0;
    if (pct - p->last < 1.0 && pct < 100.0 && p->last >= 0)
        return;
    p->last = pct;
    if (isatty(STDOUT_FILENO)) { /* a bar on a terminal, qemu's form otherwise */
        int filled = (int)(pct / 2.5);
        printf("\r[%.*s%*s] %6.2f%%", filled, "########################################", 40 - filled, "", pct);
    } else {
        printf("    (%3.2f/100%%)\r", pct);
    }
    fflush(stdout);
}

void progress_end(struct progress *p)
{
    if (p->enabled) {
        p->last = -1;
        progress_update(p, 1, 1);
        printf("\n");
        fflush(stdout);
    }
}

int progress_cb(void *user_data, uint64_t done, uint64_t total)
{
    progress_update(user_data, done, total);
    return 0;
}

void human_size(uint64_t val, char *buf, size_t len)
{
    static const char *const suffixes[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
    int i;
    /* Switch unit once the integer part would reach 1000 (as qemu does). */
    frexp((double)val / (1000.0 / 1024.0), &i);
    i = (i - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    double div = ldexp(1.0, i * 10);
    snprintf(buf, len, "%0.3g %sB", (double)val / div, suffixes[i]);
}

static void log_to_stderr(void *ud, int level, const char *domain, const char *msg)
{
    (void)ud;
    fprintf(stderr, "vmm-img: %s%s: %s\n", level <= VMM_LOG_ERROR ? "error: " : "warning: ", domain, msg);
}

/* ---- usage ------------------------------------------------------------- */

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *usage;
};

static const struct command *current;
static char **current_argv;

int usage_ok(void)
{
    printf("usage: vmm-img %s\n", current->usage);
    return 0;
}

/* One line naming what was wrong with the command line. */
int usage_bad(void)
{
    return err(1, "%s: wrong number of arguments (try 'vmm-img %s --help')", current->name, current->name);
}

int usage_bad_opt(int c)
{
    const char *arg = optind > 0 ? current_argv[optind - 1] : "";
    if (c == ':')
        return err(1, "%s: option '%s' requires an argument (try 'vmm-img %s --help')", current->name,
                   arg, current->name);
    if (optopt)
        return err(1, "%s: invalid option -- '%c' (try 'vmm-img %s --help')", current->name, optopt,
                   current->name);
    return err(1, "%s: unrecognized option '%s' (try 'vmm-img %s --help')", current->name, arg,
               current->name);
}

enum {
    OPT_HELP = 256, OPT_OUTPUT, OPT_BACKING_CHAIN, OPT_IMAGE_OPTS, OPT_SHRINK, OPT_PREALLOC,
    OPT_START, OPT_MAXLEN, OPT_SIZE, OPT_FORCE, OPT_OBJECT,
};

static int parse_output(const char *arg, bool *json)
{
    if (!strcmp(arg, "json"))
        *json = true;
    else if (!strcmp(arg, "human"))
        *json = false;
    else
        return err(1, "--output must be used with human or json as argument.");
    return 0;
}

/* ---- create -------------------------------------------------------------- */

static int append_opt(char **opts, const char *key, const char *value)
{
    size_t old = *opts ? strlen(*opts) : 0;
    size_t need = old + strlen(key) + 2 * strlen(value) + 3;
    char *s = realloc(*opts, need);
    if (!s)
        return -1;
    char *p = s + old;
    if (old)
        *p++ = ',';
    p += sprintf(p, "%s=", key);
    for (const char *v = value; *v; v++) { /* escape commas */
        *p++ = *v;
        if (*v == ',')
            *p++ = ',';
    }
    *p = '\0';
    *opts = s;
    return 0;
}

static int join_opts(char **opts, const char *more)
{
    size_t old = *opts ? strlen(*opts) : 0;
    char *s = realloc(*opts, old + strlen(more) + 2);
    if (!s)
        return -1;
    if (old)
        s[old++] = ',';
    strcpy(s + old, more);
    *opts = s;
    return 0;
}

static int print_option(void *ud, const struct vmm_property_info *p)
{
    (void)ud;
    char name[64];
    snprintf(name, sizeof(name), "%s=<%s>", p->name, p->type);
    printf("  %-24s - %s", name, p->help ? p->help : "");
    if (p->choices)
        printf(" (%s)", p->choices);
    if (p->default_value)
        printf(" [default: %s]", p->default_value);
    printf("\n");
    return 0;
}

/* `-o help`: the format's creation options. */
int print_create_options(const char *fmt)
{
    printf("Supported options:\n");
    if (vmm_block_list_create_options(fmt, print_option, NULL) < 0)
        return api_err(1);
    return 0;
}

static int cmd_create(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "object", required_argument, NULL, OPT_OBJECT }, { 0 } };
    const char *fmt = "raw", *backing = NULL, *backing_fmt = NULL;
    char *opts = NULL;
    bool quiet = false, unsafe = false;
    int c;
    while ((c = getopt_long(argc, argv, ":f:b:F:o:qhu", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'b': backing = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'o':
            if (!strcmp(optarg, "help") || !strcmp(optarg, "?"))
                return print_create_options(fmt);
            join_opts(&opts, optarg);
            break;
        case 'q': quiet = true; break;
        case 'u': unsafe = true; break;
        case 'h': return usage_ok();
        case OPT_OBJECT: return err(1, "--object is not supported");
        default: return usage_bad_opt(c);
        }
    }
    if (optind >= argc)
        return usage_bad();
    const char *filename = argv[optind++];
    int64_t size = -1;
    if (optind < argc) {
        uint64_t s;
        if (parse_size_arg(argv[optind++], &s) < 0)
            return 1;
        size = (int64_t)s;
    }
    if (optind < argc)
        return usage_bad();
    if (backing) {
        if (!backing_fmt) {
            /* Never guess a backing format: record it or refuse. */
            return err(1, "%s: Backing file specified without backing format (use -F)", filename);
        }
        append_opt(&opts, "backing_file", backing);
        append_opt(&opts, "backing_fmt", backing_fmt);
    } else if (backing_fmt) {
        return err(1, "-F needs -b");
    }
    if (size < 0 && !backing)
        return err(1, "Image creation needs a size parameter");
    (void)unsafe;
    if (!quiet) {
        printf("Formatting '%s', fmt=%s", filename, fmt);
        if (size >= 0)
            printf(" size=%" PRId64, size);
        if (opts)
            printf(" %s", opts);
        printf("\n");
        fflush(stdout);
    }
    int ret = vmm_block_create(filename, fmt, size, opts);
    free(opts);
    return ret < 0 ? api_err(1) : 0;
}

/* ---- info ------------------------------------------------------------- */

struct info_item {
    char *key;
    enum vmm_block_info_type type;
    char *str;
    int64_t num;
};

struct info_list {
    struct info_item *items;
    size_t count;
};

static int collect_info(void *ud, const char *key, enum vmm_block_info_type type, const char *str,
                        int64_t num)
{
    struct info_list *l = ud;
    struct info_item *g = realloc(l->items, (l->count + 1) * sizeof(*g));
    if (!g)
        return 1;
    l->items = g;
    g[l->count++] = (struct info_item){ strdup(key), type, str ? strdup(str) : NULL, num };
    return 0;
}

static void free_info(struct info_list *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free(l->items[i].key);
        free(l->items[i].str);
    }
    free(l->items);
}

static const struct info_item *find_item(const struct info_list *l, const char *key)
{
    for (size_t i = 0; i < l->count; i++)
        if (!strcmp(l->items[i].key, key))
            return &l->items[i];
    return NULL;
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void indent(int n)
{
    printf("%*s", n * 4, "");
}

static void json_value(const struct info_item *it)
{
    if (it->type == VMM_BLOCK_INFO_STR)
        json_string(it->str ? it->str : "");
    else if (it->type == VMM_BLOCK_INFO_INT)
        printf("%" PRId64, it->num);
    else
        printf("%s", it->num ? "true" : "false");
}

/* Print the keys under `prefix` as a JSON object, nesting at dots. */
static void json_object(const struct info_list *l, const char *prefix, int depth, bool *first)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < l->count; i++) {
        const char *key = l->items[i].key;
        if (strncmp(key, prefix, plen))
            continue;
        const char *rest = key + plen;
        const char *dot = strchr(rest, '.');
        size_t clen = dot ? (size_t)(dot - rest) : strlen(rest);
        /* Print each child object once, at its first key. */
        bool seen = false;
        for (size_t j = 0; j < i && dot; j++)
            if (!strncmp(l->items[j].key, key, plen + clen + 1))
                seen = true;
        if (seen)
            continue;
        printf("%s\n", *first ? "" : ",");
        *first = false;
        indent(depth);
        printf("\"%.*s\": ", (int)clen, rest);
        if (!dot) {
            json_value(&l->items[i]);
            continue;
        }
        char sub[512];
        snprintf(sub, sizeof(sub), "%.*s", (int)(plen + clen + 1), key);
        bool sub_first = true;
        printf("{");
        json_object(l, sub, depth + 1, &sub_first);
        printf("\n");
        indent(depth);
        printf("}");
    }
}

struct snap_list {
    struct vmm_block_snapshot *items;
    int count;
};

static int collect_snapshot(void *ud, const struct vmm_block_snapshot *sn)
{
    struct snap_list *l = ud;
    struct vmm_block_snapshot *g = realloc(l->items, (size_t)(l->count + 1) * sizeof(*g));
    if (!g)
        return 1;
    l->items = g;
    g[l->count] = *sn;
    g[l->count].id = strdup(sn->id ? sn->id : "");
    g[l->count].name = strdup(sn->name ? sn->name : "");
    l->count++;
    return 0;
}

static void free_snapshots(struct snap_list *l)
{
    for (int i = 0; i < l->count; i++) {
        free((char *)l->items[i].id);
        free((char *)l->items[i].name);
    }
    free(l->items);
}

static void print_snapshot_table(const struct snap_list *l)
{
    printf("%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (int i = 0; i < l->count; i++) {
        const struct vmm_block_snapshot *sn = &l->items[i];
        char size[32], date[32], clock[32], icount[32] = "";
        human_size(sn->vm_state_size, size, sizeof(size));
        time_t t = sn->date_sec;
        struct tm tm;
        localtime_r(&t, &tm);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
        uint64_t secs = sn->vm_clock_nsec / UINT64_C(1000000000);
        snprintf(clock, sizeof(clock), "%02" PRIu64 ":%02" PRIu64 ":%02" PRIu64 ".%03" PRIu64,
                 secs / 3600, secs / 60 % 60, secs % 60, sn->vm_clock_nsec / 1000000 % 1000);
        if (sn->icount != UINT64_MAX)
            snprintf(icount, sizeof(icount), "%" PRIu64, sn->icount);
        printf("%-9s %-16s %8s%20s%13s%11s\n", sn->id, sn->name, size, date, clock, icount);
    }
}

static void print_snapshots_json(const struct snap_list *l, int depth)
{
    printf("[");
    for (int i = 0; i < l->count; i++) {
        const struct vmm_block_snapshot *sn = &l->items[i];
        printf("%s\n", i ? "," : "");
        indent(depth + 1);
        printf("{\n");
        if (sn->icount != UINT64_MAX) {
            indent(depth + 2);
            printf("\"icount\": %" PRIu64 ",\n", sn->icount);
        }
        indent(depth + 2);
        printf("\"vm-clock-nsec\": %" PRIu64 ",\n", sn->vm_clock_nsec % UINT64_C(1000000000));
        indent(depth + 2);
        printf("\"name\": ");
        json_string(sn->name);
        printf(",\n");
        indent(depth + 2);
        printf("\"date-sec\": %" PRIu32 ",\n", sn->date_sec);
        indent(depth + 2);
        printf("\"date-nsec\": %" PRIu32 ",\n", sn->date_nsec);
        indent(depth + 2);
        printf("\"vm-clock-sec\": %" PRIu64 ",\n", sn->vm_clock_nsec / UINT64_C(1000000000));
        indent(depth + 2);
        printf("\"id\": ");
        json_string(sn->id);
        printf(",\n");
        indent(depth + 2);
        printf("\"vm-state-size\": %" PRIu64 "\n", sn->vm_state_size);
        indent(depth + 1);
        printf("}");
    }
    printf("\n");
    indent(depth);
    printf("]");
}

static void print_info_json(const struct info_list *l, const struct snap_list *sn, int depth)
{
    indent(depth);
    printf("{");
    bool first = true;
    if (sn->count) {
        printf("\n");
        indent(depth + 1);
        printf("\"snapshots\": ");
        print_snapshots_json(sn, depth + 1);
        first = false;
    }
    json_object(l, "", depth + 1, &first);
    printf("\n");
    indent(depth);
    printf("}");
}

static void print_info_human(const struct info_list *l, const struct snap_list *sn)
{
    const struct info_item *it;
    char buf[64];
    printf("image: %s\n", find_item(l, "filename")->str);
    printf("file format: %s\n", find_item(l, "format")->str);
    it = find_item(l, "virtual-size");
    human_size((uint64_t)it->num, buf, sizeof(buf));
    printf("virtual size: %s (%" PRId64 " bytes)\n", buf, it->num);
    if ((it = find_item(l, "actual-size"))) {
        human_size((uint64_t)it->num, buf, sizeof(buf));
        printf("disk size: %s\n", buf);
    } else {
        printf("disk size: unavailable\n");
    }
    if ((it = find_item(l, "cluster-size")))
        printf("cluster_size: %" PRId64 "\n", it->num);
    if ((it = find_item(l, "dirty-flag")) && it->num)
        printf("cleanly shut down: no\n");
    if ((it = find_item(l, "backing-filename"))) {
        const struct info_item *full = find_item(l, "full-backing-filename");
        printf("backing file: %s", it->str);
        if (full && strcmp(full->str, it->str))
            printf(" (actual path: %s)", full->str);
        printf("\n");
    }
    if ((it = find_item(l, "backing-filename-format")))
        printf("backing file format: %s\n", it->str);
    if (sn->count) {
        printf("Snapshot list:\n");
        print_snapshot_table(sn);
    }
    bool header = false;
    for (size_t i = 0; i < l->count; i++) {
        const char *key = l->items[i].key;
        static const char prefix[] = "format-specific.data.";
        if (strncmp(key, prefix, strlen(prefix)))
            continue;
        if (!header)
            printf("Format specific information:\n");
        header = true;
        char name[128];
        snprintf(name, sizeof(name), "%s", key + strlen(prefix));
        for (char *p = name; *p; p++)
            if (*p == '-')
                *p = ' ';
        printf("    %s: ", name);
        if (l->items[i].type == VMM_BLOCK_INFO_STR)
            printf("%s\n", l->items[i].str);
        else if (l->items[i].type == VMM_BLOCK_INFO_INT)
            printf("%" PRId64 "\n", l->items[i].num);
        else
            printf("%s\n", l->items[i].num ? "true" : "false");
    }
}

static int info_one(vmm_block *blk, bool json, int depth)
{
    struct info_list l = { 0 };
    struct snap_list sn = { 0 };
    if (vmm_block_info(blk, collect_info, &l) < 0 || vmm_block_snapshot_list(blk, collect_snapshot, &sn) < 0) {
        free_info(&l);
        free_snapshots(&sn);
        return api_err(1);
    }
    if (json)
        print_info_json(&l, &sn, depth);
    else
        print_info_human(&l, &sn);
    free_info(&l);
    free_snapshots(&sn);
    return 0;
}

static int cmd_info(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "output", required_argument, NULL, OPT_OUTPUT },
        { "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { 0 } };
    const char *fmt = NULL;
    bool json = false, chain = false, image_opts = false;
    unsigned flags = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'U': flags |= VMM_BLOCK_FORCE_SHARE; break;
        case 'h': return usage_ok();
        case OPT_OUTPUT: if (parse_output(optarg, &json)) return 1; break;
        case OPT_BACKING_CHAIN: chain = true; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    vmm_block *blk = open_image(argv[optind], fmt, flags | (chain ? 0 : VMM_BLOCK_NO_BACKING), image_opts);
    if (!blk)
        return 1;
    int ret = 0;
    if (!chain) {
        ret = info_one(blk, json, 0);
        if (json)
            printf("\n");
    } else {
        if (json)
            printf("[\n");
        int i = 0;
        for (vmm_block *b = blk; b && !ret; b = vmm_block_backing(b), i++) {
            if (i)
                printf(json ? ",\n" : "\n");
            ret = info_one(b, json, json ? 1 : 0);
        }
        if (json)
            printf("\n]\n");
    }
    vmm_block_close(blk);
    return ret;
}

/* ---- check ------------------------------------------------------------- */

static void check_print_human(const struct vmm_block_check_result *r)
{
    if (r->corruptions_fixed || r->leaks_fixed)
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRId64 " leaked clusters\n    %" PRId64 " corruptions\n\n"
               "Double checking the fixed image now...\n", r->leaks_fixed, r->corruptions_fixed);
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n", r->leaks);
        if (r->check_errors)
            printf("\n%" PRId64 " internal errors have occurred during the check.\n", r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               (double)r->allocated_clusters * 100.0 / (double)r->total_clusters,
               (double)r->fragmented_clusters * 100.0 / (double)r->allocated_clusters,
               (double)r->compressed_clusters * 100.0 / (double)r->allocated_clusters);
    if (r->image_end_offset > 0)
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
}

static void check_print_json(const struct vmm_block_check_result *r, const char *filename, const char *fmt)
{
    printf("{\n");
    struct { const char *key; int64_t v; bool always; } f[] = {
        { "image-end-offset", r->image_end_offset, false },
        { "total-clusters", r->total_clusters, false },
        { "check-errors", r->check_errors, true },
        { "allocated-clusters", r->allocated_clusters, false },
        { "fragmented-clusters", r->fragmented_clusters, false },
        { "compressed-clusters", r->compressed_clusters, false },
        { "corruptions", r->corruptions, false },
        { "leaks", r->leaks, false },
        { "corruptions-fixed", r->corruptions_fixed, false },
        { "leaks-fixed", r->leaks_fixed, false },
    };
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        if (f[i].always || f[i].v)
            printf("    \"%s\": %" PRId64 ",\n", f[i].key, f[i].v);
    printf("    \"filename\": ");
    json_string(filename);
    printf(",\n    \"format\": ");
    json_string(fmt);
    printf("\n}\n");
}

static int cmd_check(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "output", required_argument, NULL, OPT_OUTPUT },
        { "repair", required_argument, NULL, 'r' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { 0 } };
    const char *fmt = NULL;
    bool json = false, quiet = false, image_opts = false;
    unsigned fix = 0, flags = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:hr:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'r':
            if (!strcmp(optarg, "leaks"))
                fix = VMM_BLOCK_FIX_LEAKS;
            else if (!strcmp(optarg, "all"))
                fix = VMM_BLOCK_FIX_LEAKS | VMM_BLOCK_FIX_ERRORS;
            else
                return err(1, "Unknown option value for -r (expecting 'leaks' or 'all'): %s", optarg);
            break;
        case 'T': break;
        case 'q': quiet = true; break;
        case 'U': flags |= VMM_BLOCK_FORCE_SHARE; break;
        case 'h': return usage_ok();
        case OPT_OUTPUT: if (parse_output(optarg, &json)) return 1; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    if (fix && (flags & VMM_BLOCK_FORCE_SHARE))
        return err(1, "-r and -U are mutually exclusive");
    const char *filename = argv[optind];
    vmm_block *blk = open_image(filename, fmt, flags | VMM_BLOCK_CHECK | VMM_BLOCK_NO_BACKING |
                                               (fix ? VMM_BLOCK_RDWR : 0), image_opts);
    if (!blk)
        return 1;
    struct vmm_block_check_result r = { .size = sizeof(r) };
    int ret = vmm_block_check(blk, fix, &r);
    if (ret < 0) {
        int e = vmm_get_errno();
        if (e == ENOTSUP) {
            err(0, "This image format does not support checks");
            vmm_block_close(blk);
            return 63;
        }
        api_err(0);
        vmm_block_close(blk);
        return 1;
    }
    if (fix && (r.corruptions_fixed || r.leaks_fixed)) {
        /* Report what a fresh check of the repaired image finds. */
        struct vmm_block_check_result again = { .size = sizeof(again) };
        if (vmm_block_check(blk, 0, &again) == 0) {
            again.corruptions_fixed = r.corruptions_fixed;
            again.leaks_fixed = r.leaks_fixed;
            r = again;
        }
    }
    if (r.messages && *r.messages)
        fputs(r.messages, stderr);
    if (!quiet) {
        if (json)
            check_print_json(&r, filename, vmm_block_format(blk));
        else
            check_print_human(&r);
    }
    vmm_block_close(blk);
    if (r.check_errors)
        return err(1, "Check failed");
    return r.corruptions ? 2 : r.leaks ? 3 : 0;
}

/* ---- snapshot ------------------------------------------------------------ */

static int cmd_snapshot(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { 0 } };
    int action = 0, c;
    const char *name = NULL, *fmt = NULL;
    bool image_opts = false, share = false;
    while ((c = getopt_long(argc, argv, ":la:c:d:f:hqU", longopts, NULL)) != -1) {
        switch (c) {
        case 'l': case 'a': case 'c': case 'd':
            if (action)
                return err(1, "Cannot mix '-l', '-a', '-c', '-d'");
            action = c;
            name = optarg;
            break;
        case 'f': fmt = optarg; break;
        case 'q': break;
        case 'U': share = true; break;
        case 'h': return usage_ok();
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1 || !action)
        return usage_bad();
    if (share && action != 'l')
        return err(1, "-U can only be used with -l");
    unsigned flags = VMM_BLOCK_NO_BACKING | (action == 'l' ? (share ? VMM_BLOCK_FORCE_SHARE : 0) : VMM_BLOCK_RDWR);
    vmm_block *blk = open_image(argv[optind], fmt, flags, image_opts);
    if (!blk)
        return 1;
    int ret = 0;
    if (action == 'l') {
        struct snap_list sn = { 0 };
        ret = vmm_block_snapshot_list(blk, collect_snapshot, &sn);
        if (ret == 0) {
            printf("Snapshot list:\n");
            print_snapshot_table(&sn);
        }
        free_snapshots(&sn);
    } else if (action == 'c') {
        ret = vmm_block_snapshot_create(blk, name);
    } else if (action == 'a') {
        ret = vmm_block_snapshot_apply(blk, name);
    } else {
        ret = vmm_block_snapshot_delete(blk, name);
    }
    if (ret < 0)
        api_err(1);
    return close_image_exit_status(blk, ret);
}

/* ---- resize -------------------------------------------------------------- */

static int cmd_resize(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "shrink", no_argument, NULL, OPT_SHRINK },
        { "preallocation", required_argument, NULL, OPT_PREALLOC },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS }, { 0 } };
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage_ok();
    if (argc < 3)
        return usage_bad();
    /* The size may start with '-': take it before getopt sees it. */
    const char *size_arg = argv[--argc];
    const char *fmt = NULL, *prealloc = NULL;
    bool shrink = false, quiet = false, image_opts = false;
    int c;
    while ((c = getopt_long(argc, argv, ":f:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'q': quiet = true; break;
        case 'h': return usage_ok();
        case OPT_SHRINK: shrink = true; break;
        case OPT_PREALLOC: prealloc = optarg; break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    int sign = 0;
    if (size_arg[0] == '+' || size_arg[0] == '-')
        sign = size_arg[0] == '+' ? 1 : -1;
    uint64_t n;
    if (parse_size_arg(size_arg + (sign != 0), &n) < 0)
        return 1;
    vmm_block *blk = open_image(argv[optind], fmt, VMM_BLOCK_RDWR | VMM_BLOCK_NO_BACKING, image_opts);
    if (!blk)
        return 1;
    uint64_t cur = (uint64_t)vmm_block_size(blk), size = n;
    if (sign > 0)
        size = cur + n;
    else if (sign < 0) {
        if (n > cur) {
            vmm_block_close(blk);
            return err(1, "New image size must be positive");
        }
        size = cur - n;
    }
    if (size < cur && shrink)
        err(0, "warning: Shrinking an image will delete all data beyond the shrunken image's end. "
               "Before performing such an operation, make sure there is no important data there.");
    int ret = vmm_block_resize(blk, size, shrink ? VMM_BLOCK_RESIZE_SHRINK : 0, prealloc);
    if (ret < 0)
        api_err(1);
    else if (!quiet)
        printf("Image resized.\n");
    vmm_block_close(blk);
    return ret < 0 ? 1 : 0;
}

/* ---- commit / rebase ----------------------------------------------------- */

static int cmd_commit(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS }, { 0 } };
    const char *fmt = NULL;
    bool quiet = false, drop = false, image_opts = false;
    struct progress pg = { false, -1 };
    int c;
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpq", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 't': break;
        case 'b': return err(1, "-b: committing into a base other than the immediate backing image is not supported");
        case 'd': drop = true; break;
        case 'p': pg.enabled = true; break;
        case 'q': quiet = true; break;
        case 'h': return usage_ok();
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    vmm_block *blk = open_image(argv[optind], fmt, VMM_BLOCK_RDWR | VMM_BLOCK_BACKING_RW, image_opts);
    if (!blk)
        return 1;
    if (quiet)
        pg.enabled = false;
    int ret = vmm_block_commit(blk, drop ? VMM_BLOCK_COMMIT_DROP : 0, progress_cb, &pg);
    progress_end(&pg);
    if (ret < 0)
        api_err(1);
    else if (!quiet)
        printf("Image committed.\n");
    return close_image_exit_status(blk, ret);
}

static int cmd_rebase(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { 0 } };
    const char *fmt = NULL, *backing = NULL, *backing_fmt = NULL;
    bool unsafe = false, quiet = false, image_opts = false, have_b = false;
    struct progress pg = { false, -1 };
    int c;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'F': backing_fmt = optarg; break;
        case 'b': backing = optarg; have_b = true; break;
        case 'u': unsafe = true; break;
        case 'p': pg.enabled = true; break;
        case 't': case 'T': case 'U': break;
        case 'q': quiet = true; break;
        case 'h': return usage_ok();
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    if (!have_b)
        return err(1, "Must specify backing file (-b) (use -b \"\" to remove the backing file)");
    if (backing && *backing && !backing_fmt)
        return err(1, "Backing file specified without backing format (use -F)");
    unsigned flags = VMM_BLOCK_RDWR | (unsafe ? VMM_BLOCK_NO_BACKING : 0);
    vmm_block *blk = open_image(argv[optind], fmt, flags, image_opts);
    if (!blk)
        return 1;
    if (quiet)
        pg.enabled = false;
    int ret = vmm_block_rebase(blk, backing, backing_fmt, unsafe ? VMM_BLOCK_REBASE_UNSAFE : 0,
                               progress_cb, &pg);
    progress_end(&pg);
    if (ret < 0)
        api_err(1);
    return close_image_exit_status(blk, ret);
}

/* ---- map ----------------------------------------------------------------- */

struct map_entry {
    uint64_t start, length, offset;
    int depth;
    bool present, zero, data, has_offset;
    const char *filename;
};

static bool mergeable(const struct map_entry *a, const struct map_entry *b)
{
    if (!a->length || a->zero != b->zero || a->data != b->data || a->depth != b->depth ||
        a->present != b->present || a->has_offset != b->has_offset)
        return false;
    if ((a->filename == NULL) != (b->filename == NULL) ||
        (a->filename && strcmp(a->filename, b->filename)))
        return false;
    return !a->has_offset || a->offset + a->length == b->offset;
}

static int dump_entry(const struct map_entry *e, struct map_entry *next, bool json, bool first)
{
    if (json) {
        printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, \"present\": %s, "
               "\"zero\": %s, \"data\": %s", first ? "" : ",\n", e->start, e->length, e->depth,
               e->present ? "true" : "false", e->zero ? "true" : "false", e->data ? "true" : "false");
        if (e->has_offset)
            printf(", \"offset\": %" PRIu64, e->offset);
        printf("}");
        return 0;
    }
    if (e->data && !e->has_offset)
        return err(1, "File contains external, encrypted or compressed clusters.");
    if (e->data && !e->zero)
        printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e->start, e->length,
               e->has_offset ? e->offset : 0, e->filename ? e->filename : "");
    if (next && (!next->data || next->zero)) {
        next->data = false;
        next->zero = true;
    }
    return 0;
}

static int cmd_map(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "output", required_argument, NULL, OPT_OUTPUT },
        { "start-offset", required_argument, NULL, OPT_START },
        { "max-length", required_argument, NULL, OPT_MAXLEN },
        { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { 0 } };
    const char *fmt = NULL;
    bool json = false, image_opts = false;
    uint64_t start = 0, max_len = UINT64_MAX;
    unsigned flags = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'U': flags |= VMM_BLOCK_FORCE_SHARE; break;
        case 'h': return usage_ok();
        case OPT_OUTPUT: if (parse_output(optarg, &json)) return 1; break;
        case OPT_START:
            if (vmm_parse_size(optarg, &start) < 0)
                return err(1, "Invalid start offset specified! You may use k, M, G, T, P or E suffixes for "
                              "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            break;
        case OPT_MAXLEN:
            if (vmm_parse_size(optarg, &max_len) < 0)
                return err(1, "Invalid length specified! You may use k, M, G, T, P or E suffixes for "
                              "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
            break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        default: return usage_bad_opt(c);
        }
    }
    if (optind != argc - 1)
        return usage_bad();
    vmm_block *blk = open_image(argv[optind], fmt, flags, image_opts);
    if (!blk)
        return 1;
    uint64_t size = (uint64_t)vmm_block_size(blk);
    uint64_t end = start < size ? (max_len < size - start ? start + max_len : size) : start;
    if (json)
        printf("[");
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    struct map_entry cur = { 0 };
    bool first = true;
    int ret = 0;
    for (uint64_t off = start; off < end && !ret;) {
        struct vmm_block_extent e = { .size = sizeof(e) };
        uint64_t chunk = end - off < (1ull << 30) ? end - off : (1ull << 30);
        if (vmm_block_block_status(blk, off, chunk, &e) < 0) {
            ret = api_err(1);
            break;
        }
        struct map_entry next = {
            off, e.length, e.offset, e.depth, (e.flags & VMM_BLOCK_STATUS_ALLOCATED) != 0,
            (e.flags & VMM_BLOCK_STATUS_ZERO) != 0, (e.flags & VMM_BLOCK_STATUS_DATA) != 0,
            (e.flags & VMM_BLOCK_STATUS_OFFSET_VALID) != 0,
            (e.flags & VMM_BLOCK_STATUS_OFFSET_VALID) ? e.filename : NULL,
        };
        off += e.length;
        if (cur.length && mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (cur.length) {
            ret = dump_entry(&cur, &next, json, first);
            first = false;
        }
        cur = next;
    }
    if (!ret && cur.length)
        ret = dump_entry(&cur, NULL, json, first);
    if (json)
        printf("]\n");
    vmm_block_close(blk);
    return ret;
}

/* ---- measure / amend ------------------------------------------------------ */

static int cmd_measure(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "output", required_argument, NULL, OPT_OUTPUT },
        { "size", required_argument, NULL, OPT_SIZE }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' }, { "object", required_argument, NULL, OPT_OBJECT }, { 0 } };
    const char *fmt = NULL, *out_fmt = "raw";
    char *opts = NULL;
    bool json = false, image_opts = false, have_size = false;
    uint64_t size = 0;
    unsigned flags = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'f': fmt = optarg; break;
        case 'O': out_fmt = optarg; break;
        case 'o': join_opts(&opts, optarg); break;
        case 'l': return err(1, "-l: snapshots are not supported by measure");
        case 'U': flags |= VMM_BLOCK_FORCE_SHARE; break;
        case 'h': return usage_ok();
        case OPT_OUTPUT: if (parse_output(optarg, &json)) return 1; break;
        case OPT_SIZE:
            if (parse_size_arg(optarg, &size) < 0)
                return 1;
            have_size = true;
            break;
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_OBJECT: return err(1, "--object is not supported");
        default: return usage_bad_opt(c);
        }
    }
    if (have_size == (optind < argc) || optind < argc - 1) {
        free(opts);
        return err(1, "Either --size N or one filename must be specified.");
    }
    vmm_block *src = NULL;
    if (!have_size && !(src = open_image(argv[optind], fmt, flags, image_opts))) {
        free(opts);
        return 1;
    }
    uint64_t required, full;
    int ret = vmm_block_measure(out_fmt, opts, src, size, &required, &full);
    free(opts);
    vmm_block_close(src);
    if (ret < 0)
        return api_err(1);
    if (json)
        printf("{\n    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %" PRIu64 "\n}\n", required, full);
    else
        printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n", required, full);
    return 0;
}

static int cmd_amend(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' }, { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
        { "force", no_argument, NULL, OPT_FORCE }, { "object", required_argument, NULL, OPT_OBJECT }, { 0 } };
    const char *fmt = NULL;
    char *opts = NULL;
    bool image_opts = false;
    struct progress pg = { false, -1 };
    int c;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) != -1) {
        switch (c) {
        case 'o':
            if (!strcmp(optarg, "help") || !strcmp(optarg, "?")) {
                free(opts);
                return print_create_options(fmt ? fmt : "qcow2");
            }
            join_opts(&opts, optarg);
            break;
        case 'f': fmt = optarg; break;
        case 't': break;
        case 'p': pg.enabled = true; break;
        case 'q': pg.enabled = false; break;
        case 'h': return usage_ok();
        case OPT_IMAGE_OPTS: image_opts = true; break;
        case OPT_FORCE: break;
        case OPT_OBJECT: return err(1, "--object is not supported");
        default: return usage_bad_opt(c);
        }
    }
    if (!opts)
        return err(1, "Must specify options (-o)");
    if (optind != argc - 1) {
        free(opts);
        return usage_bad();
    }
    vmm_block *blk = open_image(argv[optind], fmt, VMM_BLOCK_RDWR | VMM_BLOCK_NO_BACKING, image_opts);
    if (!blk) {
        free(opts);
        return 1;
    }
    int ret = vmm_block_amend(blk, opts);
    progress_end(&pg);
    free(opts);
    if (ret < 0)
        api_err(1);
    return close_image_exit_status(blk, ret);
}

/* ---- main ---------------------------------------------------------------- */

static const struct command commands[] = {
    { "amend", cmd_amend, "amend [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename" },
    { "bench", cmd_bench, "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] "
                          "[-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
                          "[-S step_size] [-t cache] [-w] [-U] filename" },
    { "check", cmd_check, "check [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] "
                          "[-U] filename" },
    { "commit", cmd_commit, "commit [--image-opts] [-q] [-f fmt] [-t cache] [-d] [-p] filename" },
    { "compare", cmd_compare, "compare [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] "
                              "filename1 filename2" },
    { "convert", cmd_convert, "convert [--image-opts] [--target-image-opts] [-U] [-c] [-p] [-q] [-n] [-f fmt] "
                              "[-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] "
                              "[-o options] [-S sparse_size] [-m num_coroutines] [-W] "
                              "filename [filename2 [...]] output_filename" },
    { "create", cmd_create, "create [-q] [-f fmt] [-b backing_file -F backing_fmt] [-u] [-o options] "
                            "filename [size]" },
    { "info", cmd_info, "info [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename" },
    { "map", cmd_map, "map [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] "
                      "[--output=ofmt] [-U] filename" },
    { "measure", cmd_measure, "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | "
                              "[--image-opts] [-f fmt] [-U] filename]" },
    { "rebase", cmd_rebase, "rebase [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] "
                            "-b backing_file [-F backing_fmt] filename" },
    { "resize", cmd_resize, "resize [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] "
                            "filename [+ | -]size" },
    { "serve", cmd_serve, "serve [-f fmt] [--image-opts] [-r] [-x name] [-D description] [-t] "
                          "[-k socket | -p port [-b addr]] [-e shared] [--discard=ignore|unmap] "
                          "[--detect-zeroes=off|on|unmap] [--cache=mode] [--aio=threads|native] "
                          "[--pid-file=path] filename" },
    { "snapshot", cmd_snapshot, "snapshot [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | "
                                "-d snapshot] filename" },
};

static void global_help(void)
{
    printf("vmm-img version %s - disk image utility (qemu-img compatible command line)\n"
           "usage: vmm-img [standard options] command [command options]\n\n"
           "Standard options:\n  -h, --help      display this help and exit\n"
           "  -V, --version   output version information and exit\n\nCommand syntax:\n", vmm_version());
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        printf("  %s\n", commands[i].usage);
    printf("\nSupported formats: raw qcow2 (when built); protocols: file host_device\n"
           "Run 'vmm-img COMMAND --help' for one command's usage.\n");
}

int main(int argc, char **argv)
{
    vmm_set_log_callback(log_to_stderr, NULL, NULL, VMM_LOG_WARNING);
    if (argc < 2)
        return err(1, "Not enough arguments. Try 'vmm-img --help' for more information");
    const char *name = argv[1];
    if (!strcmp(name, "-h") || !strcmp(name, "--help")) {
        global_help();
        return 0;
    }
    if (!strcmp(name, "-V") || !strcmp(name, "--version")) {
        printf("vmm-img version %s\n", vmm_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (!strcmp(commands[i].name, name)) {
            current = &commands[i];
            current_argv = argv + 1;
            optind = 1;
            optopt = 0;
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    return err(1, "Command not found: %s", name);
}

