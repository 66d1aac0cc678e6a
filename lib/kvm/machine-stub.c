/* Temporary until the machine model lands (replaced by lib/kvm/machine.c). */
#include "introspect.h"
#include "util/util.h"
#include <errno.h>
int machine_list_types(vmm_type_fn fn, void *u) { (void)fn; (void)u; return 0; }
int machine_list_properties(const char *n, vmm_property_fn fn, void *u) { (void)fn; (void)u; return vmm_set_error(ENOENT, "unknown machine type '%s'", n); }
int device_list_types(vmm_type_fn fn, void *u) { (void)fn; (void)u; return 0; }
int device_list_properties(const char *n, vmm_property_fn fn, void *u) { (void)fn; (void)u; return vmm_set_error(ENOENT, "unknown device type '%s'", n); }
int cpu_model_list_types(vmm_type_fn fn, void *u) { (void)fn; (void)u; return 0; }
