/* A small AML builder for the DSDT (ACPI 6.x §20): names, integers,
 * strings, EISA ids, packages, scopes, devices without methods, and buffers
 * holding resource templates.  Nested objects are opened and closed; the
 * PkgLength of each is filled in when it closes.  Allocation failures are
 * remembered and reported once by aml_finish(). */
#ifndef LIBVMM_ACPI_AML_H
#define LIBVMM_ACPI_AML_H

#include <stddef.h>
#include <stdint.h>

#define AML_MAX_DEPTH 16

struct aml {
    uint8_t *data;
    size_t len, cap;
    size_t open[AML_MAX_DEPTH];    /* where each open object's PkgLength goes */
    unsigned depth;
    int error;                     /* errno of the first failure */
};

void aml_init(struct aml *a);
void aml_free(struct aml *a);
/* 0, or -1 with vmm_set_error when building failed (memory, unbalanced). */
int aml_finish(struct aml *a);

void aml_bytes(struct aml *a, const void *p, size_t n);
void aml_integer(struct aml *a, uint64_t v);
void aml_string(struct aml *a, const char *s);
void aml_eisaid(struct aml *a, const char *id);      /* "PNP0A08" */
void aml_namestring(struct aml *a, const char *path); /* "\\_SB", "PCI0", "_SB.PCI0" */
/* Name (NAME, <the object that follows>) */
void aml_name(struct aml *a, const char *name);
void aml_name_integer(struct aml *a, const char *name, uint64_t v);
void aml_name_string(struct aml *a, const char *name, const char *s);
void aml_name_eisaid(struct aml *a, const char *name, const char *id);

void aml_scope_open(struct aml *a, const char *path);
void aml_device_open(struct aml *a, const char *name);
void aml_package_open(struct aml *a, unsigned elements);
void aml_close(struct aml *a);

/* Resource templates (ACPI 6.x §6.4), ended by aml_name_resources(). */
struct aml_res {
    uint8_t buf[512];
    size_t len;
    int overflow;
};
void aml_res_init(struct aml_res *r);
void aml_res_io(struct aml_res *r, uint16_t base, uint8_t len);        /* IO, Decode16 */
void aml_res_word_bus(struct aml_res *r, uint16_t min, uint16_t max);  /* WordBusNumber */
void aml_res_word_io(struct aml_res *r, uint16_t min, uint16_t max);   /* WordIO window */
void aml_res_dword_memory(struct aml_res *r, uint32_t min, uint32_t max);
void aml_res_memory32_fixed(struct aml_res *r, uint32_t base, uint32_t len);
/* Extended Interrupt descriptor, one GSI, resource consumer. */
void aml_res_interrupt(struct aml_res *r, uint32_t gsi, int level, int active_low);
/* Name (NAME, ResourceTemplate () {...}) */
void aml_name_resources(struct aml *a, const char *name, struct aml_res *r);

#endif
