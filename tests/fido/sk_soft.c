/*
 * sk_soft: a software FIDO2 authenticator for OpenSSH's security-key middleware API (sk-api,
 * version 0x000a0000, OpenSSH 8.9 to 9.x; Debian 12 ships 9.2). Test use only.
 *
 * Why: the lab has no USB security key, yet the 2FA tests must show that sshd accepts an
 * sk-ssh-ed25519 key with verify-required only when the authenticator verified the user. The ssh
 * client, ssh-sk-helper and sshd run unchanged and do the real protocol; only the device is software.
 * OpenSSH loads this file through SecurityKeyProvider= (or SSH_SK_PROVIDER, ssh-keygen -w).
 *
 * User presence (flag 0x01) is reported exactly when the key asks for it, as a device does when
 * it waits for a touch: OpenSSH passes the flags the key was enrolled with, and a key enrolled with
 * `-O no-touch-required` does not ask, so its signatures carry no presence flag.
 * User verification (flag 0x04) is set by one environment variable, read at each call:
 *   SK_SOFT_PIN set     the device has this PIN. When OpenSSH asks for user verification
 *                       (flag 0x04) without a PIN, it answers "PIN required" (the ssh client then
 *                       prompts, via SSH_ASKPASS); with the right PIN the signature carries user
 *                       verified (0x04); a wrong PIN is refused.
 *   SK_SOFT_PIN unset   a device that cannot verify its user (a U2F-only key, or a stolen one
 *                       whose owner's PIN is unknown): its signatures never carry 0x04.
 *
 * Keys are ed25519, not resident. The key handle is the 32-byte private seed itself: a real
 * device wraps it with a secret of its own; a test device has nothing to protect it with.
 * Build: gcc -shared -fPIC -o sk_soft.so sk_soft.c -lcrypto
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* The interface OpenSSH 9.2 expects (sk-api.h): flags, algorithms, error codes, structures. */
#define SK_USER_PRESENCE 0x01
#define SK_USER_VERIFIED 0x04
#define SK_RESIDENT 0x20
#define SK_ALG_ED25519 0x01
#define SK_ERR_GENERAL -1
#define SK_ERR_UNSUPPORTED -2
#define SK_ERR_PIN_REQUIRED -3
#define SK_API_VERSION 0x000a0000

#define SEED_LEN 32
#define PUBKEY_LEN 32
#define SIG_LEN 64
#define SHA256_LEN 32

struct sk_enroll_response {
	uint8_t flags;
	uint8_t *public_key;
	size_t public_key_len;
	uint8_t *key_handle;
	size_t key_handle_len;
	uint8_t *signature;
	size_t signature_len;
	uint8_t *attestation_cert;
	size_t attestation_cert_len;
	uint8_t *authdata;
	size_t authdata_len;
};

struct sk_sign_response {
	uint8_t flags;
	uint32_t counter;
	uint8_t *sig_r;
	size_t sig_r_len;
	uint8_t *sig_s;
	size_t sig_s_len;
};

struct sk_resident_key;

struct sk_option {
	char *name;
	char *value;
	uint8_t required;
};

uint32_t sk_api_version(void);
int sk_enroll(uint32_t alg, const uint8_t *challenge, size_t challenge_len, const char *application,
    uint8_t flags, const char *pin, struct sk_option **options, struct sk_enroll_response **enroll_response);
int sk_sign(uint32_t alg, const uint8_t *data, size_t data_len, const char *application,
    const uint8_t *key_handle, size_t key_handle_len, uint8_t flags, const char *pin,
    struct sk_option **options, struct sk_sign_response **sign_response);
int sk_load_resident_keys(const char *pin, struct sk_option **options, struct sk_resident_key ***rks,
    size_t *nrks);

uint32_t
sk_api_version(void)
{
	return SK_API_VERSION;
}

/* No option (device path, user id, ...) applies to a software device: refuse a required one. */
static int
options_supported(struct sk_option **options)
{
	for (size_t i = 0; options != NULL && options[i] != NULL; i++)
		if (options[i]->required)
			return 0;
	return 1;
}

/*
 * The flags a signature will carry, or an error: user presence when the key asks for it (the
 * "touch" is implied); user verified only when the device has a PIN and was given it.
 */
static int
verification(uint8_t wanted, const char *pin, uint8_t *flags)
{
	const char *device_pin = getenv("SK_SOFT_PIN");

	*flags = wanted & SK_USER_PRESENCE;
	if (device_pin == NULL)
		return 0;
	if (pin == NULL || *pin == '\0')
		return (wanted & SK_USER_VERIFIED) ? SK_ERR_PIN_REQUIRED : 0;
	if (strlen(pin) != strlen(device_pin) || CRYPTO_memcmp(pin, device_pin, strlen(pin)) != 0)
		return SK_ERR_PIN_REQUIRED;
	*flags |= SK_USER_VERIFIED;
	return 0;
}

static EVP_PKEY *
key_from_seed(const uint8_t *seed)
{
	return EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, SEED_LEN);
}

