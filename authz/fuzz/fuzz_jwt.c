/* libFuzzer target: JWT verification against a fixed JWKS (RS256, ES256, EdDSA keys)
 * and with HS256 enabled: every input is a token. Signatures cannot be forged, so this
 * exercises the splitting, base64url, header and signature decoding; a success must
 * carry a principal. Seeds: corpus_jwt/, dictionary: jwt.dict. */
#include "jwt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char JWKS[] =
    "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"s-DZBpCSEzujQNJ9FlfPMESDP3wlSj-w10PS0-g2XR4NyBT7gx56atQBB-"
    "Q2iJQAtsG3MQSLJBipdQbEFsflzBsbJkWNkHEGwpnKsF0hZz_NoyduNveW2QDrV2moiM_"
    "FU82NUa8SYgonU3Cs6HNkOiHJejUddhiUfVaTvAq15-NXD79sc07tMVUxGDRMJavjol_"
    "o9ZpNR4aV4EkxxZJrcdkk9RDaVG_GWym3Set4Mmb3borS6NdLht1z-HF_Di0eUbIEE5r2ZFi8n_vY47rFmaD2778wsIdg_"
    "IEWLPdyedzf3_0P_n5uiYsZbRMl8ezrVWIMoQyIuYXRdsQWpH49NQ\",\"e\":\"AQAB\",\"kid\":\"r1\",\"alg\":"
    "\"RS256\",\"use\":\"sig\"},{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
    "\"ul8MooOoCqUx9Chv3hgCTzIgKzz6iAGdedQKJw7IDoc\",\"y\":\"W6nK6ng0xH4f14GBHQPNG03U-"
    "TxnDOnu4UGqNjFzz6g\",\"kid\":\"e1\",\"use\":\"sig\"},{\"kty\":\"OKP\",\"crv\":\"Ed25519\","
    "\"x\":\"P7UZtOdAM-ySiwjdYb07d-PZvV7nsr0Cuqm84HyqIEM\",\"kid\":\"d1\",\"use\":\"sig\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct jwks keys;
	static int loaded;
	static const unsigned char secret[] = "fuzz-secret-fuzz-secret-fuzz-secret!";
	if (!loaded) {
		int skipped;
		char err[128];
		if (jwks_parse(JWKS, strlen(JWKS), &keys, &skipped, err, sizeof err) != 0 ||
		    keys.n != 3)
			abort();
		loaded = 1;
	}
	struct jwt_config cfg = {"https://idp.test", "gw", 60, NULL, NULL, NULL, NULL, secret,
				 sizeof secret - 1};
	struct identity id;
	char msg[256], kid[128];
	enum jwt_result r = jwt_verify(&cfg, &keys, (const char *)data, size, 1700000000000LL, &id,
				       msg, sizeof msg, kid);
	if (r == JWT_OK && !id.principal[0])
		abort();
	if (r != JWT_OK && !msg[0])
		abort();
	(void)jwt_looks_like(data, size);
	return 0;
}
