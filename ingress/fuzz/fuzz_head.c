/* libFuzzer target: the request-head framing parser of the connection layer. The
 * input is split into lines (CRLF or LF) and fed as a request head, then as chunk-size
 * lines; a verdict must be consistent with what was fed. */
#include "check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct head_limits lim = {4096, 32, 1 << 20};
	struct head_state h;
	enum head_verdict v = HEAD_MORE;
	head_reset(&h);
	size_t off = 0;
	while (off < size && v == HEAD_MORE) {
		const uint8_t *nl = memchr(data + off, '\n', size - off);
		size_t raw = nl ? (size_t)(nl - (data + off)) + 1 : size - off;
		size_t len = nl ? raw - 1 : raw;
		if (len && data[off + len - 1] == '\r')
			len--;
		v = head_line(&h, &lim, (const char *)data + off, len, raw);
		off += raw;
	}
	if (v == HEAD_REJECT && (h.status < 400 || h.status > 599 || !h.code || !h.message))
		abort();
	if (v == HEAD_DONE) {
		if (h.has_cl && h.has_te)
			abort(); /* request smuggling shape must never pass */
		if (h.has_cl && h.content_length > lim.max_body)
			abort();
		if (h.bytes > lim.max_header_bytes || h.nheaders > lim.max_headers)
			abort();
	}
	uint64_t sz;
	if (check_chunk_size((const char *)data, size < 64 ? size : 64, &sz) == 0 &&
	    sz > (1ULL << 60))
		abort();
	return 0;
}
