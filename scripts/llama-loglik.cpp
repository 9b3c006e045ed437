// llama.cpp's prompt log-probabilities, for the llama.cpp side of docs/lm-eval/README.md:
// llama-server cannot echo a prompt with its logprobs, which is what lm-evaluation-harness's
// loglikelihood requests need, so scripts/lm-eval/llama_cpp_shim.py serves /v1/completions
// with this tool behind it.
//
// Built by scripts/lm-eval.sh against the llama.cpp tree that scripts/build-llama-server.sh
// compiles. Usage: llama-loglik MODEL.gguf [THREADS]. Loads the model once, then answers one
// request per line on stdin with one line on stdout:
//
//   S ID ID ID ...   score a token sequence: one decode of the whole sequence (the KV cache
//                    cleared first), logits at every position. Prints
//                    {"lp":[...],"top":[[id,lp],...],"next":[id,lp]}: for each position i >= 1
//                    the log-probability of token i after tokens 0..i-1 and the most likely
//                    token there with its log-probability, then the most likely token after the
//                    whole sequence (the one greedy token of `max_tokens: 1`).
//   T HEX            tokenize the UTF-8 text given as hex (no BOS, special tokens not parsed):
//                    prints [ID,...].
//   P ID ID ...      token texts: prints ["HEX",...], each token's bytes as hex.
//
// Context parameters are llama.cpp's defaults (those llama-server runs with: f16 KV cache,
// flash attention chosen automatically) but a 4096-token context and batch; log-softmax in
// double precision.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

static std::vector<llama_token> read_ids(std::istringstream & in) {
    std::vector<llama_token> ids;
    long v;
    while (in >> v) {
        ids.push_back((llama_token) v);
    }
    return ids;
}

static std::string to_hex(const std::string & s) {
    static const char * digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

static std::string from_hex(const std::string & h) {
    std::string out;
    for (size_t i = 0; i + 1 < h.size(); i += 2) {
        out += (char) std::strtol(h.substr(i, 2).c_str(), nullptr, 16);
    }
    return out;
}

int main(int argc, char ** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [THREADS]\n", argv[0]);
        return 2;
    }
    const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        std::fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = 4096;
    cp.n_ubatch = 512;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int n_max = (int) llama_n_batch(ctx);
    llama_batch batch = llama_batch_init(n_max, 0, 1);

    std::string line;
    while (std::getline(std::cin, line)) {
        std::istringstream in(line);
        std::string cmd;
        in >> cmd;
        if (cmd == "T") {
            std::string hex;
            in >> hex;
            const std::string text = from_hex(hex);
            int n = -llama_tokenize(vocab, text.data(), (int) text.size(), nullptr, 0, false, false);
            std::vector<llama_token> ids(n);
            llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), n, false, false);
            std::printf("[");
            for (int i = 0; i < n; ++i) {
                std::printf(i ? ",%d" : "%d", ids[i]);
            }
            std::printf("]\n");
        } else if (cmd == "P") {
            std::printf("[");
            bool first = true;
            for (llama_token id : read_ids(in)) {
                char buf[256];
                int n = llama_token_to_piece(vocab, id, buf, sizeof buf, 0, true);
                std::string piece(buf, n > 0 ? n : 0);
                std::printf(first ? "\"%s\"" : ",\"%s\"", to_hex(piece).c_str());
                first = false;
            }
            std::printf("]\n");
        } else if (cmd == "S") {
            const std::vector<llama_token> ids = read_ids(in);
            const int n = (int) ids.size();
            bool bad = n < 1 || n > n_max;
            for (llama_token id : ids) {
                bad = bad || id < 0 || id >= n_vocab;
            }
            if (bad) {
                std::printf("{\"error\":\"need 1 to %d token ids below %d\"}\n", n_max, n_vocab);
                std::fflush(stdout);
                continue;
            }
            llama_memory_clear(llama_get_memory(ctx), true);
            for (int i = 0; i < n; ++i) {
                batch.token[i] = ids[i];
                batch.pos[i] = i;
                batch.n_seq_id[i] = 1;
                batch.seq_id[i][0] = 0;
                batch.logits[i] = 1;
            }
            batch.n_tokens = n;
            if (llama_decode(ctx, batch) != 0) {
                std::printf("{\"error\":\"llama_decode failed\"}\n");
                std::fflush(stdout);
                continue;
            }
            std::string lp = "[", top = "[", next;
            for (int i = 0; i < n; ++i) {
                const float * l = llama_get_logits_ith(ctx, i);
                int best = 0;
                for (int v = 1; v < n_vocab; ++v) {
                    if (l[v] > l[best]) {
                        best = v;
                    }
                }
                double sum = 0;
                for (int v = 0; v < n_vocab; ++v) {
                    sum += std::exp((double) l[v] - l[best]);
                }
                const double lse = l[best] + std::log(sum);
                char buf[96];
                std::snprintf(buf, sizeof buf, "[%d,%.9g]", best, l[best] - lse);
                if (i + 1 < n) {
                    char b2[48];
                    std::snprintf(b2, sizeof b2, "%s%.9g", i ? "," : "", l[ids[i + 1]] - lse);
                    lp += b2;
                    top += (i ? "," : "");
                    top += buf;
                } else {
                    next = buf;
                }
            }
            std::printf("{\"lp\":%s],\"top\":%s],\"next\":%s}\n", lp.c_str(), top.c_str(), next.c_str());
        } else {
            std::printf("{\"error\":\"unknown command\"}\n");
        }
        std::fflush(stdout);
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
