/*
 * hearth_toy.c: a complete Hearth toy in C, to read and to port.
 *
 * It pairs with a hub by its pairing URI over EST (RFC 7030) with the hub
 * CA pinned, then speaks MQTT 3.1.1 over mutual TLS: it publishes its
 * description (meta, retained) and telemetry, obeys commands, receives
 * family messages (de-duplicated by id, stored, then acknowledged), sends
 * messages, and renews its certificate.
 *
 *     ./hearth_toy pair 'hearth://pair?v=1&...' ./toy
 *     ./hearth_toy run ./toy [--interval SECONDS] [--count N]
 *     ./hearth_toy send ./toy Mum 'Hello!'
 *     ./hearth_toy renew ./toy
 *
 * libmosquitto (MQTT), OpenSSL (keys, requests, certificates), libcurl
 * (EST over HTTPS) and cJSON (JSON); each call has its ESP-IDF and Arduino
 * counterpart in README.md. The directory layout is the Rust reference
 * device's (hearth-device), so either can use it.
 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <mosquitto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* --- What this toy is (its meta document, docs/schema/meta-v1.json: a unit,
 *     when given, is 1 to 16 characters; a field without one has none) --- */

static const char META[] =
    "{\"maker\":\"Example Toys\",\"model\":\"C Bear\",\"firmware\":\"1.0.0\","
    "\"telemetry\":["
    "{\"name\":\"seq\",\"type\":\"integer\"},"
    "{\"name\":\"uptime_s\",\"type\":\"integer\",\"unit\":\"s\"},"
    "{\"name\":\"led\",\"type\":\"boolean\"}],"
    "\"commands\":["
    "{\"name\":\"led\",\"args\":[{\"name\":\"on\",\"type\":\"boolean\"}]},"
    "{\"name\":\"beep\",\"args\":[{\"name\":\"times\",\"type\":\"integer\"}]}]}";

/* --- Protocol constants --------------------------------------------------- */

#define EST_PATH "/.well-known/est/"
#define DEVICE_URI_PREFIX "urn:hearth:device:"
#define MAX_EST_ANSWER (64 * 1024) /* a certificate or two in base64 */
#define KEEPALIVE_S 30
#define ANSWER_TIMEOUT_S 15
#define SEEN_KEPT 256 /* the hub redelivers only unacknowledged messages */

/* The device directory: the same files as hearth-device's. */
#define SETTINGS "device.toml" /* device_id, host, mqtt_port, enroll_port, ca_sha256 */
#define KEY "device.key"       /* the private key, made here, 0600 */
#define CERT "device.pem"      /* the device certificate, then the CA */
#define CA "ca.pem"            /* the hub CA: the only root this toy trusts */
#define SEEN "seen.json"       /* ids of messages already shown */
#define INBOX "inbox"          /* received pictures and voice notes, 0700 */

struct settings {
    char device_id[32];
    char host[256];
    int mqtt_port;
    int enroll_port;
    char ca_sha256[65];
};

/* --- Small helpers -------------------------------------------------------- */

static _Noreturn void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* Prints text that came over the network, safe for a terminal: control
 * characters (escape sequences could retitle it or fake output) are shown
 * escaped; line breaks are kept. */
static void put_safe(FILE *out, const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if ((*p < 0x20 && *p != '\n') || *p == 0x7f)
            fprintf(out, "\\u%04x", *p);
        else if (*p == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) /* C1 controls */
            fprintf(out, "\\u%04x", *++p);
        else
            fputc(*p, out);
    }
}

static char *path_in(const char *dir, const char *name)
{
    static char paths[4][4096]; /* a few live at once, e.g. cert and key */
    static int next;
    char *p = paths[next++ % 4];
    snprintf(p, sizeof paths[0], "%s/%s", dir, name);
    return p;
}

static void private_dir(const char *path)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        die("%s: %s", path, strerror(errno));
    if (chmod(path, 0700) != 0) /* tightened if it existed */
        die("%s: %s", path, strerror(errno));
}

/* Writes atomically, with `mode` from the first byte: a key is never
 * readable by others, not even while it is being written. */
static void write_file(const char *path, const void *data, size_t len, mode_t mode)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0)
        die("%s: %s", tmp, strerror(errno));
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0)
            die("%s: %s", tmp, strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    if (fsync(fd) != 0 || close(fd) != 0 || rename(tmp, path) != 0)
        die("%s: %s", path, strerror(errno));
}

static char *read_file(const char *path, long max)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *data = malloc((size_t)max + 1);
    size_t n = data ? fread(data, 1, (size_t)max, f) : 0;
    fclose(f);
    if (!data)
        die("out of memory");
    data[n] = '\0';
    return data;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool all_in(const char *s, const char *allowed, size_t min, size_t max)
{
    size_t n = strlen(s);
    return n >= min && n <= max && strspn(s, allowed) == n;
}

#define HEX "0123456789abcdef"
#define DEVICE_ID_CHARS "0123456789abcdefghjkmnpqrstvwxyz" /* Crockford base32 */

/* --- device.toml: flat `key = value` lines, enough for five fields ---------- */

static void store_settings(const char *dir, const struct settings *s)
{
    char text[1024];
    int n = snprintf(text, sizeof text,
                     "device_id = \"%s\"\nhost = \"%s\"\nmqtt_port = %d\n"
                     "enroll_port = %d\nca_sha256 = \"%s\"\n",
                     s->device_id, s->host, s->mqtt_port, s->enroll_port, s->ca_sha256);
    write_file(path_in(dir, SETTINGS), text, (size_t)n, 0644);
}

