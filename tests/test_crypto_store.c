/* test_crypto_store.c -- encryption at rest: keys, passphrases, wrong keys,
 * flipped bytes, blocks moved to another place, plaintext never on disk. */
#include <errno.h>
#include <string.h>

#include "msadb.h"
#include "store/store_impl.h"
#include "testutil.h"

enum { D = 16, B = 8, T = 40 };

static const char secret_text[] = "the launch code is 7491-KESTREL";

static uint64_t add_doc(msadb_store *st, uint64_t seed)
{
    uint32_t planes = msadb_signature_planes(msadb_store_signature(st));
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4);
    tu_make_kv(seed, planes * T * D, K, V);
    msadb_doc doc = {0};
    doc.title = "secret title";
    doc.text = secret_text;
    doc.text_len = strlen(secret_text);
    return tu_append_f32(st, &doc, T, K, V);
}

static void test_key_store(void)
{
    const char *dir = tu_tmpdir("crypt");
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 1, 2, D));
    sig.block_size = B;
    sig.dtype = MSADB_DTYPE_F32;
    unsigned char key[32], wrong[32];
    for (int i = 0; i < 32; i++) {
        key[i] = (unsigned char)(i * 7 + 1);
        wrong[i] = key[i];
    }
    wrong[31] ^= 1;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.key = key;
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &opt, &st));
    CHECK(msadb_store_encrypted(st) == 1);
    uint64_t id = add_doc(st, 5);
    uint64_t id2 = add_doc(st, 6);
    msadb_close(st);

    char data[600];
    snprintf(data, sizeof data, "%s/data.mdb", dir);
    CHECK(!tu_file_contains(data, secret_text, strlen(secret_text)));
    CHECK(!tu_file_contains(data, "secret title", 12));

    CHECK_RC(msadb_open(dir, NULL, NULL, &st), MSADB_EKEY);
    opt.key = wrong;
    CHECK_RC(msadb_open(dir, NULL, &opt, &st), MSADB_EKEY);
    opt.key = NULL;
    opt.passphrase = "not the key";
    CHECK_RC(msadb_open(dir, NULL, &opt, &st), MSADB_EKEY);
    opt.passphrase = NULL;
    opt.key = key;
    CHECK_OK(msadb_open(dir, NULL, &opt, &st));

    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    char text[64];
    size_t len;
    CHECK_OK(msadb_doc_text(snap, id, text, sizeof text, &len));
    CHECK(len == strlen(secret_text) && memcmp(text, secret_text, len) == 0);
    msadb_doc_info info;
    CHECK_OK(msadb_doc_get(snap, id, &info));
    CHECK(strcmp(info.title, "secret title") == 0);
    uint32_t planes = msadb_signature_planes(&sig);
    float *K = malloc(planes * T * D * 4), *V = malloc(planes * T * D * 4), *Kb = malloc(T * D * 4);
    tu_make_kv(5, planes * T * D, K, V);
    CHECK_OK(msadb_doc_kv(snap, id, 0, Kb, NULL));
    CHECK(memcmp(Kb, K, T * D * 4) == 0);
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_verify(st, NULL, NULL));

    /* Move block 0 of the first document over block 0 of the second: the
     * bytes are authentic, but bound to another place. */
    MDB_txn *txn;
    uint8_t k1[8], k2[8];
    msadb_key_block(k1, 0);
    msadb_key_block(k2, 5); /* id2's first block: id has 5 blocks */
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    MDB_val a = {8, k1}, b = {8, k2}, v;
    CHECK_OK(mdb_get(txn, st->db_blocks, &a, &v));
    uint8_t copy[4096];
    CHECK(v.mv_size <= sizeof copy);
    memcpy(copy, v.mv_data, v.mv_size);
    v.mv_data = copy;
    CHECK_OK(mdb_put(txn, st->db_blocks, &b, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_RC(msadb_doc_kv(snap, id2, 0, Kb, NULL), MSADB_EAUTH);
    CHECK_OK(msadb_doc_kv(snap, id, 0, Kb, NULL));
    msadb_snapshot_end(snap);
    CHECK_RC(msadb_verify(st, NULL, NULL), MSADB_ECORRUPT);

    /* Flip a ciphertext byte of the text record: authentication fails. */
    uint8_t kd[9];
    msadb_key_docdata(kd, id, DD_TEXT);
    CHECK_OK(mdb_txn_begin(st->env, NULL, 0, &txn));
    MDB_val kt = {9, kd};
    CHECK_OK(mdb_get(txn, st->db_docdata, &kt, &v));
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size - 20] ^= 0x80;
    v.mv_data = copy;
    CHECK_OK(mdb_put(txn, st->db_docdata, &kt, &v, 0));
    CHECK_OK(mdb_txn_commit(txn));
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    CHECK_RC(msadb_doc_text(snap, id, text, sizeof text, &len), MSADB_EAUTH);
    msadb_snapshot_end(snap);
    msadb_close(st);
    free(K);
    free(V);
    free(Kb);
}

