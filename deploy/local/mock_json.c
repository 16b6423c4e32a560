/* A non-allocating JSON validator (RFC 8259, UTF-8 checked, depth-bounded) that
 * extracts model, stream and a word count while it walks the body once. */
#include "mock_json.h"

#include <string.h>

/* Where a value sits decides what is extracted from it. */
enum role {
	R_NONE,     /* validate only */
	R_TOP,      /* the request object */
	R_MESSAGES, /* "messages": array of message objects */
	R_MESSAGE,  /* one message: its "content" is text */
	R_TEXT,     /* strings count words, numbers count one, parts' "text" is text */
	R_INPUT,    /* embeddings "input": text, and its item count */
};

enum jtype { J_STRING, J_NUMBER, J_TRUE, J_FALSE, J_NULL, J_ARRAY, J_OBJECT };

struct scan {
	const unsigned char *p, *end;
	struct mock_json_req *r;
	int depth;
};

/* Decoded string output: up to cap-1 bytes, the rest only flagged. */
struct sink {
	char *buf;
	size_t cap, len;
	int overflow, nul;
};

static int value(struct scan *s, enum role role, enum jtype *type);

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int is_space_cp(unsigned long cp)
{
	return cp == ' ' || (cp >= '\t' && cp <= '\r');
}

static void sink_put(struct sink *k, const unsigned char *b, size_t n)
{
	if (!k)
		return;
	if (k->overflow || k->len + n >= k->cap) {
		k->overflow = 1;
		return;
	}
	memcpy(k->buf + k->len, b, n);
	k->len += n;
}