static void finish_renewal(const char *dir);

/* Copies a setting; one too long for its field makes the file damaged
 * (never silently cut, which could make a bad value look good). */
static bool copy_field(char *dst, size_t size, const char *value)
{
    size_t n = strlen(value);
    if (n >= size)
        return false;
    memcpy(dst, value, n + 1);
    return true;
}

static void load_settings(const char *dir, struct settings *s)
{
    char *text = read_file(path_in(dir, SETTINGS), 4096);
    if (!text)
        die("%s is not paired (no %s): run `pair` first", dir, SETTINGS);
    finish_renewal(dir);
    memset(s, 0, sizeof *s);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char key[32], value[256];
        if (sscanf(line, " %31[a-z0-9_] = \"%255[^\"]\"", key, value) == 2 ||
            sscanf(line, " %31[a-z0-9_] = %255s", key, value) == 2) {
            bool ok = true;
            if (!strcmp(key, "device_id"))
                ok = copy_field(s->device_id, sizeof s->device_id, value);
            else if (!strcmp(key, "host"))
                ok = copy_field(s->host, sizeof s->host, value);
            else if (!strcmp(key, "mqtt_port"))
                s->mqtt_port = atoi(value);
            else if (!strcmp(key, "enroll_port"))
                s->enroll_port = atoi(value);
            else if (!strcmp(key, "ca_sha256"))
                ok = copy_field(s->ca_sha256, sizeof s->ca_sha256, value);
            if (!ok)
                die("%s/%s is damaged (%s)", dir, SETTINGS, key);
        }
    }
    free(text);
    if (!all_in(s->device_id, DEVICE_ID_CHARS, 26, 26) || !s->host[0] || s->mqtt_port <= 0 ||
        s->enroll_port <= 0 || !all_in(s->ca_sha256, HEX, 64, 64))
        die("%s/%s is damaged", dir, SETTINGS);
}

/* --- The pairing URI: hearth://pair?v=1&host=…&port=…&mqtt=…&ca=…&token=… -- */

struct pairing_uri {
    char host[256];
    int port, mqtt;
    char ca[65];
    char token[256];
};

