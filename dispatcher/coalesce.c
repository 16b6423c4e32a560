/* Stream coalescing: at most one message per window per stream, the window's first
 * arrival sent at once, so coalescing adds at most one window of delay to any byte and
 * none to the first. */
#include "coalesce.h"

#include "log.h"

#include <string.h>

int coalesce_init(struct coalesce *c, int window_ms, size_t max)
{
	memset(c, 0, sizeof *c);
	c->window_us = (int64_t)window_ms * 1000;
	c->max = max;
	c->held = evbuffer_new();
	if (!c->held) {
		log_error("out of memory for stream coalescing");
		return -1;
	}
	return 0;
}

void coalesce_free(struct coalesce *c)
{
	if (c->held)
		evbuffer_free(c->held);
	c->held = NULL;
}

size_t coalesce_held(const struct coalesce *c)
{
	return c->held ? evbuffer_get_length(c->held) : 0;
}

int64_t coalesce_due(const struct coalesce *c)
{
	return coalesce_held(c) ? c->last_us + c->window_us : 0;
}

static void sent(struct coalesce *c, int64_t now_us)
{
	c->last_us = now_us;
	c->sent = 1;
}

void coalesce_flush(struct coalesce *c, int64_t now_us, coalesce_emit_fn emit, void *arg)
{
	size_t n = coalesce_held(c);
	if (!n)
		return;
	const unsigned char *data = evbuffer_pullup(c->held, (ev_ssize_t)n);
	if (!data) {
		/* pullup of at most max bytes: only out of memory. The bytes are lost, the
		 * SSE scanner already checked them; the caller's stream ends short. */
		log_error("out of memory flushing a coalesced stream chunk");
		evbuffer_drain(c->held, n);
		return;
	}
	emit(arg, data, n);
	evbuffer_drain(c->held, n);
	sent(c, now_us);
}

void coalesce_drop(struct coalesce *c)
{
	if (c->held)
		evbuffer_drain(c->held, evbuffer_get_length(c->held));
}

void coalesce_add(struct coalesce *c, const unsigned char *data, size_t n, int64_t now_us,
		  coalesce_emit_fn emit, void *arg)
{
	if (!n)
		return;
	size_t held = coalesce_held(c);
	if (held && held + n > c->max) {
		/* Merging would pass the bound: what is held goes first, in order. */
		coalesce_flush(c, now_us, emit, arg);
		held = 0;
	}
	int quiet = !c->sent || now_us - c->last_us >= c->window_us;
	if (!held && (c->window_us == 0 || quiet || n >= c->max)) {
		emit(arg, data, n);
		sent(c, now_us);
		return;
	}
	if (evbuffer_add(c->held, data, n) != 0) {
		/* Cannot hold it: send what is held and this arrival now, still in order. */
		coalesce_flush(c, now_us, emit, arg);
		emit(arg, data, n);
		sent(c, now_us);
		return;
	}
	if (coalesce_held(c) >= c->max)
		coalesce_flush(c, now_us, emit, arg);
}
