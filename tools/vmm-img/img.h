/* vmm-img: shared helpers between the command files. */
#ifndef VMM_IMG_H
#define VMM_IMG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include "libvmm/block.h"

#define VMM_IMG_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Print "vmm-img: message" on stderr; returns `code` for `return err(...)`. */
int err(int code, const char *fmt, ...) VMM_IMG_PRINTF(2, 3);
/* Print "vmm-img: <last libvmm error>"; returns `code`. */
int api_err(int code);

/* Parse a size argument with qemu-img's suffixes; prints the error. */
int parse_size_arg(const char *text, uint64_t *out);

/* Open an image with the common options. */
vmm_block *open_image(const char *name, const char *fmt, unsigned flags, bool image_opts);

/* Progress display for -p: "    (12.34/100%)\r" */
struct progress {
    bool enabled;
    double last;
};
void progress_update(struct progress *p, uint64_t done, uint64_t total);
void progress_end(struct progress *p);
int progress_cb(void *user_data, uint64_t done, uint64_t total);

/* qemu's size_to_str: "1 GiB", "68 KiB", "1.5 MiB". */
void human_size(uint64_t val, char *buf, size_t len);

int usage_ok(void);
int print_create_options(const char *fmt);
int usage_bad(void);
int usage_bad_opt(int getopt_result);

int cmd_convert(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);

#endif