static void parse_pairing_uri(const char *uri, struct pairing_uri *u)
{
    const char *prefix = "hearth://pair?";
    if (strncmp(uri, prefix, strlen(prefix)) != 0)
        die("a pairing URI starts with %s", prefix);
    char query[1024];
    if (!copy_field(query, sizeof query, uri + strlen(prefix)))
        die("the pairing URI is too long");
    memset(u, 0, sizeof *u);
    bool v1 = false;
    for (char *field = strtok(query, "&"); field; field = strtok(NULL, "&")) {
        char *value = strchr(field, '=');
        if (!value)
            continue;
        *value++ = '\0';
        if (!strcmp(field, "v"))
            v1 = !strcmp(value, "1");
        else if (!strcmp(field, "host")) { /* an IPv6 address comes in brackets */
            if (value[0] == '[' && value[strlen(value) - 1] == ']') {
                value[strlen(value) - 1] = '\0';
                value++;
            }
            copy_field(u->host, sizeof u->host, value); /* too long: left empty, refused */
        }
        else if (!strcmp(field, "port"))
            u->port = atoi(value);
        else if (!strcmp(field, "mqtt"))
            u->mqtt = atoi(value);
        else if (!strcmp(field, "ca") && copy_field(u->ca, sizeof u->ca, value))
            for (char *c = u->ca; *c; c++)
                *c = (char)(*c >= 'A' && *c <= 'F' ? *c + 32 : *c); /* lower case */
        else if (!strcmp(field, "token"))
            copy_field(u->token, sizeof u->token, value);
        /* later versions may add fields */
    }
    if (!v1)
        die("this pairing URI version is not supported (v=1 expected)");
    if (!all_in(u->host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:", 1, 253))
        die("the pairing URI has a bad host");
    if (u->port <= 0 || u->port > 65535 || u->mqtt <= 0 || u->mqtt > 65535)
        die("the pairing URI has a bad port");
    if (!all_in(u->ca, HEX, 64, 64))
        die("the pairing URI has a bad ca (64 hex digits expected)");
    if (!all_in(u->token, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 32, 255))
        die("the pairing URI has a bad token");
}

/* --- EST over HTTPS with libcurl ------------------------------------------ */

struct buffer {
    char data[MAX_EST_ANSWER + 1];
    size_t len;
};

static size_t collect(char *p, size_t size, size_t n, void *userdata)
{
    struct buffer *b = userdata;
    if (b->len + size * n > MAX_EST_ANSWER)
        return 0; /* too large: curl stops with an error */
    memcpy(b->data + b->len, p, size * n);
    b->len += size * n;
    b->data[b->len] = '\0';
    return size * n;
}

/* Decodes base64 (line breaks allowed) into a fresh buffer. */
static unsigned char *base64_decode(const char *text, size_t *len)
{
    size_t n = strlen(text), k = 0;
    char *clean = malloc(n + 4);
    unsigned char *out = malloc(n + 4);
    if (!clean || !out)
        die("out of memory");
    for (size_t i = 0; i < n; i++)
        if (!strchr(" \t\r\n", text[i]))
            clean[k++] = text[i];
    clean[k] = '\0';
    int got = k % 4 == 0 ? EVP_DecodeBlock(out, (unsigned char *)clean, (int)k) : -1;
    if (got >= 0) /* EVP_DecodeBlock counts the padding as zero bytes */
        for (size_t i = k; i > 0 && clean[i - 1] == '='; i--)
            got--;
    free(clean);
    if (got < 0) {
        free(out);
        return NULL;
    }
    *len = (size_t)got;
    return out;
}

/* One EST request over its own TLS connection; returns the certificates of
 * the base64 certs-only PKCS#7 answer. `ca_file` NULL is for the single
 * `cacerts` request made before the toy has the CA: its answer is then
 * believed only if it matches the fingerprint from the pairing URI, and
 * nothing secret is sent on that connection. Every other request verifies
 * the hub against the pinned CA, and only that CA. */
static STACK_OF(X509) *est(const char *host, int port, const char *operation, const char *ca_file,
                           const char *cert, const char *key, const char *token,
                           const char *body)
{
    static struct buffer answer;
    char url[512], error[CURL_ERROR_SIZE] = "";
    bool v6 = strchr(host, ':') != NULL;
    snprintf(url, sizeof url, "https://%s%s%s:%d" EST_PATH "%s", v6 ? "[" : "", host, v6 ? "]" : "",
             port, operation);
    answer.len = 0;
    answer.data[0] = '\0';
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = NULL;
    if (!curl)
        die("curl_easy_init failed");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(curl, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long)ANSWER_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
    if (ca_file) {
        curl_easy_setopt(curl, CURLOPT_CAINFO, ca_file);
        curl_easy_setopt(curl, CURLOPT_CAPATH, NULL); /* no system roots */
    } else {
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L); /* pinned below */
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (cert) { /* renewal: the current certificate authenticates */
        curl_easy_setopt(curl, CURLOPT_SSLCERT, cert);
        curl_easy_setopt(curl, CURLOPT_SSLKEY, key);
    }
    if (token) { /* first enrollment: the one-time token as the Basic password */
        curl_easy_setopt(curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(curl, CURLOPT_USERNAME, "device");
        curl_easy_setopt(curl, CURLOPT_PASSWORD, token);
    }
    if (body) {
        headers = curl_slist_append(headers, "Content-Type: application/pkcs10");
        headers = curl_slist_append(headers, "Content-Transfer-Encoding: base64");
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    }
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    if (rc != CURLE_OK)
        die("%s: cannot reach the hub at %s: %s", operation, url,
            error[0] ? error : curl_easy_strerror(rc));
    if (status != 200) {
        fprintf(stderr, "error: %s: the hub answered %ld: ", operation, status);
        put_safe(stderr, answer.data);
        fputc('\n', stderr);
        exit(1);
    }
    size_t der_len;
    unsigned char *der = base64_decode(answer.data, &der_len);
    const unsigned char *p = der;
    PKCS7 *p7 = der ? d2i_PKCS7(NULL, &p, (long)der_len) : NULL;
    free(der);
    if (!p7 || !PKCS7_type_is_signed(p7) || !p7->d.sign->cert)
        die("%s: the hub's answer is not a certificate", operation);
    STACK_OF(X509) *certs = sk_X509_dup(p7->d.sign->cert);
    for (int i = 0; i < sk_X509_num(certs); i++)
        X509_up_ref(sk_X509_value(certs, i));
    PKCS7_free(p7);
    return certs;
}

/* --- Keys, requests and certificates with OpenSSL ---------------------------- */

/* A P-256 key made here, as PKCS#8 PEM; only the signing request (base64
 * DER, in `csr_b64`) leaves the toy. */
static char *new_key_and_csr(char **csr_b64)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = X509_NAME_new();
    if (!key || !req || !name)
        die("cannot make a key");
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"hearth toy", -1,
                               -1, 0);
    if (!X509_REQ_set_subject_name(req, name) || !X509_REQ_set_pubkey(req, key) ||
        !X509_REQ_sign(req, key, EVP_sha256()))
        die("cannot sign the certificate request");
    unsigned char *der = NULL;
    int der_len = i2d_X509_REQ(req, &der);
    *csr_b64 = malloc((size_t)der_len * 2 + 4);
    if (der_len <= 0 || !*csr_b64)
        die("cannot encode the certificate request");
    EVP_EncodeBlock((unsigned char *)*csr_b64, der, der_len);
    OPENSSL_free(der);

    BIO *bio = BIO_new(BIO_s_mem());
    char *pem_data;
    if (!PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL))
        die("cannot write the key");
    long len = BIO_get_mem_data(bio, &pem_data);
    char *key_pem = strndup(pem_data, (size_t)len);
    BIO_free(bio);
    X509_NAME_free(name);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return key_pem;
}

static void sha256_hex(X509 *cert, char out[65])
{
    unsigned char *der = NULL, digest[32];
    int len = i2d_X509(cert, &der);
    EVP_Digest(der, (size_t)len, digest, NULL, EVP_sha256(), NULL);
    OPENSSL_free(der);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", digest[i]);
}

static char *pem_of(X509 *cert)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data;
    PEM_write_bio_X509(bio, cert);
    long len = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)len);
    BIO_free(bio);
    return pem;
}

