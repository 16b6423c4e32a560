/* The principal hint: the gw.requests key that sends every request of one principal to
 * the same authz copy, derived from the credential without verifying it. */
#ifndef GW_INGRESS_HINT_H
#define GW_INGRESS_HINT_H

#include <stddef.h>

/* Room for the longest hint (32 hex digits) and its NUL. */
#define HINT_MAX 65

/* Writes to out the hint for the credential cred (len bytes, not NUL-terminated):
 * an API key gw_<16 hex id>_<secret> gives its public id (16 hex digits); a compact
 * JWT with a string "sub" gives hex of the first 16 bytes of SHA-256(sub), so every
 * token of one subject meets in one authz copy; anything else gives the same digest
 * of the whole credential. Never contains the credential or the subject. */
void hint_derive(const char *cred, size_t len, char out[HINT_MAX]);

#endif
