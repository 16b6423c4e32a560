/* The hash chains: one per gw.audit partition, hash = SHA-256(prev_hash || canonical
 * row). The canonical row is built the same way from the COPY line the writer sends and
 * from the column values `auditor verify` reads back, so either side can compute it. */
#ifndef GW_CHAIN_H
#define GW_CHAIN_H

#include <stddef.h>
#include <stdint.h>

#define CHAIN_HASH_LEN 32
#define CHAIN_HEX_LEN  64

/* Hashes one row: prev (CHAIN_HASH_LEN bytes; all zero for a chain's first row), the
 * chain id, then each of the nfields values (NULL value = SQL NULL). Fields are framed
 * (a tag byte, then a 4-byte big-endian length and the bytes) so no two rows share a
 * canonical form. Returns 0, or -1 when the digest is unavailable. */
int chain_hash_fields(const unsigned char *prev, int32_t chain_id, const char *const *vals,
		      const size_t *lens, int nfields, unsigned char *out);

/* The same over one COPY text line (auditor_event_map's: tab-separated, \N for NULL,
 * backslash escapes, ending in a newline), unescaping each field. scratch is reused
 * between calls (owned by the caller, free() it). Returns -1 on a malformed line or
 * out of memory. */
int chain_hash_copy_line(const unsigned char *prev, int32_t chain_id, const char *line, size_t len,
			 char **scratch, size_t *scratchcap, unsigned char *out);

/* Lower-case hex of CHAIN_HASH_LEN bytes into out (CHAIN_HEX_LEN + 1 bytes). */
void chain_hex(const unsigned char *h, char *out);
/* Parses CHAIN_HEX_LEN hex digits. Returns -1 when s is not exactly that. */
int chain_unhex(const char *s, unsigned char *out);

#endif
