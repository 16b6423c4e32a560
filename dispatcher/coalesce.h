/* Coalescing of a stream's small arrivals into fewer gw.replies messages: the first
 * arrival after a quiet window goes out at once, later ones within the window are held
 * and merged in arrival order, never beyond a size bound; a flush sends what is held. */
#ifndef GW_DISPATCHER_COALESCE_H
#define GW_DISPATCHER_COALESCE_H

#include <event2/buffer.h>
#include <stddef.h>
#include <stdint.h>

/* Embedded in its relay; held is owned and released by coalesce_free. */
struct coalesce {
	int64_t window_us;     /* 0: every arrival goes out at once */
	size_t max;            /* largest merged message */
	struct evbuffer *held; /* arrivals not sent yet, at most max bytes */
	int64_t last_us;       /* when the last message went out; 0: none yet */
	int sent;              /* a message went out */
};

/* Sends one message: data is only valid during the call. */
typedef void (*coalesce_emit_fn)(void *arg, const unsigned char *data, size_t len);

int coalesce_init(struct coalesce *c, int window_ms, size_t max);
void coalesce_free(struct coalesce *c);

/* Takes one arrival at now_us and emits what must go out now (possibly nothing: then it
 * is held until coalesce_due). An arrival of max bytes or more is never merged. */
void coalesce_add(struct coalesce *c, const unsigned char *data, size_t n, int64_t now_us,
		  coalesce_emit_fn emit, void *arg);

/* Bytes held. */
size_t coalesce_held(const struct coalesce *c);

/* When the held bytes must go out; 0 when nothing is held. */
int64_t coalesce_due(const struct coalesce *c);

/* Emits everything held as one message (nothing when nothing is held). */
void coalesce_flush(struct coalesce *c, int64_t now_us, coalesce_emit_fn emit, void *arg);

/* Forgets what is held (the stream was cancelled or restarts). */
void coalesce_drop(struct coalesce *c);

#endif
