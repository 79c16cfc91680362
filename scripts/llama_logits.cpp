// Reference logits from llama.cpp: tokenizes a prompt the way llama-completion does
// (special tokens parsed, BOS per the model) and evaluates it with the library's default
// context settings (f16 KV cache, flash attention auto), writing every position's logits.
//
// usage: llama_logits MODEL.gguf PROMPT.txt N_CTX N_THREADS OUT.bin
// OUT.bin: u32 n_tokens, u32 n_vocab, n_tokens x u32 token ids, n_tokens x n_vocab f32.
// Build: scripts/build-llama-logits.sh (links against ../shared/scripts/llama-ref.sh's build).
#include "llama.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT.txt N_CTX N_THREADS OUT.bin\n", argv[0]);
        return 2;
    }
    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    const std::string prompt = text.str();
    const int n_ctx = atoi(argv[3]);
    const int n_threads = atoi(argv[4]);

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> ids(prompt.size() + 16);
    int n = llama_tokenize(vocab, prompt.data(), (int) prompt.size(), ids.data(), (int) ids.size(), true, true);
    if (n < 0 || n > n_ctx) {
        fprintf(stderr, "prompt does not fit: %d tokens, context %d\n", n, n_ctx);
        return 1;
    }
    ids.resize(n);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch) != 0) {
        fprintf(stderr, "llama_decode failed\n");
        return 1;
    }
    const uint32_t n_vocab = (uint32_t) llama_vocab_n_tokens(vocab);
    FILE * out = fopen(argv[5], "wb");
    const uint32_t header[2] = { (uint32_t) n, n_vocab };
    fwrite(header, 4, 2, out);
    fwrite(ids.data(), 4, n, out);
    for (int i = 0; i < n; i++) {
        fwrite(llama_get_logits_ith(ctx, i), 4, n_vocab, out);
    }
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
