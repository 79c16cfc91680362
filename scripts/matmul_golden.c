// Golden batched matmuls from llama.cpp's CPU backend: Y = W X for batches of 1 to 19
// tokens, for every quantized weight type, with W where llama.cpp puts a model's weights
// (the CPU_REPACK buffer for the types it repacks on this CPU, a plain buffer otherwise).
//
// llama.cpp's result for one (row, token) depends on how many tokens the batch has:
// repacked types (Q4_0, Q4_K, IQ4_NL; Q2_K with AVX-512) take groups of 4 tokens through
// a GEMM kernel and the rest through a GEMV kernel; the K-quant and IQ formats take
// batches of 8 or more through ggml-cpu's tiled matmul (ggml-cpu/tiled); Q8_0 and Q5_0
// go through llamafile's sgemm. Each kernel rounds its f32 sums differently, and these
// goldens pin every one of them for runtime/src/matmul.rs's tests.
//
// Writes into the given directory (default runtime/src/quant/golden_matmul):
//   x.bin        u32 max_tokens, u32 cols, f32 X[max_tokens][cols] (shared by all types)
//   <TYPE>.bin   u32 rows, u32 cols, u32 n_cases, u32 repacked
//                rows * cols weights as raw blocks
//                n_cases times: u32 n, f32 Y[n][rows] = W times the first n rows of X
// All little-endian.
//
// Build and run (from the repository root, one shell line), once per kernel tier: against
// llama.cpp's AVX-512 build (build/, on an AVX-512 machine) and its AVX2 build
// (build-avx2/, LLAMA_REF_TIER=avx2 ../shared/scripts/llama-ref.sh):
//   L=~/.cache/mcc/llama.cpp; B=$L/build-avx2/bin; gcc -O2 -I$L/ggml/include
//     scripts/matmul_golden.c -L$B -lggml-cpu -lggml-base -lggml -Wl,-rpath,$B
//     -o /tmp/matmul_golden && /tmp/matmul_golden /tmp/golden-avx2
// A file that is the same for both tiers goes to runtime/src/quant/golden_matmul/, one that
// differs to golden_matmul/avx512/ and golden_matmul/avx2/ (today only Q2_K.bin, which
// llama.cpp repacks with AVX-512 only).

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

enum { ROWS = 24, COLS = 512, MAX_TOK = 19 };
static const int CASES[] = {1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 19};
enum { N_CASES = sizeof(CASES) / sizeof(CASES[0]) };

static uint64_t state = 0x7C15F4914F6CDD1Dull;
static uint64_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}
static double uniform(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }

static void put(FILE * f, const void * p, size_t n) {
    if (fwrite(p, 1, n, f) != n) {
        perror("write");
        exit(1);
    }
}

static FILE * open_out(const char * dir, const char * name) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    return f;
}

// a random f16 of magnitude 1e-3 .. 0.1 and random sign
static ggml_fp16_t scale(void) {
    double mag = 1e-3 + 0.099 * uniform();
    return ggml_fp32_to_fp16((float)(rnd() & 1 ? mag : -mag));
}

struct kind {
    const char * name;
    enum ggml_type type;
    int f16_at[2];  // byte offsets of the f16 scales in a block, -1 if unused
    int repack;     // 1: llama.cpp repacks it on AVX2; 2: only with AVX-512
};

// IQ1_M has no f16 field: its scale is spread over the top nibbles of 4 u16 words
static void iq1m_scale(uint8_t * block) {
    ggml_fp16_t h = scale();
    uint16_t w[4];
    memcpy(w, block + 48, 8);
    for (int i = 0; i < 4; i++) {
        w[i] = (uint16_t)((w[i] & 0x0fff) | (((h >> (4 * i)) & 0xf) << 12));
    }
    memcpy(block + 48, w, 8);
}

// Y[n][ROWS] = W X[n] through a one-node graph, W's data in a buffer of type `buft`
static void matmul(ggml_backend_t be, ggml_backend_buffer_type_t buft, enum ggml_type type, const void * w,
                   const float * x, int n, float * y) {
    struct ggml_init_params wp = {ggml_tensor_overhead() * 2, NULL, true};
    struct ggml_context * wctx = ggml_init(wp);
    struct ggml_tensor * W = ggml_new_tensor_2d(wctx, type, COLS, ROWS);
    ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
    ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    ggml_backend_tensor_set(W, w, 0, ggml_nbytes(W));

    struct ggml_init_params gp = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), NULL, true};
    struct ggml_context * gctx = ggml_init(gp);
    struct ggml_tensor * X = ggml_new_tensor_2d(gctx, GGML_TYPE_F32, COLS, n);
    struct ggml_tensor * Y = ggml_mul_mat(gctx, W, X);
    struct ggml_cgraph * g = ggml_new_graph(gctx);
    ggml_build_forward_expand(g, Y);
    ggml_backend_buffer_t gbuf = ggml_backend_alloc_ctx_tensors_from_buft(gctx, ggml_backend_cpu_buffer_type());
    ggml_backend_tensor_set(X, x, 0, sizeof(float) * COLS * n);
    if (ggml_backend_graph_compute(be, g) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        exit(1);
    }
    ggml_backend_tensor_get(Y, y, 0, sizeof(float) * ROWS * n);
    ggml_backend_buffer_free(gbuf);
    ggml_free(gctx);
    ggml_backend_buffer_free(wbuf);
    ggml_free(wctx);
}

