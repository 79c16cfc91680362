// Intermediate tensors of llama.cpp's forward pass, for finding where mcc's forward pass
// first differs from it. Tokenizes a text as llama-completion does, decodes it one token
// per llama_decode call (the decode path: the same kernels as generation), and through
// the context's eval callback (llama_context_params.cb_eval) writes every graph node
// whose name starts with one of the given prefixes, at every position.
//
// usage: llama_dump_tensors MODEL.gguf TEXT.txt N_THREADS OUT_DIR PREFIX...
//   e.g. ... out "attn_norm-0" "Qcur-0" "Kcur-0" "Vcur-0" "__fattn__-0" "kqv_out-0"
// Each node becomes OUT_DIR/p<POS>_<NNN>_<NAME>_<OP>.<f32|f16> (NNN: its order within
// that position's graph, so the several nodes that share a name, e.g. Qcur before and
// after RoPE, stay apart), holding the tensor's elements in ggml order (ne[0] fastest),
// and OUT_DIR/index.tsv lists file, name, op, type and ne[0..3]. Only F32 and F16 nodes
// are written; non-contiguous views are gathered element by element.
// Build: scripts/dump-tensors.sh (links against ../shared/scripts/llama-ref.sh's build).
#include "ggml.h"
#include "llama.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

struct DumpState {
    std::string dir;
    std::vector<std::string> prefixes;
    int pos = 0;
    int node = 0;
    FILE * index = nullptr;
};

static bool wanted(const DumpState & st, const char * name) {
    for (const std::string & p : st.prefixes) {
        if (strncmp(name, p.c_str(), p.size()) == 0) {
            return true;
        }
    }
    return false;
}

// Copies a (possibly strided) F32/F16 tensor into a dense buffer, ne[0] fastest.
static std::vector<uint8_t> gather(const ggml_tensor * t) {
    const size_t elem = ggml_type_size(t->type);
    std::vector<uint8_t> out(ggml_nelements(t) * elem);
    size_t at = 0;
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++) {
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++) {
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++) {
                for (int64_t i0 = 0; i0 < t->ne[0]; i0++) {
                    const uint8_t * src = (const uint8_t *) t->data + i0 * t->nb[0] + i1 * t->nb[1] +
                                          i2 * t->nb[2] + i3 * t->nb[3];
                    memcpy(out.data() + at, src, elem);
                    at += elem;
                }
            }
        }
    }
    return out;
}

static bool on_node(ggml_tensor * t, bool ask, void * user) {
    DumpState & st = *(DumpState *) user;
    const bool take = wanted(st, t->name) && (t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16);
    if (ask) {
        return take;
    }
    if (!take) {
        return true;
    }
    const char * ext = t->type == GGML_TYPE_F32 ? "f32" : "f16";
    char file[512];
    snprintf(file, sizeof file, "p%d_%03d_%s_%s.%s", st.pos, st.node++, t->name, ggml_op_desc(t), ext);
    const std::vector<uint8_t> data = gather(t);
    FILE * f = fopen((st.dir + "/" + file).c_str(), "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s/%s\n", st.dir.c_str(), file);
        exit(1);
    }
    fwrite(data.data(), 1, data.size(), f);
    fclose(f);
    fprintf(st.index, "%s\t%s\t%s\t%s\t%lld\t%lld\t%lld\t%lld\n", file, t->name, ggml_op_desc(t),
            ext, (long long) t->ne[0], (long long) t->ne[1], (long long) t->ne[2], (long long) t->ne[3]);
    return true;
}

int main(int argc, char ** argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s MODEL.gguf TEXT.txt N_THREADS OUT_DIR PREFIX...\n", argv[0]);
        return 2;
    }
    std::ifstream in(argv[2], std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    const std::string prompt = text.str();
    const int n_threads = atoi(argv[3]);

    DumpState st;
    st.dir = argv[4];
    for (int i = 5; i < argc; i++) {
        st.prefixes.push_back(argv[i]);
    }
    st.index = fopen((st.dir + "/index.tsv").c_str(), "w");
    if (!st.index) {
        fprintf(stderr, "cannot write %s/index.tsv (does the directory exist?)\n", st.dir.c_str());
        return 1;
    }

    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> ids(prompt.size() + 16);
    const int n = llama_tokenize(vocab, prompt.data(), (int) prompt.size(), ids.data(), (int) ids.size(), true, true);
    if (n <= 0) {
        fprintf(stderr, "cannot tokenize the text\n");
        return 1;
    }
    ids.resize(n);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;  // llama-completion's defaults, as scripts/llama_greedy_logits.cpp
    cp.n_batch = 2048;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.cb_eval = on_node;
    cp.cb_eval_user_data = &st;
    llama_context * ctx = llama_init_from_model(model, cp);
    llama_batch batch = llama_batch_init(1, 0, 1);
    for (int i = 0; i < n; i++) {
        st.pos = i;
        st.node = 0;
        batch.n_tokens = 1;
        batch.token[0] = ids[i];
        batch.pos[0] = i;
        batch.n_seq_id[0] = 1;
        batch.seq_id[0][0] = 0;
        batch.logits[0] = 1;
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed at position %d\n", i);
            return 1;
        }
    }
    fclose(st.index);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
