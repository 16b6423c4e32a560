/* libFuzzer target for the auditor's gw.audit decoder: any bytes are refused or mapped
 * without a crash, and the fast scanner never disagrees with jansson on what it takes. */
#include "auditor_event.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct auditor_row a, b;
	const char *ra = NULL, *rb = NULL;
	int fa = auditor_event_map_fast(data, size, 3, 42, &a, &ra);
	int fb = auditor_event_map_jansson(data, size, 3, 42, &b, &rb);
	if (fa != 1) {
		if (fa != fb)
			abort();
		if (fa == 0 && (a.len != b.len || memcmp(a.line, b.line, a.len) != 0 ||
				strcmp(a.event_id, b.event_id) != 0 || a.month != b.month ||
				a.line[a.len] != 0))
			abort();
		if (fa != 0 && (!ra || !rb || strcmp(ra, rb) != 0))
			abort();
	}
	if (fa == 0)
		free(a.line);
	if (fb == 0)
		free(b.line);
	return 0;
}
