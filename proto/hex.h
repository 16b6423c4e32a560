/* Hex encoding of binary values (hashes, keys, ids): one implementation for every
 * module. A library of its own so code that must not pull in Kafka or libpq can use it. */
#ifndef GW_HEX_H
#define GW_HEX_H

#include <stddef.h>

/* Writes 2n lowercase hex digits and a NUL to out (room for 2n + 1). */
void hex_encode(const void *in, size_t n, char *out);

/* Parses exactly 2n hex digits (either case) from s, which must end there (NUL).
 * Returns 0, or -1 on anything else (out may then be partly written). */
int hex_decode(const char *s, size_t n, unsigned char *out);

#endif