/* The id the hub gave this toy: its certificate's urn:hearth:device: SAN. */
static bool device_id_of(X509 *cert, char id[32])
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    bool found = false;
    size_t prefix = strlen(DEVICE_URI_PREFIX);
    for (int i = 0; !found && i < sk_GENERAL_NAME_num(names); i++) {
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const char *uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        int len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        if ((size_t)len == prefix + 26 && !strncmp(uri, DEVICE_URI_PREFIX, prefix)) {
            snprintf(id, 32, "%.26s", uri + prefix);
            found = all_in(id, DEVICE_ID_CHARS, 26, 26);
        }
    }
    GENERAL_NAMES_free(names);
    return found;
}

/* --- pair, renew ------------------------------------------------------------ */

static int cmd_pair(const char *uri, const char *dir, bool force)
{
    struct pairing_uri u;
    parse_pairing_uri(uri, &u);
    if (access(path_in(dir, SETTINGS), F_OK) == 0 && !force)
        die("%s is paired already (--force to pair again)", dir);

    /* 1. The hub CA, pinned by the fingerprint the URI carries. */
    STACK_OF(X509) *cas = est(u.host, u.port, "cacerts", NULL, NULL, NULL, NULL, NULL);
    X509 *ca = NULL;
    for (int i = 0; !ca && i < sk_X509_num(cas); i++) {
        char fingerprint[65];
        sha256_hex(sk_X509_value(cas, i), fingerprint);
        if (!strcmp(fingerprint, u.ca))
            ca = sk_X509_value(cas, i);
    }
    if (!ca)
        die("the hub's CA does not match the pairing URI: not our hub");
    char *ca_pem = pem_of(ca);
    sk_X509_pop_free(cas, X509_free); /* ca_pem keeps the pinned one */

    /* 2. Enroll with the one-time token, over TLS verified against that CA
     *    (written first to a file curl reads; nothing secret in it). */
    private_dir(dir);
    write_file(path_in(dir, CA), ca_pem, strlen(ca_pem), 0644);
    char *csr;
    char *key_pem = new_key_and_csr(&csr);
    STACK_OF(X509) *issued =
        est(u.host, u.port, "simpleenroll", path_in(dir, CA), NULL, NULL, u.token, csr);
    struct settings s = {.mqtt_port = u.mqtt, .enroll_port = u.port};
    if (sk_X509_num(issued) < 1 || !device_id_of(sk_X509_value(issued, 0), s.device_id))
        die("the hub's certificate names no device id");
    snprintf(s.host, sizeof s.host, "%s", u.host);
    snprintf(s.ca_sha256, sizeof s.ca_sha256, "%s", u.ca);

    /* 3. Store: key 0600 in a 0700 directory, device.toml last so a
     *    half-written pairing never looks complete. */
    char *cert_pem = pem_of(sk_X509_value(issued, 0));
    char *chain = malloc(strlen(cert_pem) + strlen(ca_pem) + 1);
    if (!chain)
        die("out of memory");
    strcat(strcpy(chain, cert_pem), ca_pem);
    write_file(path_in(dir, KEY), key_pem, strlen(key_pem), 0600);
    write_file(path_in(dir, CERT), chain, strlen(chain), 0644);
    store_settings(dir, &s);
    printf("%s\n", s.device_id);
    OPENSSL_cleanse(key_pem, strlen(key_pem));
    free(key_pem), free(csr), free(cert_pem), free(chain), free(ca_pem);
    sk_X509_pop_free(issued, X509_free);
    return 0;
}

/* Moves a renewal's files into place: a new certificate means the hub
 * issued it for the new key; a new key alone means no certificate came.
 * The same files and rule as hearth-device, so either completes the
 * other's. */
static void finish_renewal(const char *dir)
{
    char key_new[4200], cert_new[4200];
    snprintf(key_new, sizeof key_new, "%s.new", path_in(dir, KEY));
    snprintf(cert_new, sizeof cert_new, "%s.new", path_in(dir, CERT));
    if (access(cert_new, F_OK) == 0) {
        if (access(key_new, F_OK) == 0 && rename(key_new, path_in(dir, KEY)) != 0)
            die("%s: %s", key_new, strerror(errno));
        if (rename(cert_new, path_in(dir, CERT)) != 0)
            die("%s: %s", cert_new, strerror(errno));
    } else if (access(key_new, F_OK) == 0) {
        unlink(key_new);
    }
}

/* A new key and certificate; the current certificate authenticates the
 * request (EST simplereenroll). The hub accepts the old certificate until
 * the new one has been used once, or ten minutes. */
static int cmd_renew(const char *dir)
{
    struct settings s;
    load_settings(dir, &s);
    char *csr;
    char *key_pem = new_key_and_csr(&csr);
    STACK_OF(X509) *issued = est(s.host, s.enroll_port, "simplereenroll", path_in(dir, CA),
                                 path_in(dir, CERT), path_in(dir, KEY), NULL, csr);
    char id[32];
    if (sk_X509_num(issued) < 1 || !device_id_of(sk_X509_value(issued, 0), id) ||
        strcmp(id, s.device_id) != 0)
        die("the renewed certificate names another device");
    char *ca_pem = read_file(path_in(dir, CA), 65536);
    char *cert_pem = pem_of(sk_X509_value(issued, 0));
    if (!ca_pem)
        die("%s/%s is missing", dir, CA);
    char *chain = malloc(strlen(cert_pem) + strlen(ca_pem) + 1);
    if (!chain)
        die("out of memory");
    strcat(strcpy(chain, cert_pem), ca_pem);
    /* Both written beside the old ones (the certificate last: it marks the
     * pair complete), then moved. */
    char key_new[4200], cert_new[4200];
    snprintf(key_new, sizeof key_new, "%s.new", path_in(dir, KEY));
    snprintf(cert_new, sizeof cert_new, "%s.new", path_in(dir, CERT));
    write_file(key_new, key_pem, strlen(key_pem), 0600);
    write_file(cert_new, chain, strlen(chain), 0644);
    finish_renewal(dir);
    printf("renewed %s\n", s.device_id);
    OPENSSL_cleanse(key_pem, strlen(key_pem));
    free(key_pem), free(csr), free(ca_pem), free(cert_pem), free(chain);
    sk_X509_pop_free(issued, X509_free);
    return 0;
}

