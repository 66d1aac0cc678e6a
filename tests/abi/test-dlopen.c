/* Load libvmm.so.0 with dlopen (no link-time dependency), find every symbol
 * listed in the version script, and call a few through the pointers: a
 * plugin or a language binding loads the library this way.
 * argv[1]: the library; argv[2]: lib/libvmm.map. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "libvmm/libvmm.h"

static int check_map_symbols(void *lib, const char *map_path)
{
    FILE *f = fopen(map_path, "r");
    if (!f) {
        perror(map_path);
        return -1;
    }
    char line[256];
    int found = 0, missing = 0;
    while (fgets(line, sizeof(line), f)) {
        char name[128];
        if (sscanf(line, " %127[a-z0-9_];", name) == 1 && !strncmp(name, "vmm_", 4)) {
            if (dlsym(lib, name)) {
                found++;
            } else {
                fprintf(stderr, "dlsym(%s): %s\n", name, dlerror());
                missing++;
            }
        }
    }
    fclose(f);
    printf("%d symbols of the version script found\n", found);
    return missing || found < 10 ? -1 : 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s LIBRARY MAP\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    if (check_map_symbols(lib, argv[2]) < 0)
        return 1;
    if (dlsym(lib, "vmm_log")) {
        fprintf(stderr, "an internal symbol (vmm_log) is visible\n");
        return 1;
    }
    const char *(*version)(void) = (const char *(*)(void))dlsym(lib, "vmm_version");
    vmm_machine *(*machine_new)(const char *) =
        (vmm_machine *(*)(const char *))dlsym(lib, "vmm_machine_new");
    void (*machine_free)(vmm_machine *) = (void (*)(vmm_machine *))dlsym(lib, "vmm_machine_free");
    int (*get_errno)(void) = (int (*)(void))dlsym(lib, "vmm_get_errno");
    printf("libvmm %s\n", version());
    if (machine_new("no-such-type") || get_errno() == 0) {
        fprintf(stderr, "an unknown machine type was accepted\n");
        return 1;
    }
    vmm_machine *m = machine_new("microvm");
    if (!m)
        return 1;
    machine_free(m);
    if (dlclose(lib) != 0) {
        fprintf(stderr, "dlclose: %s\n", dlerror());
        return 1;
    }
    return 0;
}
