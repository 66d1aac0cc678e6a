/* libFuzzer harness for the QMP server's input path: message framing,
 * JSON parsing, the envelope and argument checks, the commands and the
 * human monitor, on a machine that is never started (no kernel, so "cont"
 * fails).  Every input is one client session starting with negotiation
 * already sent when the input begins with 'N'. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "control/control-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vmm_machine *m = vmm_machine_new("microvm");
    if (!m)
        return 0;
    static const char negotiate[] = "{\"execute\":\"qmp_capabilities\"}";
    char *text = malloc(sizeof(negotiate) + size);
    size_t len = 0;
    if (size && data[0] == 'N') {
        memcpy(text, negotiate, sizeof(negotiate) - 1);
        len = sizeof(negotiate) - 1;
        data++;
        size--;
    }
    memcpy(text + len, data, size);
    control_fuzz_feed(m, text, len + size);
    free(text);
    vmm_machine_free(m);
    return 0;
}