/* --- MQTT over mutual TLS with libmosquitto ---------------------------------- */

struct toy {
    struct settings s;
    const char *dir;
    char topic_cmd[128], topic_inbox[128], topic_outbox[128];
    bool connected, led, stop_now;
    char failure[200];
    int meta_mid, status_mid;
    bool status_acked;
    char seen[SEEN_KEPT][65]; /* ring of message ids already shown */
    int seen_next;
    /* for `send` */
    const char *reference, *to, *text;
    bool sent, done;
    int inbox_mid;
    long max_text_bytes; /* from the hub's retained hearth/v1/hub/info; 0: unknown */
    char receipt_status[32], receipt_id[65], receipt_reason[256];
};

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig)
{
    (void)sig;
    stop_signal = 1;
}

/* MQTT 3.1.1 as this device: client id = device id (the hub refuses any
 * other, and a second connection with the same id takes over the first),
 * the device certificate, the hub CA as the only root, TLS 1.2 or later,
 * and the server's name or address checked against its certificate. */
static struct mosquitto *mqtt_client(struct toy *t)
{
    struct mosquitto *m = mosquitto_new(t->s.device_id, true, t);
    if (!m)
        die("mosquitto_new failed");
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    if (mosquitto_tls_set(m, path_in(t->dir, CA), NULL, path_in(t->dir, CERT),
                          path_in(t->dir, KEY), NULL) != MOSQ_ERR_SUCCESS ||
        mosquitto_tls_opts_set(m, 1 /* SSL_VERIFY_PEER */, "tlsv1.2", NULL) != MOSQ_ERR_SUCCESS)
        die("cannot load the toy's certificate and key from %s", t->dir);
    mosquitto_max_inflight_messages_set(m, 16);
    return m;
}

static void publish_json(struct mosquitto *m, const char *topic, cJSON *json, bool retain,
                         int *mid)
{
    char *payload = cJSON_PrintUnformatted(json);
    mosquitto_publish(m, mid, topic, (int)strlen(payload), payload, 1, retain);
    free(payload);
    cJSON_Delete(json);
}

static void publish_telemetry(struct mosquitto *m, struct toy *t, const char *sub, cJSON *reading,
                              int *mid)
{
    char topic[160];
    snprintf(topic, sizeof topic, "hearth/v1/dev/%s/tele/%s", t->s.device_id, sub);
    publish_json(m, topic, reading, false, mid);
}

static void on_connect(struct mosquitto *m, void *userdata, int rc)
{
    struct toy *t = userdata;
    if (rc != 0) {
        fprintf(stderr, "the hub refused the connection: %s\n", mosquitto_connack_string(rc));
        if (rc == 4 || rc == 5) { /* no retry mends these */
            snprintf(t->failure, sizeof t->failure,
                     "this toy is not allowed on the hub (%s): revoked or removed?",
                     mosquitto_connack_string(rc));
            t->stop_now = true;
        }
        return;
    }
    t->connected = true;
    if (t->reference) {
        /* `send`: the hub's limits first (retained, they arrive right after
         * their SUBACK), then the inbox, so the receipt cannot be missed. */
        mosquitto_subscribe(m, NULL, "hearth/v1/hub/info", 0);
        mosquitto_subscribe(m, &t->inbox_mid, t->topic_inbox, 1);
        return;
    }
    printf("connected to %s:%d as %s\n", t->s.host, t->s.mqtt_port, t->s.device_id);
    /* A clean session each time: subscriptions are made again here, and the
     * hub redelivers every unacknowledged message on subscribe. */
    mosquitto_subscribe(m, NULL, t->topic_cmd, 1);
    mosquitto_subscribe(m, NULL, t->topic_inbox, 1);
    char topic[160];
    snprintf(topic, sizeof topic, "hearth/v1/dev/%s/meta", t->s.device_id);
    mosquitto_publish(m, &t->meta_mid, topic, (int)strlen(META), META, 1, true);
}

static void on_publish(struct mosquitto *m, void *userdata, int mid)
{
    (void)m;
    struct toy *t = userdata;
    if (mid == t->meta_mid && !t->reference)
        printf("meta published\n");
    if (mid == t->status_mid)
        t->status_acked = true;
}

