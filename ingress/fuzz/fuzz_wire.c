/* libFuzzer target: the Kafka header codec (proto/wire.c) every consumer runs on
 * untrusted messages. The input is a list of headers, each [name length][name]
 * [value length][value] (lengths one byte; 0xff = a NULL value). Decoded metadata
 * must re-encode and decode to the same fields. */
#include "wire.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int same(const struct gw_meta *a, const struct gw_meta *b)
{
	return a->present == b->present && strcmp(a->id, b->id) == 0 &&
	       a->deadline_ms == b->deadline_ms && a->reply_partition == b->reply_partition &&
	       strcmp(a->route, b->route) == 0 && strcmp(a->model, b->model) == 0 &&
	       a->stream == b->stream && a->status == b->status && a->seq == b->seq &&
	       a->final == b->final && a->cancel == b->cancel && a->cred_len == b->cred_len &&
	       memcmp(a->cred, b->cred, a->cred_len) == 0 && strcmp(a->cluster, b->cluster) == 0 &&
	       strcmp(a->models, b->models) == 0 && strcmp(a->groups, b->groups) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	size_t off = 1; /* data[0] picks the required fields */
	while (off < size) {
		size_t nl = data[off++];
		if (off + nl > size)
			break;
		char name[256];
		memcpy(name, data + off, nl);
		name[nl] = 0;
		off += nl;
		if (off >= size)
			break;
		size_t vl = data[off++];
		if (vl == 0xff) {
			rd_kafka_header_add(h, name, -1, NULL, 0);
			continue;
		}
		if (off + vl > size)
			break;
		rd_kafka_header_add(h, name, -1, data + off, (ssize_t)vl);
		off += vl;
	}
	static struct gw_meta m, m2;
	const char *reason = NULL;
	unsigned required = size ? data[0] & 0x3f : 0;
	if (wire_decode_headers(h, required, &m, &reason) == 0) {
		if ((m.present & required) != required)
			abort();
		rd_kafka_headers_t *h2 = rd_kafka_headers_new(8);
		if (wire_encode(&m, m.present, h2) != 0)
			abort(); /* what the decoder accepts, the encoder must write */
		if (wire_decode_headers(h2, m.present, &m2, &reason) != 0 || !same(&m, &m2))
			abort();
		rd_kafka_headers_destroy(h2);
	} else if (!reason || !*reason) {
		abort();
	}
	rd_kafka_headers_destroy(h);
	return 0;
}
