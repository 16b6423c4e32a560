/* A non-allocating JSON validator for the mock endpoint: it checks a request body is
 * well-formed JSON and pulls out the few fields an answer depends on, no tree built. */
#ifndef GW_MOCK_JSON_H
#define GW_MOCK_JSON_H

#include <stddef.h>

#define MOCK_JSON_MODEL_MAX 256
/* Deeper documents are refused rather than recursed into (stack bound). */
#define MOCK_JSON_DEPTH_MAX 128

enum mock_json_result {
	MOCK_JSON_OK = 0,
	MOCK_JSON_INVALID = -1,    /* not JSON, bad UTF-8, too deep */
	MOCK_JSON_NOT_OBJECT = -2, /* valid JSON but the top level is not an object */
};

/* What a request body says. Plain value type, filled by mock_json_scan. */
struct mock_json_req {
	int has_model;
	int model_string;                /* "model" is a string */
	int model_bad;                   /* too long or holds a NUL: matches no configured model */
	char model[MOCK_JSON_MODEL_MAX]; /* decoded UTF-8, NUL-terminated */
	int stream;                      /* "stream": true */
	/* Whitespace-separated words in messages[].content (strings or parts' "text"),
	 * "prompt" and "input"; each number in those counts as one (token arrays). */
	unsigned long words;
	int has_input;
	unsigned long input_items; /* embeddings: inputs in "input" (a token array is one) */
};

/* Scans len bytes at buf (need not be NUL-terminated) into *out (zeroed first). */
enum mock_json_result mock_json_scan(const char *buf, size_t len, struct mock_json_req *out);

#endif