static void on_subscribe(struct mosquitto *m, void *userdata, int mid, int count, const int *qos)
{
    struct toy *t = userdata;
    for (int i = 0; i < count; i++)
        if (qos[i] == 0x80)
            fprintf(stderr, "the hub refused a subscription\n");
    if (t->reference && !t->sent && mid == t->inbox_mid) {
        /* Refused here, with the hub's own figure, rather than by the hub
         * closing the connection. */
        size_t size = strlen(t->text);
        if (t->max_text_bytes > 0 && size > (size_t)t->max_text_bytes) {
            snprintf(t->failure, sizeof t->failure,
                     "the text is %zu bytes; this hub takes at most %ld bytes", size,
                     t->max_text_bytes);
            t->stop_now = true;
            return;
        }
        cJSON *send = cJSON_CreateObject();
        cJSON_AddNumberToObject(send, "v", 1);
        cJSON_AddStringToObject(send, "type", "send");
        cJSON_AddStringToObject(send, "ref", t->reference);
        cJSON_AddStringToObject(send, "to", t->to);
        cJSON_AddStringToObject(send, "kind", "text");
        cJSON_AddStringToObject(send, "body", t->text);
        publish_json(m, t->topic_outbox, send, false, NULL);
        t->sent = true;
    }
}

/* --- Seen ids: kept on disk so a restart between storing a message and
 *     acknowledging it does not show it twice ----------------------------- */

static void load_seen(struct toy *t)
{
    char *text = read_file(path_in(t->dir, SEEN), SEEN_KEPT * 70 + 16);
    cJSON *ids = text ? cJSON_Parse(text) : NULL;
    cJSON *id;
    cJSON_ArrayForEach(id, ids) {
        if (cJSON_IsString(id) && all_in(id->valuestring, HEX, 1, 64))
            snprintf(t->seen[t->seen_next++ % SEEN_KEPT], 65, "%s", id->valuestring);
    }
    cJSON_Delete(ids);
    free(text);
}

static bool first_time(struct toy *t, const char *id)
{
    for (int i = 0; i < SEEN_KEPT; i++)
        if (!strcmp(t->seen[i], id))
            return false;
    return true;
}

static void remember(struct toy *t, const char *id)
{
    snprintf(t->seen[t->seen_next++ % SEEN_KEPT], 65, "%s", id);
    cJSON *ids = cJSON_CreateArray();
    for (int i = 0; i < SEEN_KEPT; i++) { /* oldest first */
        const char *s = t->seen[(t->seen_next + i) % SEEN_KEPT];
        if (s[0])
            cJSON_AddItemToArray(ids, cJSON_CreateString(s));
    }
    char *text = cJSON_PrintUnformatted(ids);
    write_file(path_in(t->dir, SEEN), text, strlen(text), 0600);
    free(text);
    cJSON_Delete(ids);
}

static const char *string_of(const cJSON *object, const char *name)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(object, name);
    return cJSON_IsString(item) ? item->valuestring : NULL;
}

static void show(struct toy *t, const char *id, const cJSON *envelope)
{
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(envelope, "from");
    const char *member = string_of(from, "member"), *device = string_of(from, "device");
    const char *body = string_of(envelope, "body"), *data = string_of(envelope, "data");
    const char *kind = string_of(envelope, "kind");
    printf("%s %s from ", body || !data || !kind ? "message" : kind, id);
    put_safe(stdout, member ? member : "?");
    printf(" (");
    put_safe(stdout, device ? device : "?");
    printf(")");
    if (body) {
        printf(": ");
        put_safe(stdout, body);
        printf("\n");
    } else if (data) {
        size_t len;
        unsigned char *bytes = base64_decode(data, &len);
        if (!bytes) {
            printf(": undecodable attachment\n");
            return;
        }
        /* The file name comes from the hub's hex id, never from the sender. */
        const char *type = string_of(envelope, "content_type");
        const char *sub = type && strchr(type, '/') ? strchr(type, '/') + 1 : "";
        char name[100];
        snprintf(name, sizeof name, "%s/%s.%s", INBOX, id,
                 all_in(sub, "abcdefghijklmnopqrstuvwxyz0123456789", 1, 8) ? sub : "bin");
        private_dir(path_in(t->dir, INBOX));
        write_file(path_in(t->dir, name), bytes, len, 0600);
        printf(": saved %s (%zu bytes)\n", path_in(t->dir, name), len);
        free(bytes);
    } else {
        printf(" (empty)\n");
    }
}

static void on_inbox(struct mosquitto *m, struct toy *t, const cJSON *envelope)
{
    const char *type = string_of(envelope, "type");
    if (type && !strcmp(type, "receipt")) {
        const char *ref = string_of(envelope, "ref"), *status = string_of(envelope, "status");
        if (t->reference && ref && !strcmp(ref, t->reference) && status) {
            snprintf(t->receipt_status, sizeof t->receipt_status, "%s", status);
            const char *id = string_of(envelope, "id"), *reason = string_of(envelope, "reason");
            snprintf(t->receipt_id, sizeof t->receipt_id, "%s", id ? id : "");
            snprintf(t->receipt_reason, sizeof t->receipt_reason, "%s", reason ? reason : "");
            t->done = true;
        } else if (!t->reference) {
            printf("receipt ");
            put_safe(stdout, ref ? ref : "?");
            printf(" ");
            put_safe(stdout, status ? status : "?");
            printf("\n");
        }
        return;
    }
    /* Deliveries are left unacknowledged by `send`: `run` shows and acks them. */
    if (!type || strcmp(type, "delivery") != 0 || t->reference)
        return;
    const char *id = string_of(envelope, "id");
    if (!id || !all_in(id, HEX, 1, 64)) {
        fprintf(stderr, "ignoring a delivery with a malformed id\n");
        return; /* not acknowledged: the id is not the hub's */
    }
    if (first_time(t, id)) {
        show(t, id, envelope);
        remember(t, id); /* stored before the ack goes out */
    } else {
        printf("message %s again (acknowledged again, not shown)\n", id);
    }
    /* Acknowledged every time, again for a redelivery: the first ack may
     * have been lost. */
    cJSON *ack = cJSON_CreateObject();
    cJSON_AddNumberToObject(ack, "v", 1);
    cJSON_AddStringToObject(ack, "type", "ack");
    cJSON_AddStringToObject(ack, "id", id);
    publish_json(m, t->topic_outbox, ack, false, NULL);
}

