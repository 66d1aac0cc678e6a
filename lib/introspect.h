/* Hooks each subsystem provides to vmm_list_types / vmm_list_properties. */
#ifndef LIBVMM_INTROSPECT_H
#define LIBVMM_INTROSPECT_H
#include "libvmm/common.h"

/* Each returns 0, or -1 with the error set (ENOENT for an unknown name). */
int machine_list_types(vmm_type_fn fn, void *user_data);
int machine_list_properties(const char *name, vmm_property_fn fn, void *user_data);
int device_list_types(vmm_type_fn fn, void *user_data);
int device_list_properties(const char *name, vmm_property_fn fn, void *user_data);
int cpu_model_list_types(vmm_type_fn fn, void *user_data);
int block_list_drivers(vmm_type_fn fn, void *user_data);
int block_list_driver_properties(const char *name, vmm_property_fn fn, void *user_data);
int chardev_list_types(vmm_type_fn fn, void *user_data);
int chardev_list_properties(const char *name, vmm_property_fn fn, void *user_data);
#endif
