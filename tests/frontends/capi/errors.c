/* Every error path of the C API. Usage: errors ENCODER_FILE CLASSIFIER_FILE DECODER_FILE
 * Prints one line per case: "name<TAB>status<TAB>needed<TAB>message"; tests/frontends/test_capi.py checks them. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tinybert.h"

static void report(const char *name, int status) {
    printf("%s\t%d\t%zu\t%s\n", name, status, tb_last_needed(), tb_last_error());
}

static int on_piece_stop(const char *piece, void *user_data) {
    (void)piece;
    ++*(int *)user_data;
    return 1; /* stop after the first piece */
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    float out[4096];
    char text[256];
    const char *two[] = {"first text", "second text"};
    const char *with_null[] = {"first text", NULL};
    const char *bad_utf8[] = {"caf\xc3", "ok"};
    const char *surrogate[] = {"\xed\xa0\x80"};

    report("load_null_path", tb_model_load(NULL, 0) == NULL ? -100 : 0);
    report("load_missing_file", tb_model_load("/nonexistent/model.safetensors", 0) == NULL ? -100 : 0);
    report("load_not_a_model", tb_model_load(argv[0], 0) == NULL ? -100 : 0);
    report("load_negative_threads", tb_model_load(argv[1], -1) == NULL ? -100 : 0);

    tb_model *enc = tb_model_load(argv[1], 1);
    tb_model *clf = tb_model_load(argv[2], 1);
    tb_model *dec = tb_model_load(argv[3], 1);
    if (!enc || !clf || !dec) {
        printf("load_failed\t0\t0\t%s\n", tb_last_error());
        return 1;
    }
    int dim = tb_embedding_dim(enc);
    report("ok_dim", dim > 0 ? 0 : dim);
    report("dim_null_model", tb_embedding_dim(NULL));
    report("dim_wrong_kind", tb_embedding_dim(dec));
    report("encode_null_model", tb_encode(NULL, two, 2, out, 4096));
    report("encode_null_texts", tb_encode(enc, NULL, 2, out, 4096));
    report("encode_zero_texts", tb_encode(enc, two, 0, out, 4096));
    report("encode_null_out", tb_encode(enc, two, 2, NULL, 4096));
    report("encode_small_out", tb_encode(enc, two, 2, out, (size_t)dim));
    report("encode_null_text", tb_encode(enc, with_null, 2, out, 4096));
    report("encode_bad_utf8", tb_encode(enc, bad_utf8, 2, out, 4096));
    report("encode_surrogate", tb_encode(enc, surrogate, 1, out, 4096));
    report("encode_ok", tb_encode(enc, two, 2, out, 4096));
    report("encode_wrong_kind", tb_encode(dec, two, 2, out, 4096));
    report("classify_no_head", tb_classify(enc, "a text", text, sizeof text, NULL));
    report("classify_small_label", tb_classify(clf, "a text", text, 1, NULL));
    report("classify_null_label", tb_classify(clf, "a text", NULL, 16, NULL));
    report("classify_bad_utf8", tb_classify(clf, "\xff", text, sizeof text, NULL));
    report("classify_ok", tb_classify(clf, "a text", text, sizeof text, NULL));
    tb_generate_params params = tb_generate_default_params();
    report("generate_wrong_kind", tb_generate(enc, "Once", &params, NULL, NULL, text, sizeof text));
    report("generate_null_prompt", tb_generate(dec, NULL, &params, NULL, NULL, text, sizeof text));
    report("generate_null_out_with_len", tb_generate(dec, "Once", &params, NULL, NULL, NULL, 10));
    report("chat_wrong_kind", tb_chat(enc, "[]", &params, NULL, NULL, text, sizeof text));
    report("chat_null_messages", tb_chat(dec, NULL, &params, NULL, NULL, text, sizeof text));
    report("chat_null_out_with_len", tb_chat(dec, "[]", &params, NULL, NULL, NULL, 10));
    report("chat_empty_messages", tb_chat(dec, "[]", &params, NULL, NULL, text, sizeof text));
    params.max_new_tokens = 0;
    report("generate_zero_tokens", tb_generate(dec, "Once", &params, NULL, NULL, text, sizeof text));
    params = tb_generate_default_params();
    params.top_k = -3;
    report("generate_negative_top_k", tb_generate(dec, "Once", &params, NULL, NULL, text, sizeof text));
    params = tb_generate_default_params();
    params.max_new_tokens = 8;
    report("generate_small_out", tb_generate(dec, "Once", &params, NULL, NULL, text, 1));
    int pieces = 0;
    int status = tb_generate(dec, "Once", &params, on_piece_stop, &pieces, NULL, 0);
    report(pieces == 1 ? "generate_callback_stops" : "generate_callback_did_not_stop", status);
    tb_translate_params tparams = tb_translate_default_params();
    report("translate_wrong_kind", tb_translate(enc, "Hello", &tparams, text, sizeof text));
    report("translate_null_out", tb_translate(dec, "Hello", &tparams, NULL, 16));
    report("garbage_handle", tb_encode((tb_model *)(uintptr_t)0x1234560, two, 2, out, 4096));
    tb_model_free(enc);
    report("freed_handle", tb_encode(enc, two, 2, out, 4096));
    tb_model_free(enc);      /* a second free is ignored */
    tb_model_free(NULL);     /* a no-op */
    report("ok_after_free", tb_encode(dec, two, 2, out, 4096) == TB_ERR_WRONG_MODEL_KIND ? 0 : -99);
    report("version", strlen(tb_version()) > 0 ? 0 : -99);
    printf("version_string\t0\t0\t%s\n", tb_version());
    tb_model_free(clf);
    tb_model_free(dec);
    return 0;
}
