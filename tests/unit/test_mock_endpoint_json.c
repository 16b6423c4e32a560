/* The mock endpoint's JSON scanner: validity (it stands in for a real parser, so it
 * must refuse what jansson refuses) and the fields it extracts. */
#include "check.h"
#include "mock_json.h"

#include <string.h>

static enum mock_json_result scan(const char *s, struct mock_json_req *r)
{
	return mock_json_scan(s, strlen(s), r);
}

static int valid(const char *s)
{
	struct mock_json_req r;

	return mock_json_scan(s, strlen(s), &r) != MOCK_JSON_INVALID;
}

int main(void)
{
	struct mock_json_req r;

	/* A usual chat request. */
	CHECK_EQ_INT(
	    scan("{\"model\":\"mock-llm\",\"messages\":[{\"role\":\"user\",\"content\":"
		 "\"hello  there\\nworld\"},{\"role\":\"system\",\"content\":\"be brief\"}]}",
		 &r),
	    MOCK_JSON_OK);
	CHECK(r.has_model && r.model_string && !r.model_bad);
	CHECK_EQ_STR(r.model, "mock-llm");
	CHECK_EQ_INT(r.words, 5); /* role values are not content */
	CHECK_EQ_INT(r.stream, 0);

	/* Content parts: only "text" counts, not "type". */
	CHECK_EQ_INT(scan("{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\","
			  "\"content\":[{\"type\":\"text\",\"text\":\"a b c\"},"
			  "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x y\"}}]}]}",
			  &r),
		     MOCK_JSON_OK);
	CHECK_EQ_INT(r.words, 3);
	CHECK_EQ_INT(r.stream, 1);

	/* stream must be literally true. */
	CHECK_EQ_INT(scan("{\"model\":\"m\",\"stream\":\"true\"}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.stream, 0);
	CHECK_EQ_INT(scan("{\"stream\":true,\"stream\":false,\"model\":\"m\"}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.stream, 0);

	/* Completions prompt: string, array of strings, token array. */
	CHECK_EQ_INT(scan("{\"model\":\"m\",\"prompt\":\" one two\\tthree \"}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.words, 3);
	CHECK_EQ_INT(scan("{\"model\":\"m\",\"prompt\":[\"a b\",\"c\"]}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.words, 3);
	CHECK_EQ_INT(scan("{\"model\":\"m\",\"prompt\":[1,2,3,4]}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.words, 4);

	/* Embeddings input items. */
	CHECK_EQ_INT(scan("{\"model\":\"e\",\"input\":\"x y\"}", &r), MOCK_JSON_OK);
	CHECK(r.has_input);
	CHECK_EQ_INT(r.input_items, 1);
	CHECK_EQ_INT(r.words, 2);
	CHECK_EQ_INT(scan("{\"model\":\"e\",\"input\":[\"x\",\"y z\",\"w\"]}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.input_items, 3);
	CHECK_EQ_INT(r.words, 4);
	CHECK_EQ_INT(scan("{\"model\":\"e\",\"input\":[5,6,7]}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.input_items, 1);
	CHECK_EQ_INT(scan("{\"model\":\"e\",\"input\":[[5,6],[7]]}", &r), MOCK_JSON_OK);
	CHECK_EQ_INT(r.input_items, 2);
	CHECK_EQ_INT(scan("{\"model\":\"e\",\"input\":[]}", &r), MOCK_JSON_OK);
	CHECK(r.has_input);
	CHECK_EQ_INT(r.input_items, 0);
	CHECK_EQ_INT(scan("{\"model\":\"e\"}", &r), MOCK_JSON_OK);
	CHECK(!r.has_input);

	/* Nested keys named like top-level ones do not count. */
	CHECK_EQ_INT(
	    scan("{\"model\":\"m\",\"metadata\":{\"model\":\"x\",\"prompt\":\"a b c\"}}", &r),
	    MOCK_JSON_OK);
	CHECK_EQ_STR(r.model, "m");
	CHECK_EQ_INT(r.words, 0);

	/* Model decoding, escapes and the odd cases. */
	CHECK_EQ_INT(scan("{\"mod\\u0065l\":\"a\\/b\\u00e9\"}", &r), MOCK_JSON_OK);
	CHECK_EQ_STR(r.model, "a/b\xc3\xa9");
	CHECK_EQ_INT(scan("{\"model\":\"\\ud83d\\ude00\"}", &r), MOCK_JSON_OK);
	CHECK_EQ_STR(r.model, "\xf0\x9f\x98\x80");
	CHECK_EQ_INT(scan("{\"model\":\"a\\u0000b\"}", &r), MOCK_JSON_OK);
	CHECK(r.model_bad);
	CHECK_EQ_INT(scan("{\"model\":42}", &r), MOCK_JSON_OK);
	CHECK(r.has_model && !r.model_string);
	CHECK_EQ_INT(scan("{\"messages\":[]}", &r), MOCK_JSON_OK);
	CHECK(!r.has_model);
	{
		char big[400];

		memset(big, 'x', sizeof big);
		memcpy(big, "{\"model\":\"", 10);
		memcpy(big + sizeof big - 3, "\"}", 3);
		CHECK_EQ_INT(scan(big, &r), MOCK_JSON_OK);
		CHECK(r.model_bad);
	}

	/* Top level must be an object. */
	CHECK_EQ_INT(scan("[1,2]", &r), MOCK_JSON_NOT_OBJECT);
	CHECK_EQ_INT(scan("\"x\"", &r), MOCK_JSON_NOT_OBJECT);
	CHECK_EQ_INT(scan("  {} \r\n", &r), MOCK_JSON_OK);

	/* Valid JSON of every kind. */
	CHECK(valid(
	    "{\"a\":[true,false,null,0,-0,1.5,-2e10,3E+2,4.0e-3,\"\\\"\\\\\\b\\f\\n\\r\\t\"]}"));
	CHECK(valid("{\"a\":{\"b\":{\"c\":[[],{}]}}}"));

	/* Invalid JSON. */
	CHECK(!valid(""));
	CHECK(!valid("   "));
	CHECK(!valid("{"));
	CHECK(!valid("{\"model\":\"m\""));
	CHECK(!valid("{\"model\":\"m\",}"));
	CHECK(!valid("{\"a\":[1,]}"));
	CHECK(!valid("{\"a\":01}"));
	CHECK(!valid("{\"a\":1.}"));
	CHECK(!valid("{\"a\":.5}"));
	CHECK(!valid("{\"a\":1e}"));
	CHECK(!valid("{\"a\":+1}"));
	CHECK(!valid("{\"a\":tru}"));
	CHECK(!valid("{\"a\":nul}"));
	CHECK(!valid("{a:1}"));
	CHECK(!valid("{\"a\" 1}"));
	CHECK(!valid("{} {}"));
	CHECK(!valid("{\"a\":\"x\ny\"}"));             /* raw control character */
	CHECK(!valid("{\"a\":\"\\x\"}"));              /* unknown escape */
	CHECK(!valid("{\"a\":\"\\u12\"}"));            /* short \u */
	CHECK(!valid("{\"a\":\"\\ud83d\"}"));          /* lone high surrogate */
	CHECK(!valid("{\"a\":\"\\ude00\"}"));          /* lone low surrogate */
	CHECK(!valid("{\"a\":\"\xc3\"}"));             /* truncated UTF-8 */
	CHECK(!valid("{\"a\":\"\xc0\xaf\"}"));         /* overlong */
	CHECK(!valid("{\"a\":\"\xed\xa0\x80\"}"));     /* encoded surrogate */
	CHECK(!valid("{\"a\":\"\xf4\x90\x80\x80\"}")); /* past U+10FFFF */
	CHECK(!valid("{\"a\":\"\xff\"}"));
	CHECK(valid("{\"a\":\"\xe2\x82\xac \xf0\x9f\x98\x80\"}"));
	/* Input need not be NUL-terminated: the length bounds the scan. */
	CHECK_EQ_INT(mock_json_scan("{\"model\":\"m\"}garbage", 13, &r), MOCK_JSON_OK);
	CHECK_EQ_INT(mock_json_scan("{\"model\":\"m\"}", 12, &r), MOCK_JSON_INVALID);

	/* Depth bound. */
	{
		char deep[2 * (MOCK_JSON_DEPTH_MAX + 2) + 16];
		size_t n = 0;

		deep[n++] = '{';
		memcpy(deep + n, "\"a\":", 4);
		n += 4;
		for (int i = 0; i < MOCK_JSON_DEPTH_MAX; i++)
			deep[n++] = '[';
		for (int i = 0; i < MOCK_JSON_DEPTH_MAX; i++)
			deep[n++] = ']';
		deep[n++] = '}';
		CHECK_EQ_INT(mock_json_scan(deep, n, &r), MOCK_JSON_INVALID);
		/* One level less fits: the object itself is a level. */
		n = 0;
		deep[n++] = '{';
		memcpy(deep + n, "\"a\":", 4);
		n += 4;
		for (int i = 0; i < MOCK_JSON_DEPTH_MAX - 1; i++)
			deep[n++] = '[';
		for (int i = 0; i < MOCK_JSON_DEPTH_MAX - 1; i++)
			deep[n++] = ']';
		deep[n++] = '}';
		CHECK_EQ_INT(mock_json_scan(deep, n, &r), MOCK_JSON_OK);
	}
	return check_done();
}