static void sink_cp(struct sink *k, unsigned long cp)
{
	unsigned char b[4];
	size_t n;

	if (!k)
		return;
	if (cp == 0)
		k->nul = 1;
	if (cp < 0x80) {
		b[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		b[0] = (unsigned char)(0xc0 | (cp >> 6));
		b[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		b[0] = (unsigned char)(0xe0 | (cp >> 12));
		b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		b[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		b[0] = (unsigned char)(0xf0 | (cp >> 18));
		b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		b[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	sink_put(k, b, n);
}

static int hex4(struct scan *s, unsigned long *out)
{
	unsigned long v = 0;

	if (s->end - s->p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		unsigned char c = *s->p++;
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned long)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned long)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned long)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

/* Length of the valid UTF-8 sequence starting at p (lead byte >= 0x80), or 0:
 * overlongs, surrogates and code points past U+10FFFF are refused as jansson does. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if ((size_t)(end - p) < n)
		return 0;
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

/* Parses a string at *s->p == '"'. Decoded bytes go to k (may be NULL); when words is
 * given, whitespace-separated words are added to it. */
static int string(struct scan *s, struct sink *k, unsigned long *words)
{
	int in_word = 0;

	s->p++;
	for (;;) {
		if (s->p >= s->end)
			return -1;
		unsigned char c = *s->p;
		unsigned long cp;

		if (c == '"') {
			s->p++;
			return 0;
		}
		if (c < 0x20)
			return -1;
		if (c == '\\') {
			if (s->end - s->p < 2)
				return -1;
			s->p++;
			c = *s->p++;
			switch (c) {
			case '"': cp = '"'; break;
			case '\\': cp = '\\'; break;
			case '/': cp = '/'; break;
			case 'b': cp = '\b'; break;
			case 'f': cp = '\f'; break;
			case 'n': cp = '\n'; break;
			case 'r': cp = '\r'; break;
			case 't': cp = '\t'; break;
			case 'u':
				if (hex4(s, &cp) < 0)
					return -1;
				if (cp >= 0xdc00 && cp <= 0xdfff)
					return -1;
				if (cp >= 0xd800 && cp <= 0xdbff) {
					unsigned long lo;

					if (s->end - s->p < 2 || s->p[0] != '\\' || s->p[1] != 'u')
						return -1;
					s->p += 2;
					if (hex4(s, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
						return -1;
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				}
				break;
			default: return -1;
			}
			sink_cp(k, cp);
		} else if (c < 0x80) {
			cp = c;
			sink_put(k, s->p, 1);
			s->p++;
		} else {
			size_t n = utf8_len(s->p, s->end);

			if (!n)
				return -1;
			sink_put(k, s->p, n);
			s->p += n;
			cp = 0x80; /* any non-space */
		}
		if (words) {
			if (is_space_cp(cp)) {
				in_word = 0;
			} else if (!in_word) {
				in_word = 1;
				(*words)++;
			}
		}
	}
}

static int digits(struct scan *s)
{
	const unsigned char *start = s->p;

	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		s->p++;
	return s->p > start ? 0 : -1;
}

static int number(struct scan *s)
{
	if (*s->p == '-')
		s->p++;
	if (s->p >= s->end)
		return -1;
	if (*s->p == '0')
		s->p++;
	else if (digits(s) < 0)
		return -1;
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		if (digits(s) < 0)
			return -1;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		s->p++;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		if (digits(s) < 0)
			return -1;
	}
	return 0;
}

static int literal(struct scan *s, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return -1;
	s->p += n;
	return 0;
}

/* The role of a member value inside an object of role `role`, by its key. */
static enum role member_role(enum role role, const struct sink *key)
{
	if (key->overflow || key->nul)
		return R_NONE;
	const char *k = key->buf;

	switch (role) {
	case R_TOP:
		if (strcmp(k, "messages") == 0)
			return R_MESSAGES;
		if (strcmp(k, "prompt") == 0)
			return R_TEXT;
		if (strcmp(k, "input") == 0)
			return R_INPUT;
		return R_NONE;
	case R_MESSAGE: return strcmp(k, "content") == 0 ? R_TEXT : R_NONE;
	case R_TEXT:
	case R_INPUT: return strcmp(k, "text") == 0 ? R_TEXT : R_NONE;
	default: return R_NONE;
	}
}

static int top_member(struct scan *s, const struct sink *key)
{
	struct mock_json_req *r = s->r;
	enum jtype t;

	if (!key->overflow && !key->nul && strcmp(key->buf, "model") == 0) {
		r->has_model = 1;
		r->model_string = 0;
		r->model_bad = 0;
		r->model[0] = 0;
		if (*s->p == '"') {
			struct sink m = {r->model, sizeof r->model, 0, 0, 0};

			if (string(s, &m, NULL) < 0)
				return -1;
			m.buf[m.len] = 0;
			r->model_string = 1;
			r->model_bad = m.overflow || m.nul;
			return 0;
		}
		return value(s, R_NONE, &t);
	}
	if (!key->overflow && !key->nul && strcmp(key->buf, "stream") == 0) {
		if (value(s, R_NONE, &t) < 0)
			return -1;
		r->stream = t == J_TRUE;
		return 0;
	}
	enum role mr = member_role(R_TOP, key);

	if (mr == R_INPUT)
		r->has_input = 1;
	if (value(s, mr, &t) < 0)
		return -1;
	if (mr == R_INPUT && t != J_ARRAY)
		r->input_items = 1;
	return 0;
}

static int object(struct scan *s, enum role role)
{
	char keybuf[16];
	enum jtype t;

	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == '}') {
		s->p++;
		return 0;
	}
	for (;;) {
		struct sink key = {keybuf, sizeof keybuf, 0, 0, 0};

		if (s->p >= s->end || *s->p != '"')
			return -1;
		if (string(s, &key, NULL) < 0)
			return -1;
		keybuf[key.len] = 0;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return -1;
		s->p++;
		skip_ws(s);
		if (s->p >= s->end)
			return -1;
		if (role == R_TOP) {
			if (top_member(s, &key) < 0)
				return -1;
		} else if (value(s, member_role(role, &key), &t) < 0) {
			return -1;
		}
		skip_ws(s);
		if (s->p >= s->end)
			return -1;
		if (*s->p == '}') {
			s->p++;
			return 0;
		}
		if (*s->p != ',')
			return -1;
		s->p++;
		skip_ws(s);
	}
}

static int array(struct scan *s, enum role role)
{
	enum role elem = R_NONE;
	unsigned long n = 0;
	enum jtype first = J_NULL, t;

	if (role == R_MESSAGES)
		elem = R_MESSAGE;
	else if (role == R_TEXT || role == R_INPUT)
		elem = R_TEXT;
	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		goto done;
	}
	for (;;) {
		if (value(s, elem, &t) < 0)
			return -1;
		if (n++ == 0)
			first = t;
		skip_ws(s);
		if (s->p >= s->end)
			return -1;
		if (*s->p == ']') {
			s->p++;
			break;
		}
		if (*s->p != ',')
			return -1;
		s->p++;
		skip_ws(s);
	}
done:
	/* An array of numbers is one tokenised input; otherwise one input per element. */
	if (role == R_INPUT)
		s->r->input_items = first == J_NUMBER ? 1 : n;
	return 0;
}

static int value(struct scan *s, enum role role, enum jtype *type)
{
	int rc;

	if (s->p >= s->end)
		return -1;
	switch (*s->p) {
	case '{':
		if (++s->depth > MOCK_JSON_DEPTH_MAX)
			return -1;
		*type = J_OBJECT;
		rc = object(s, role == R_INPUT ? R_TEXT : role);
		s->depth--;
		return rc;
	case '[':
		if (++s->depth > MOCK_JSON_DEPTH_MAX)
			return -1;
		*type = J_ARRAY;
		rc = array(s, role);
		s->depth--;
		return rc;
	case '"':
		*type = J_STRING;
		return string(s, NULL, (role == R_TEXT || role == R_INPUT) ? &s->r->words : NULL);
	case 't': *type = J_TRUE; return literal(s, "true");
	case 'f': *type = J_FALSE; return literal(s, "false");
	case 'n': *type = J_NULL; return literal(s, "null");
	default:
		if (*s->p != '-' && (*s->p < '0' || *s->p > '9'))
			return -1;
		*type = J_NUMBER;
		if (number(s) < 0)
			return -1;
		if (role == R_TEXT || role == R_INPUT)
			s->r->words++;
		return 0;
	}
}

enum mock_json_result mock_json_scan(const char *buf, size_t len, struct mock_json_req *out)
{
	struct scan s = {(const unsigned char *)buf, (const unsigned char *)buf + len, out, 0};
	enum jtype t;

	memset(out, 0, sizeof *out);
	skip_ws(&s);
	if (s.p >= s.end)
		return MOCK_JSON_INVALID;
	if (value(&s, *s.p == '{' ? R_TOP : R_NONE, &t) < 0)
		return MOCK_JSON_INVALID;
	skip_ws(&s);
	if (s.p != s.end)
		return MOCK_JSON_INVALID;
	return t == J_OBJECT ? MOCK_JSON_OK : MOCK_JSON_NOT_OBJECT;
}