int
sk_enroll(uint32_t alg, const uint8_t *challenge, size_t challenge_len, const char *application,
    uint8_t flags, const char *pin, struct sk_option **options, struct sk_enroll_response **enroll_response)
{
	struct sk_enroll_response *resp = NULL;
	EVP_PKEY *key = NULL;
	uint8_t got;
	size_t publen = PUBKEY_LEN;
	int r;

	(void)challenge;
	(void)challenge_len;
	if (enroll_response == NULL || application == NULL)
		return SK_ERR_GENERAL;
	*enroll_response = NULL;
	if (alg != SK_ALG_ED25519 || (flags & SK_RESIDENT) || !options_supported(options))
		return SK_ERR_UNSUPPORTED;
	if ((r = verification(flags, pin, &got)) != 0)
		return r;
	r = SK_ERR_GENERAL;
	if ((resp = calloc(1, sizeof(*resp))) == NULL ||
	    (resp->key_handle = malloc(SEED_LEN)) == NULL ||
	    (resp->public_key = malloc(PUBKEY_LEN)) == NULL)
		goto out;
	resp->key_handle_len = SEED_LEN;
	if (RAND_bytes(resp->key_handle, SEED_LEN) != 1 || (key = key_from_seed(resp->key_handle)) == NULL ||
	    EVP_PKEY_get_raw_public_key(key, resp->public_key, &publen) != 1 || publen != PUBKEY_LEN)
		goto out;
	resp->public_key_len = PUBKEY_LEN;
	/* The flags the key will ask for at each signature (user presence, verification). */
	resp->flags = flags;
	*enroll_response = resp;
	resp = NULL;
	r = 0;
 out:
	EVP_PKEY_free(key);
	if (resp != NULL) {
		if (resp->key_handle != NULL)
			OPENSSL_cleanse(resp->key_handle, SEED_LEN);
		free(resp->key_handle);
		free(resp->public_key);
		free(resp);
	}
	return r;
}

/*
 * What an sk-ssh-ed25519 signature covers (OpenSSH PROTOCOL.u2f):
 * SHA256(application) || flags || counter (big-endian) || SHA256(data).
 */
static int
signed_message(const char *application, uint8_t flags, uint32_t counter, const uint8_t *data, size_t data_len,
    uint8_t out[SHA256_LEN + 1 + 4 + SHA256_LEN])
{
	if (EVP_Digest(application, strlen(application), out, NULL, EVP_sha256(), NULL) != 1)
		return -1;
	out[SHA256_LEN] = flags;
	for (int i = 0; i < 4; i++)
		out[SHA256_LEN + 1 + i] = (uint8_t)(counter >> (24 - 8 * i));
	if (EVP_Digest(data, data_len, out + SHA256_LEN + 5, NULL, EVP_sha256(), NULL) != 1)
		return -1;
	return 0;
}

int
sk_sign(uint32_t alg, const uint8_t *data, size_t data_len, const char *application,
    const uint8_t *key_handle, size_t key_handle_len, uint8_t flags, const char *pin,
    struct sk_option **options, struct sk_sign_response **sign_response)
{
	struct sk_sign_response *resp = NULL;
	EVP_PKEY *key = NULL;
	EVP_MD_CTX *ctx = NULL;
	uint8_t message[SHA256_LEN + 1 + 4 + SHA256_LEN];
	size_t siglen = SIG_LEN;
	uint8_t got;
	int r;

	if (sign_response == NULL || application == NULL || key_handle == NULL)
		return SK_ERR_GENERAL;
	*sign_response = NULL;
	if (alg != SK_ALG_ED25519 || key_handle_len != SEED_LEN || !options_supported(options))
		return SK_ERR_UNSUPPORTED;
	if ((r = verification(flags, pin, &got)) != 0)
		return r;
	r = SK_ERR_GENERAL;
	if ((resp = calloc(1, sizeof(*resp))) == NULL || (resp->sig_r = malloc(SIG_LEN)) == NULL)
		goto out;
	resp->flags = got;
	/* A signature counter that only grows, as a device's does (sshd records it, does not check it). */
	resp->counter = (uint32_t)time(NULL);
	if (signed_message(application, resp->flags, resp->counter, data, data_len, message) != 0 ||
	    (key = key_from_seed(key_handle)) == NULL || (ctx = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) != 1 ||
	    EVP_DigestSign(ctx, resp->sig_r, &siglen, message, sizeof(message)) != 1 || siglen != SIG_LEN)
		goto out;
	resp->sig_r_len = SIG_LEN;
	*sign_response = resp;
	resp = NULL;
	r = 0;
 out:
	EVP_MD_CTX_free(ctx);
	EVP_PKEY_free(key);
	if (resp != NULL) {
		free(resp->sig_r);
		free(resp);
	}
	return r;
}

/* A software device keeps nothing: it has no resident keys to list. */
int
sk_load_resident_keys(const char *pin, struct sk_option **options, struct sk_resident_key ***rks, size_t *nrks)
{
	(void)pin;
	(void)options;
	if (rks != NULL)
		*rks = NULL;
	if (nrks != NULL)
		*nrks = 0;
	return SK_ERR_UNSUPPORTED;
}
