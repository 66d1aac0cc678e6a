/* What the block core offers the public API layer (block-api.c) beyond the
 * driver contract in block-int.h.  Internal. */
#ifndef LIBVMM_BLOCK_CORE_H
#define LIBVMM_BLOCK_CORE_H

#include "block-int.h"

/* Open a node graph.  `spec` is a filename, or (when `is_options`) an
 * options string "driver=qcow2,file.filename=x,backing.driver=raw,...".
 * `format` (may be NULL) names the format driver; when neither it nor a
 * "driver" option is given, the format is probed.  Returns 0 or -errno. */
int block_open(struct block_node **out, const char *spec, bool is_options,
               const char *format, unsigned flags);
/* Whether a string given to vmm_block_open reads as an options string. */
bool block_spec_is_options(const char *spec);
void block_node_unref(struct block_node *bs);

/* Create an image: the protocol file, then the format's metadata.  `size`
 * UINT64_MAX takes the size of the backing file named in the options. */
int block_create(const char *filename, const char *format, uint64_t size,
                 const char *options);

/* Parse `options` into the format's create_opts (size set); the caller
 * releases with block_create_opts_free. */
void *block_create_opts_new(const struct block_driver *drv, uint64_t size,
                            const char *options, bool set_size);
void block_create_opts_free(const struct block_driver *drv, void *create_opts);

/* Resolve a backing file name relative to the directory of `base`. */
char *block_resolve_relative(const char *base, const char *name);

/* Bytes of host storage used by a node and its protocol child. */
int64_t block_node_allocated(struct block_node *bs);

/* Read the first bytes of a node and name the best matching format. */
const struct block_driver *block_probe(struct block_node *file);

/* The i-th registered driver, NULL past the end. */
const struct block_driver *block_driver_at(size_t i);

#endif
