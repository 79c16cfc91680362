// Greedy decoding through libllama the way llama-completion --temp 0 runs it: the prompt
// in one batch, then one token per llama_decode call, each chosen as the argmax of the
// previous step's logits (lowest id on equal values), stopping at end of generation.
// Writes the logits of every step, so that a near-tie can be judged on the logits that
// made the choice (a batched evaluation of prompt + continuation sums in another order).
//
// usage: llama_greedy_logits MODEL.gguf PROMPT.txt N_PREDICT N_THREADS OUT.bin [PROMPT_BATCH]
// PROMPT_BATCH (default: the whole prompt) evaluates the prompt in pieces of that many
// tokens; 1 with N_PREDICT 0 gives every row of a text from single-token decoding.
// OUT.bin: u32 n_tokens, u32 n_vocab, n_tokens x u32 ids (prompt, then generated),
//          n_tokens x n_vocab f32: row i holds the logits after token i (the prompt's
//          rows from the batch, then one per generated token; the last row is the choice
//          after the last token, which is end of generation when fewer than N_PREDICT
//          tokens were generated).
// Prints the number of prompt tokens. Built by scripts/quant-ladder.py against ../shared/scripts/llama-ref.sh's build.
#include "llama.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT.txt N_PREDICT N_THREADS OUT.bin [PROMPT_BATCH]\n", argv[0]);
        return 2;
    }
    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    const std::string prompt = text.str();
    const int n_predict = atoi(argv[3]);
    const int n_threads = atoi(argv[4]);

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token> ids(prompt.size() + 16);
    const int n_prompt = llama_tokenize(vocab, prompt.data(), (int) prompt.size(), ids.data(), (int) ids.size(), true, true);
    if (n_prompt <= 0) {
        fprintf(stderr, "cannot tokenize the prompt\n");
        return 1;
    }
    ids.resize(n_prompt);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;  // llama-completion's defaults
    cp.n_batch = 2048;
    if (n_prompt + n_predict + 1 > (int) cp.n_ctx) {
        fprintf(stderr, "prompt and continuation do not fit in %u tokens\n", cp.n_ctx);
        return 1;
    }
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cp);

    std::vector<float> rows;
    const int piece = argc == 7 && atoi(argv[6]) > 0 ? atoi(argv[6]) : n_prompt;
    llama_batch batch = llama_batch_init(piece, 0, 1);
    for (int start = 0; start < n_prompt; start += piece) {
        const int n = std::min(piece, n_prompt - start);
        for (int i = 0; i < n; i++) {
            batch.token[i] = ids[start + i];
            batch.pos[i] = start + i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = n;
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed on the prompt\n");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            const float * row = llama_get_logits_ith(ctx, i);
            rows.insert(rows.end(), row, row + n_vocab);
        }
    }
    for (int step = 0; step < n_predict; step++) {
        const float * last = rows.data() + rows.size() - n_vocab;
        llama_token next = 0;
        for (int v = 1; v < n_vocab; v++) {
            if (last[v] > last[next]) next = v;
        }
        if (llama_vocab_is_eog(vocab, next)) break;
        ids.push_back(next);
        if (step + 1 == n_predict) break;  // llama-completion does not evaluate the last token
        llama_batch one = llama_batch_get_one(&ids.back(), 1);
        if (llama_decode(ctx, one) != 0) {
            fprintf(stderr, "llama_decode failed at step %d\n", step);
            return 1;
        }
        const float * row = llama_get_logits_ith(ctx, -1);
        rows.insert(rows.end(), row, row + n_vocab);
    }
    // One row per id: after the last generated token, a row exists only when decoding
    // stopped at end of generation; otherwise evaluate it so the file stays rectangular.
    if ((int) (rows.size() / n_vocab) < (int) ids.size()) {
        llama_batch one = llama_batch_get_one(&ids.back(), 1);
        if (llama_decode(ctx, one) != 0) {
            fprintf(stderr, "llama_decode failed after the last token\n");
            return 1;
        }
        const float * row = llama_get_logits_ith(ctx, -1);
        rows.insert(rows.end(), row, row + n_vocab);
    }

    FILE * out = fopen(argv[5], "wb");
    if (!out) {
        fprintf(stderr, "cannot write %s\n", argv[5]);
        return 1;
    }
    const uint32_t header[2] = { (uint32_t) ids.size(), (uint32_t) n_vocab };
    fwrite(header, 4, 2, out);
    std::vector<uint32_t> ids32(ids.begin(), ids.end());
    fwrite(ids32.data(), 4, ids32.size(), out);
    fwrite(rows.data(), 4, rows.size(), out);
    fclose(out);
    printf("%d\n", n_prompt);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
