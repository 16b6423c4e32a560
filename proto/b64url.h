/* base64url without padding (RFC 4648 §5), as JWTs and API key secrets spell it: one
 * strict implementation. In the gwhex library, so code without Kafka or libpq can use it. */
#ifndef GW_B64URL_H
#define GW_B64URL_H

#include <stddef.h>

/* The value 0-63 of one base64url character, or -1. */
int b64url_value(unsigned char c);

/* Writes the unpadded encoding of n bytes and a NUL to out (room for (4n + 2) / 3 + 1). */
void b64url_encode(const void *in, size_t n, char *out);

/* Decodes len characters (no padding, unused bits zero: one spelling per value) into at
 * most cap bytes. Returns the byte count, or -1 when the text is not that or too long. */
long b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap);

#endif
