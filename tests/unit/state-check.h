/* Reusable cmocka checks for state descriptions (lib/migration/state.h).
 *
 * Call from a cmocka test with a device's description and a sample state:
 *
 *     struct serial_state s;
 *     memset(&s, 0, sizeof(s));      // padding must be zero
 *     s.ier = 0x0f; ...              // realistic, non-zero values
 *     state_check_roundtrip(&serial_state_desc, &s);
 *
 * The sample must be a state post_load accepts, with derived fields already
 * consistent, and with zero in every subsection whose needed() is false
 * (a subsection not saved loads as zero). */
#ifndef LIBVMM_TEST_STATE_CHECK_H
#define LIBVMM_TEST_STATE_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include "migration/state.h"

/* (a) save -> load -> save: same bytes, loaded struct == sample; every older
 *     version in [min_version, version) saves and loads too; trailing bytes
 *     after a section are left unconsumed.
 * (b) every truncation, every byte flipped (all bytes for streams up to 4 KiB,
 *     header bytes and a sample of field bytes beyond), versions above max and
 *     below min, a wrong name, body_len off by one, an unknown and a duplicate
 *     subsection: load fails with a message and leaves the state zeroed; only
 *     corruptions of field values (or of a version to another supported one,
 *     or a subsection name to a sibling's) may load, and then what loaded
 *     must save and reload to the same bytes. */
void state_check_roundtrip(const struct state_desc *d, const void *sample_state);

/* Assert that loading data[0..len) fails, leaves the state zeroed and sets a
 * message containing `expect` (when not NULL). */
void state_check_load_fails(const struct state_desc *d, const uint8_t *data, size_t len,
                            const char *expect);

#endif