static void on_command(struct mosquitto *m, struct toy *t, const char *name, const cJSON *args)
{
    if (!strcmp(name, "led")) {
        const cJSON *on = cJSON_GetObjectItemCaseSensitive(args, "on");
        t->led = cJSON_IsBool(on) ? cJSON_IsTrue(on) : !t->led;
        printf("cmd led on=%s\n", t->led ? "true" : "false");
    } else if (!strcmp(name, "beep")) {
        const cJSON *times = cJSON_GetObjectItemCaseSensitive(args, "times");
        double n = cJSON_IsNumber(times) ? times->valuedouble : 1;
        printf("cmd beep times=%d\n", n < 0 ? 0 : n > 10 ? 10 : (int)n);
    } else {
        printf("cmd ");
        put_safe(stdout, name);
        printf(" ignored (unknown)\n");
        return;
    }
    /* The visible effect: the state that changed, at once. */
    cJSON *reading = cJSON_CreateObject();
    cJSON_AddBoolToObject(reading, "led", t->led);
    cJSON_AddStringToObject(reading, "cmd", name);
    publish_telemetry(m, t, "led", reading, NULL);
}

/* Nothing from the network may crash the toy: bad input is reported and
 * dropped. */
static void on_message(struct mosquitto *m, void *userdata, const struct mosquitto_message *msg)
{
    struct toy *t = userdata;
    size_t cmd_len = strlen(t->topic_cmd) - 1; /* "…/cmd/#" without the '#' */
    bool inbox = !strcmp(msg->topic, t->topic_inbox);
    bool command = !strncmp(msg->topic, t->topic_cmd, cmd_len);
    if (!strcmp(msg->topic, "hearth/v1/hub/info")) {
        cJSON *info = cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
        const cJSON *limit = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(info, "mailbox"), "max_text_bytes");
        if (cJSON_IsNumber(limit) && limit->valuedouble >= 1)
            t->max_text_bytes = (long)limit->valuedouble;
        cJSON_Delete(info);
        return;
    }
    if (!inbox && !command)
        return;
    cJSON *json = msg->payloadlen == 0 && command
                      ? cJSON_CreateObject()
                      : cJSON_ParseWithLength(msg->payload, (size_t)msg->payloadlen);
    if (!cJSON_IsObject(json)) {
        fprintf(stderr, "ignoring a message on ");
        put_safe(stderr, msg->topic);
        fprintf(stderr, ": not a JSON object\n");
    } else if (inbox) {
        on_inbox(m, t, json);
    } else {
        on_command(m, t, msg->topic + cmd_len, json);
    }
    cJSON_Delete(json);
    fflush(stdout);
}

static void init_toy(struct toy *t, const char *dir)
{
    memset(t, 0, sizeof *t);
    t->dir = dir;
    t->meta_mid = t->status_mid = -1;
    load_settings(dir, &t->s);
    snprintf(t->topic_cmd, sizeof t->topic_cmd, "hearth/v1/dev/%s/cmd/#", t->s.device_id);
    snprintf(t->topic_inbox, sizeof t->topic_inbox, "hearth/v1/dev/%s/inbox", t->s.device_id);
    snprintf(t->topic_outbox, sizeof t->topic_outbox, "hearth/v1/dev/%s/outbox", t->s.device_id);
}

/* The hub refuses a revoked or removed toy's certificate with a TLS alert
 * (or, on a resumed session, CONNACK "not authorized"): no retry mends
 * that. libmosquitto reports OpenSSL's reason only through its log. The
 * alert comes after this toy verified the hub, so it is the hub's word. */
static void on_log(struct mosquitto *m, void *userdata, int level, const char *text)
{
    (void)m, (void)level;
    struct toy *t = userdata;
    if (strstr(text, "alert certificate") || strstr(text, "alert bad certificate")) {
        snprintf(t->failure, sizeof t->failure,
                 "the hub refused this toy's certificate: revoked or removed?");
        t->stop_now = true;
    }
}

static struct mosquitto *connect_toy(struct toy *t)
{
    struct mosquitto *m = mqtt_client(t);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_message_callback_set(m, on_message);
    mosquitto_publish_callback_set(m, on_publish);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_log_callback_set(m, on_log);
    int rc = mosquitto_connect(m, t->s.host, t->s.mqtt_port, KEEPALIVE_S);
    if (rc != MOSQ_ERR_SUCCESS)
        fprintf(stderr, "cannot reach the hub at %s:%d: %s; retrying\n", t->s.host,
                t->s.mqtt_port, mosquitto_strerror(rc));
    return m;
}

