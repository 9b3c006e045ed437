// Prints llama.cpp's logits for a list of token ids, as JSON: the reference the engine's family
// tests compare against (crates/engine/tests/fixtures/llama_cpp_logits.json).
//
// Built and run by scripts/llama-cpp-logits.sh against the llama.cpp tree that
// scripts/build-llama-server.sh compiles. Usage: llama-logits MODEL.gguf ID ID ID ...
// One decode of the whole prompt, logits at every position, f32 KV cache, flash attention off
// (the most exact configuration llama.cpp offers on the CPU), one thread.
#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char ** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf ID [ID ...]\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> ids;
    for (int i = 2; i < argc; ++i) {
        ids.push_back((llama_token) std::atoi(argv[i]));
    }
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 256;
    cp.n_batch = 256;
    cp.n_ubatch = 256;
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    cp.type_k = GGML_TYPE_F32;
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int n = (int) ids.size();
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; ++i) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        std::fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::printf("[");
    for (int i = 0; i < n; ++i) {
        const float * l = llama_get_logits_ith(ctx, i);
        std::printf(i ? ",\n[" : "[");
        for (int v = 0; v < vocab; ++v) {
            std::printf(v ? ",%.6g" : "%.6g", l[v]);
        }
        std::printf("]");
    }
    std::printf("]\n");
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
