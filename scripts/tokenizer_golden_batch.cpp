// Batch front end to llama.cpp's llama_tokenize for scripts/tokenizer_golden.py:
// loads one vocabulary once, then tokenizes every case of a cases file.
//
// usage: tokenizer_golden_batch VOCAB.gguf CASES.txt SEPARATOR
// prints one line per case: ids with (add_special, parse_special) = (true, true),
// then " | ", then ids with (false, false).
#include "llama.h"

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void print_ids(const llama_vocab * vocab, const std::string & text, bool special) {
    std::vector<llama_token> ids(text.size() + 8);
    int n = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(), special, special);
    if (n < 0) {
        ids.resize(-n);
        n = llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), (int) ids.size(), special, special);
    }
    for (int i = 0; i < n; i++) {
        printf(i ? " %d" : "%d", ids[i]);
    }
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s VOCAB.gguf CASES.txt SEPARATOR\n", argv[0]);
        return 1;
    }
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string all = ss.str();
    const std::string sep = argv[3];
    size_t pos = 0;
    while (true) {
        size_t next = all.find(sep, pos);
        std::string text = all.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
        print_ids(vocab, text, true);
        printf(" | ");
        print_ids(vocab, text, false);
        printf("\n");
        if (next == std::string::npos) {
            break;
        }
        pos = next + sep.size();
    }
    llama_model_free(model);
    return 0;
}