static void test_passphrase_store(void)
{
    const char *dir = tu_tmpdir("pass");
    msadb_signature sig;
    CHECK_OK(msadb_signature_init(&sig, 2, 1, 2, D));
    sig.block_size = B;
    sig.dtype = MSADB_DTYPE_INT8;
    msadb_options opt;
    msadb_options_init(&opt);
    opt.passphrase = "correct horse battery staple";
    msadb_store *st;
    CHECK_OK(msadb_create(dir, &sig, &opt, &st));
    uint64_t id = add_doc(st, 9);
    msadb_close(st);
    opt.passphrase = "correct horse battery stapler";
    CHECK_RC(msadb_open(dir, NULL, &opt, &st), MSADB_EKEY);
    opt.passphrase = "correct horse battery staple";
    CHECK_OK(msadb_open(dir, &sig, &opt, &st));
    msadb_snapshot *snap;
    CHECK_OK(msadb_snapshot_begin(st, &snap));
    float Kb[T * D];
    CHECK_OK(msadb_doc_kv(snap, id, 0, Kb, NULL));
    msadb_snapshot_end(snap);
    CHECK_OK(msadb_verify(st, NULL, NULL));
    msadb_close(st);
    /* key and passphrase together are ambiguous */
    unsigned char key[32] = {0};
    opt.key = key;
    CHECK_RC(msadb_open(dir, NULL, &opt, &st), MSADB_EINVAL);
}

static void test_key_file(void)
{
    const char *dir = tu_tmpdir("keyfile");
    char path[600];
    unsigned char key[32];
    snprintf(path, sizeof path, "%s/hex.key", dir);
    FILE *f = fopen(path, "w");
    fputs("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n", f);
    fclose(f);
    CHECK_OK(msadb_key_file_read(path, key));
    for (int i = 0; i < 32; i++)
        CHECK(key[i] == i);
    snprintf(path, sizeof path, "%s/raw.key", dir);
    f = fopen(path, "wb");
    for (int i = 0; i < 32; i++)
        fputc(255 - i, f);
    fclose(f);
    CHECK_OK(msadb_key_file_read(path, key));
    CHECK(key[0] == 255 && key[31] == 224);
    snprintf(path, sizeof path, "%s/bad.key", dir);
    f = fopen(path, "w");
    fputs("not a key\n", f);
    fclose(f);
    CHECK_RC(msadb_key_file_read(path, key), MSADB_EINVAL);
    snprintf(path, sizeof path, "%s/absent.key", dir);
    CHECK(msadb_key_file_read(path, key) == ENOENT);
}

int main(void)
{
    test_key_store();
    test_passphrase_store();
    test_key_file();
    printf("test_crypto_store: ok\n");
    return 0;
}
