/* libFuzzer target: JWKS parsing (the file or URL document authz trusts for keys). Any
 * input must parse or fail cleanly; every key kept must have an algorithm and a key. */
#include "jwt.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct jwks k;
	int skipped = 0;
	char err[256];
	if (jwks_parse((const char *)data, size, &k, &skipped, err, sizeof err) == 0) {
		for (int i = 0; i < k.n; i++)
			if (k.keys[i].alg == JWT_ALG_NONE || !k.keys[i].pkey)
				abort();
		jwks_free(&k);
	} else if (!err[0]) {
		abort();
	}
	return 0;
}