/* Lets a DISCONNECT (and what was queued before it) go out. */
static void disconnect(struct mosquitto *m)
{
    mosquitto_disconnect(m);
    for (int i = 0; i < 20 && mosquitto_loop(m, 100, 1) == MOSQ_ERR_SUCCESS; i++) {
    }
    mosquitto_destroy(m);
}

/* The main loop: one thread, as on a microcontroller. Telemetry every
 * `interval` seconds; reconnects with exponential back-off (1 s to 60 s). */
static int cmd_run(const char *dir, double interval, long count)
{
    struct toy t;
    init_toy(&t, dir);
    load_seen(&t);
    struct mosquitto *m = connect_toy(&t);
    double started = now_s(), next_tele = 0, retry_at = 0, backoff = 1;
    long sent = 0;
    while (!stop_signal && !t.stop_now) {
        int rc = mosquitto_loop(m, 100, 1);
        if (rc == MOSQ_ERR_SUCCESS && t.connected) {
            backoff = 1;
            if (count > 0 && sent >= count && t.status_acked)
                break; /* the last telemetry was acknowledged (QoS 1) */
            if (now_s() >= next_tele && (count <= 0 || sent < count)) {
                cJSON *reading = cJSON_CreateObject();
                cJSON_AddNumberToObject(reading, "seq", (double)++sent);
                cJSON_AddNumberToObject(reading, "uptime_s", (double)(long)(now_s() - started));
                cJSON_AddBoolToObject(reading, "led", t.led);
                t.status_acked = false;
                publish_telemetry(m, &t, "status", reading, &t.status_mid);
                printf("telemetry %ld\n", sent);
                next_tele = now_s() + interval;
            }
        } else if (rc != MOSQ_ERR_SUCCESS) {
            if (t.connected)
                fprintf(stderr, "connection lost: %s; retrying\n", mosquitto_strerror(rc));
            t.connected = false;
            if (retry_at == 0) {
                retry_at = now_s() + backoff;
                backoff = backoff * 2 > 60 ? 60 : backoff * 2;
            } else if (now_s() >= retry_at) {
                retry_at = 0;
                rc = mosquitto_reconnect(m);
                if (rc != MOSQ_ERR_SUCCESS && !t.stop_now)
                    fprintf(stderr, "cannot reach the hub: %s; retrying in %.0f s\n",
                            mosquitto_strerror(rc), backoff);
            } else {
                nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
            }
        }
    }
    disconnect(m);
    if (t.failure[0])
        die("%s", t.failure);
    return 0;
}

/* Sends a text through the hub's mailbox and waits for the hub to say it
 * stored it. */
static int cmd_send(const char *dir, const char *to, const char *text)
{
    struct toy t;
    init_toy(&t, dir);
    unsigned char random[8];
    char reference[17];
    if (RAND_bytes(random, sizeof random) != 1)
        die("no randomness");
    for (int i = 0; i < 8; i++)
        sprintf(reference + 2 * i, "%02x", random[i]);
    t.reference = reference, t.to = to, t.text = text;
    struct mosquitto *m = connect_toy(&t);
    double deadline = now_s() + ANSWER_TIMEOUT_S;
    while (!t.done && !t.stop_now && now_s() < deadline)
        if (mosquitto_loop(m, 100, 1) != MOSQ_ERR_SUCCESS)
            break;
    disconnect(m);
    if (t.failure[0])
        die("%s", t.failure);
    if (!t.done)
        die("no receipt within %d s", ANSWER_TIMEOUT_S);
    if (strcmp(t.receipt_status, "stored") != 0) {
        fprintf(stderr, "error: refused: ");
        put_safe(stderr, t.receipt_reason[0] ? t.receipt_reason : "no reason given");
        fputc('\n', stderr);
        return 1;
    }
    printf("stored %s\n", t.receipt_id);
    return 0;
}

/* --- Command line ------------------------------------------------------------- */

static _Noreturn void usage(void)
{
    fputs("usage: hearth_toy pair URI DIR [--force]\n"
          "       hearth_toy run DIR [--interval SECONDS] [--count N]\n"
          "       hearth_toy send DIR MEMBER TEXT\n"
          "       hearth_toy renew DIR\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_signal); /* SIGTERM and Ctrl-C: a clean DISCONNECT */
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    mosquitto_lib_init();
    if (argc < 3)
        usage();
    const char *cmd = argv[1], *dir = argv[2];
    int rc;
    if (!strcmp(cmd, "pair") && argc >= 4) {
        bool force = argc == 5 && !strcmp(argv[4], "--force");
        if (argc > 5 || (argc == 5 && !force))
            usage();
        rc = cmd_pair(argv[2], argv[3], force);
    } else if (!strcmp(cmd, "run")) {
        double interval = 10;
        long count = 0;
        for (int i = 3; i < argc; i += 2) {
            if (i + 1 >= argc)
                usage();
            if (!strcmp(argv[i], "--interval"))
                interval = atof(argv[i + 1]);
            else if (!strcmp(argv[i], "--count"))
                count = atol(argv[i + 1]);
            else
                usage();
        }
        rc = cmd_run(dir, interval < 0.05 ? 0.05 : interval, count);
    } else if (!strcmp(cmd, "send") && argc == 5) {
        rc = cmd_send(dir, argv[3], argv[4]);
    } else if (!strcmp(cmd, "renew") && argc == 3) {
        rc = cmd_renew(dir);
    } else {
        usage();
    }
    mosquitto_lib_cleanup();
    curl_global_cleanup();
    return rc;
}