static ggml_backend_buffer_type_t repack_buft(ggml_backend_t be) {
    ggml_backend_dev_t dev = ggml_backend_get_device(be);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t get =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * b = get ? get(dev) : NULL; b && *b; b++) {
        if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) {
            return *b;
        }
    }
    fprintf(stderr, "no CPU_REPACK buffer type\n");
    exit(1);
}

int main(int argc, char ** argv) {
    const char * dir = argc > 1 ? argv[1] : "runtime/src/quant/golden_matmul";
    const struct kind kinds[] = {
        {"Q4_0", GGML_TYPE_Q4_0, {0, -1}, 1},       {"Q4_1", GGML_TYPE_Q4_1, {0, 2}, 0},
        {"Q5_0", GGML_TYPE_Q5_0, {0, -1}, 0},       {"Q5_1", GGML_TYPE_Q5_1, {0, 2}, 0},
        {"Q8_0", GGML_TYPE_Q8_0, {0, -1}, 0},       {"Q2_K", GGML_TYPE_Q2_K, {80, 82}, 2},
        {"Q3_K", GGML_TYPE_Q3_K, {108, -1}, 0},     {"Q4_K", GGML_TYPE_Q4_K, {0, 2}, 1},
        {"Q5_K", GGML_TYPE_Q5_K, {0, 2}, 0},        {"Q6_K", GGML_TYPE_Q6_K, {208, -1}, 0},
        {"IQ1_S", GGML_TYPE_IQ1_S, {0, -1}, 0},     {"IQ1_M", GGML_TYPE_IQ1_M, {-1, -1}, 0},
        {"IQ2_XXS", GGML_TYPE_IQ2_XXS, {0, -1}, 0}, {"IQ2_XS", GGML_TYPE_IQ2_XS, {0, -1}, 0},
        {"IQ2_S", GGML_TYPE_IQ2_S, {0, -1}, 0},     {"IQ3_XXS", GGML_TYPE_IQ3_XXS, {0, -1}, 0},
        {"IQ3_S", GGML_TYPE_IQ3_S, {0, -1}, 0},     {"IQ4_NL", GGML_TYPE_IQ4_NL, {0, -1}, 1},
        {"IQ4_XS", GGML_TYPE_IQ4_XS, {0, -1}, 0},
    };
    ggml_cpu_init();
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 1);
    ggml_backend_buffer_type_t repack = repack_buft(be);

    // activations: mostly N(0, ~1.6), an outlier every 97 values, one token 50x larger
    static float x[MAX_TOK * COLS];
    for (int i = 0; i < MAX_TOK * COLS; i++) {
        double u = uniform() + uniform() + uniform() + uniform() - 2.0;
        x[i] = (float)(i % 97 == 0 ? 9.0 * u : 1.6 * u) * (i / COLS == 5 ? 50.0f : 1.0f);
    }
    FILE * fx = open_out(dir, "x.bin");
    uint32_t xh[2] = {MAX_TOK, COLS};
    put(fx, xh, sizeof(xh));
    put(fx, x, sizeof(x));
    fclose(fx);

    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        const struct kind * t = &kinds[k];
        const size_t block_bytes = ggml_type_size(t->type);
        const size_t n_blocks = (size_t)ROWS * COLS / ggml_blck_size(t->type);
        uint8_t * w = malloc(n_blocks * block_bytes);
        for (size_t i = 0; i < n_blocks * block_bytes; i++) {
            w[i] = (uint8_t)(rnd() >> 56);
        }
        for (size_t b = 0; b < n_blocks; b++) {
            uint8_t * block = w + b * block_bytes;
            if (t->type == GGML_TYPE_IQ1_M) {
                iq1m_scale(block);
            }
            for (int s = 0; s < 2; s++) {
                if (t->f16_at[s] >= 0) {
                    ggml_fp16_t h = scale();
                    memcpy(block + t->f16_at[s], &h, 2);
                }
            }
        }
        const int repacked = t->repack == 1 || (t->repack == 2 && ggml_cpu_has_avx512());
        ggml_backend_buffer_type_t buft = repacked ? repack : ggml_backend_cpu_buffer_type();

        char name[64];
        snprintf(name, sizeof(name), "%s.bin", t->name);
        FILE * f = open_out(dir, name);
        uint32_t header[4] = {ROWS, COLS, N_CASES, (uint32_t)repacked};
        put(f, header, sizeof(header));
        put(f, w, n_blocks * block_bytes);
        for (int c = 0; c < N_CASES; c++) {
            static float y[MAX_TOK * ROWS];
            const uint32_t n = (uint32_t)CASES[c];
            matmul(be, buft, t->type, w, x, (int)n, y);
            put(f, &n, 4);
            put(f, y, sizeof(float) * ROWS * n);
        }
        fclose(f);
        free(w);
        printf("%s: %d x %d, %d batches%s\n", t->name, ROWS, COLS, N_CASES, repacked ? ", repacked" : "");
    }
    ggml_backend_free(be);
    return 0;
}
