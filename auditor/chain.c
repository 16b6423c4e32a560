/* Hash-chain arithmetic shared by the writer (store.c) and `auditor verify`. */
#include "chain.h"
#include "hex.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#define TAG_NULL  0
#define TAG_VALUE 1

static int put_field(EVP_MD_CTX *md, const char *v, size_t len)
{
	unsigned char hdr[5];
	if (!v) {
		hdr[0] = TAG_NULL;
		return EVP_DigestUpdate(md, hdr, 1) == 1 ? 0 : -1;
	}
	hdr[0] = TAG_VALUE;
	hdr[1] = (unsigned char)(len >> 24);
	hdr[2] = (unsigned char)(len >> 16);
	hdr[3] = (unsigned char)(len >> 8);
	hdr[4] = (unsigned char)len;
	if (EVP_DigestUpdate(md, hdr, 5) != 1)
		return -1;
	return len && EVP_DigestUpdate(md, v, len) != 1 ? -1 : 0;
}

static EVP_MD_CTX *begin(const unsigned char *prev, int32_t chain_id)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char id[4] = {(unsigned char)((uint32_t)chain_id >> 24),
			       (unsigned char)((uint32_t)chain_id >> 16),
			       (unsigned char)((uint32_t)chain_id >> 8), (unsigned char)chain_id};
	if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, prev, CHAIN_HASH_LEN) != 1 || EVP_DigestUpdate(md, id, 4) != 1) {
		EVP_MD_CTX_free(md);
		return NULL;
	}
	return md;
}

static int finish(EVP_MD_CTX *md, unsigned char *out)
{
	unsigned int n = 0;
	int ok = EVP_DigestFinal_ex(md, out, &n) == 1 && n == CHAIN_HASH_LEN;
	EVP_MD_CTX_free(md);
	return ok ? 0 : -1;
}

int chain_hash_fields(const unsigned char *prev, int32_t chain_id, const char *const *vals,
		      const size_t *lens, int nfields, unsigned char *out)
{
	EVP_MD_CTX *md = begin(prev, chain_id);
	if (!md)
		return -1;
	for (int i = 0; i < nfields; i++)
		if (put_field(md, vals[i], lens[i]) != 0) {
			EVP_MD_CTX_free(md);
			return -1;
		}
	return finish(md, out);
}

/* Undoes the escapes auditor_event_map writes, plus the rest of COPY's (\b \f \v). */
static char unescape(char c)
{
	switch (c) {
	case 't': return '\t';
	case 'n': return '\n';
	case 'r': return '\r';
	case 'b': return '\b';
	case 'f': return '\f';
	case 'v': return '\v';
	default: return c;
	}
}

int chain_hash_copy_line(const unsigned char *prev, int32_t chain_id, const char *line, size_t len,
			 char **scratch, size_t *scratchcap, unsigned char *out)
{
	if (len == 0 || line[len - 1] != '\n')
		return -1;
	len--;
	if (*scratchcap < len + 1) {
		char *n = realloc(*scratch, len + 1);
		if (!n)
			return -1;
		*scratch = n;
		*scratchcap = len + 1;
	}
	EVP_MD_CTX *md = begin(prev, chain_id);
	if (!md)
		return -1;
	size_t i = 0;
	for (;;) {
		size_t start = i;
		while (i < len && line[i] != '\t')
			i++;
		int rc;
		if (i - start == 2 && line[start] == '\\' && line[start + 1] == 'N') {
			rc = put_field(md, NULL, 0);
		} else {
			size_t n = 0;
			for (size_t j = start; j < i; j++) {
				if (line[j] == '\\' && j + 1 < i)
					(*scratch)[n++] = unescape(line[++j]);
				else
					(*scratch)[n++] = line[j];
			}
			rc = put_field(md, *scratch, n);
		}
		if (rc != 0) {
			EVP_MD_CTX_free(md);
			return -1;
		}
		if (i >= len)
			break;
		i++;
	}
	return finish(md, out);
}

void chain_hex(const unsigned char *h, char *out)
{
	hex_encode(h, CHAIN_HASH_LEN, out);
}

int chain_unhex(const char *s, unsigned char *out)
{
	return hex_decode(s, CHAIN_HASH_LEN, out);
}
