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

static unsigned char *put_u32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
	return p + 4;
}

/* Builds the whole canonical row in scratch, then hashes it in one call: the writer
 * hashes every row it stores, and a digest update per field cost more than the hashing. */
int chain_hash_copy_line(const unsigned char *prev, int32_t chain_id, const char *line, size_t len,
			 char **scratch, size_t *scratchcap, unsigned char *out)
{
	if (len == 0 || line[len - 1] != '\n')
		return -1;
	len--;
	/* Fields are at most len + 1 (one per tab, plus one), each framed in 5 bytes. */
	size_t need = CHAIN_HASH_LEN + 4 + len + 5 * (len + 1);
	if (*scratchcap < need) {
		char *n = realloc(*scratch, need);
		if (!n)
			return -1;
		*scratch = n;
		*scratchcap = need;
	}
	unsigned char *o = (unsigned char *)*scratch;
	memcpy(o, prev, CHAIN_HASH_LEN);
	o = put_u32(o + CHAIN_HASH_LEN, (uint32_t)chain_id);
	size_t i = 0;
	for (;;) {
		size_t start = i;
		const char *tab = memchr(line + start, '\t', len - start);
		i = tab ? (size_t)(tab - line) : len;
		if (i - start == 2 && line[start] == '\\' && line[start + 1] == 'N') {
			*o++ = TAG_NULL;
		} else {
			unsigned char *hdr = o;
			o += 5;
			if (!memchr(line + start, '\\', i - start)) {
				memcpy(o, line + start, i - start);
				o += i - start;
			} else {
				for (size_t j = start; j < i; j++) {
					if (line[j] == '\\' && j + 1 < i)
						*o++ = (unsigned char)unescape(line[++j]);
					else
						*o++ = (unsigned char)line[j];
				}
			}
			hdr[0] = TAG_VALUE;
			put_u32(hdr + 1, (uint32_t)(o - hdr - 5));
		}
		if (i >= len)
			break;
		i++;
	}
	unsigned int n = 0;
	return EVP_Digest(*scratch, (size_t)(o - (unsigned char *)*scratch), out, &n, EVP_sha256(),
			  NULL) == 1 &&
		       n == CHAIN_HASH_LEN
		   ? 0
		   : -1;
}

void chain_hex(const unsigned char *h, char *out)
{
	hex_encode(h, CHAIN_HASH_LEN, out);
}

int chain_unhex(const char *s, unsigned char *out)
{
	return hex_decode(s, CHAIN_HASH_LEN, out);
}
