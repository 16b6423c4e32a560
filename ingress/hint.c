/* The principal hint (gw.requests key): see hint.h. The credential is not verified
 * here (authz does that); the hint only chooses a partition. */
#include "hint.h"
#include "b64url.h"
#include "hex.h"
#include "log.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* The "sub" claim of a compact JWT (header.payload.signature), unverified. Returns -1
 * when cred is not a JWT with a non-empty string sub shorter than cap. */
static int jwt_subject(const char *cred, size_t len, char *out, size_t cap)
{
	const char *dot1 = memchr(cred, '.', len);
	if (!dot1)
		return -1;
	const char *p = dot1 + 1;
	const char *dot2 = memchr(p, '.', len - (size_t)(p - cred));
	if (!dot2 || dot2 == p || (size_t)(dot2 - p) > 8192)
		return -1;
	unsigned char json[6200];
	long jl = b64url_decode(p, (size_t)(dot2 - p), json, sizeof json);
	if (jl <= 0)
		return -1;
	json_t *claims = json_loadb((const char *)json, (size_t)jl, 0, NULL);
	const char *s = json_string_value(json_object_get(claims, "sub"));
	int rc = -1;
	if (s && *s && strlen(s) < cap) {
		snprintf(out, cap, "%s", s);
		rc = 0;
	}
	json_decref(claims);
	return rc;
}

void hint_derive(const char *cred, size_t len, char out[HINT_MAX])
{
	if (len > 20 && memcmp(cred, "gw_", 3) == 0 && cred[19] == '_') {
		int ok = 1;
		for (int i = 3; i < 19; i++)
			if (!((cred[i] >= '0' && cred[i] <= '9') ||
			      (cred[i] >= 'a' && cred[i] <= 'f')))
				ok = 0;
		if (ok) {
			memcpy(out, cred + 3, 16);
			out[16] = 0;
			return;
		}
	}
	/* A JWT: its subject, so every token of one principal meets in the same authz
	 * copy even as tokens are refreshed. */
	char sub[256];
	const char *subject = jwt_subject(cred, len, sub, sizeof sub) == 0 ? sub : NULL;
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	int ok = subject ? EVP_Digest(subject, strlen(subject), md, &mdlen, EVP_sha256(), NULL)
			 : EVP_Digest(cred, len, md, &mdlen, EVP_sha256(), NULL);
	if (!ok || mdlen < 16) {
		/* One fixed key is still a valid partition choice and never leaks the
		 * credential; authz decides on the credential itself. */
		log_error("cannot hash the credential for the principal hint: all such "
			  "requests go to one partition");
		memset(md, 0, 16);
	}
	hex_encode(md, 16, out);
	OPENSSL_cleanse(sub, sizeof sub);
}
