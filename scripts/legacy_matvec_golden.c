// Golden llama.cpp results for the legacy and float formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// F16, BF16), for IQ4_NL (32-weight blocks dotted with Q8_0, repacked like Q4_0) and for
// the Q8_0 / Q8_1 activation quantizers, from llama.cpp's CPU backend on the machine that
// runs it.
//
// Weights: a 16 x 1024 matrix per format, random quants with sane f16 scales (F16/BF16:
// random normal values). Three activation vectors; for each, y = W x through a one-node
// ggml graph (ggml_mul_mat, one thread), once with W in a plain CPU buffer (ggml's
// vec_dot kernels) and, for Q4_0 and IQ4_NL (which llama.cpp repacks on AVX2 CPUs), once
// in the CPU_REPACK buffer that llama.cpp uses by default. Also a 5-token product (Y = W X)
// on the default path of each format, to pin the prefill kernels too (the repacked
// kernels take 4 tokens at a time, and the 5th on its own).
//
// Writes into the given directory (default runtime/src/quant/golden_matvec):
//   <TYPE>.bin   u32 rows, u32 cols, u32 n_acts, u32 repacked
//                rows * cols weight values as blocks (raw bytes)
//                n_acts times: f32 x[cols], f32 y_plain[rows], f32 y_repack[rows]
//                (y_repack = y_plain when the type is not repacked)
//                then u32 n_tok, f32 X[n_tok][cols], f32 Y[n_tok][rows] (default path)
//   Q8_0_act.bin, Q8_1_act.bin
//                u32 n, f32 x[n], quantize_row_q8_{0,1}(x) as n / 32 raw blocks
// All little-endian. Layout of the first part as kquant_matvec_golden.c's files.
//
// Build and run (from the repository root, one shell line):
//   L=~/.cache/mcc/llama.cpp; gcc -O2 -I$L/ggml/include scripts/legacy_matvec_golden.c
//     -L$L/build/bin -lggml-cpu -lggml-base -Wl,-rpath,$L/build/bin -o /tmp/legacy_golden
//     && /tmp/legacy_golden runtime/src/quant/golden_matvec

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

// exported by libggml-cpu, not declared in its public header
void quantize_row_q8_0(const float * x, void * y, int64_t k);
void quantize_row_q8_1(const float * x, void * y, int64_t k);

enum { ROWS = 16, COLS = 1024, N_ACTS = 3, N_TOK = 5 };

static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}
static double uniform(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }
static double gauss(void) { return uniform() + uniform() + uniform() + uniform() - 2.0; }

// activations: mostly N(0, ~1), an outlier every 97 values
static void fill_x(float * x, int n) {
    for (int i = 0; i < n; i++) {
        double u = gauss();
        x[i] = (float)(i % 97 == 0 ? 9.0 * u : 1.6 * u);
    }
}

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

static ggml_backend_buffer_type_t find_repack(ggml_backend_t be) {
    ggml_backend_dev_t dev = ggml_backend_get_device(be);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t extra =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * b = extra ? extra(dev) : NULL; b && *b; b++) {
        if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    }
    fprintf(stderr, "CPU_REPACK buffer type not found\n");
    exit(1);
}

// Y (n_tok x ROWS) = W X through one mul_mat node; W lives in a buffer of type `buft`
static void mul_mat(ggml_backend_t be, ggml_backend_buffer_type_t buft, enum ggml_type type, const void * w,
                    const float * x, int n_tok, float * y) {
    struct ggml_init_params wp = {ggml_tensor_overhead() * 2, NULL, true};
    struct ggml_context * wctx = ggml_init(wp);
    struct ggml_tensor * W = ggml_new_tensor_2d(wctx, type, COLS, ROWS);
    ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
    ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    ggml_backend_tensor_set(W, w, 0, ggml_nbytes(W));

    struct ggml_init_params gp = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), NULL, true};
    struct ggml_context * gctx = ggml_init(gp);
    struct ggml_tensor * X = ggml_new_tensor_2d(gctx, GGML_TYPE_F32, COLS, n_tok);
    struct ggml_tensor * Y = ggml_mul_mat(gctx, W, X);
    struct ggml_cgraph * g = ggml_new_graph(gctx);
    ggml_build_forward_expand(g, Y);
    ggml_backend_buffer_t gbuf = ggml_backend_alloc_ctx_tensors_from_buft(gctx, ggml_backend_cpu_buffer_type());
    ggml_backend_tensor_set(X, x, 0, sizeof(float) * COLS * n_tok);
    if (ggml_backend_graph_compute(be, g) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        exit(1);
    }
    ggml_backend_tensor_get(Y, y, 0, sizeof(float) * ROWS * n_tok);
    ggml_backend_buffer_free(gbuf);
    ggml_free(gctx);
    ggml_backend_buffer_free(wbuf);
    ggml_free(wctx);
}

struct format {
    const char * name;
    enum ggml_type type;
    int block_elems, block_bytes;
    int f16_at[2];  // byte offsets of the f16 scale fields in a block, -1 if none
    int repack;     // llama.cpp repacks this type on AVX2 CPUs
};

int main(int argc, char ** argv) {
    const char * dir = argc > 1 ? argv[1] : "runtime/src/quant/golden_matvec";
    const struct format formats[] = {
        {"Q4_0", GGML_TYPE_Q4_0, 32, 18, {0, -1}, 1},
        {"Q4_1", GGML_TYPE_Q4_1, 32, 20, {0, 2}, 0},
        {"Q5_0", GGML_TYPE_Q5_0, 32, 22, {0, -1}, 0},
        {"Q5_1", GGML_TYPE_Q5_1, 32, 24, {0, 2}, 0},
        {"Q8_0", GGML_TYPE_Q8_0, 32, 34, {0, -1}, 0},
        {"F16", GGML_TYPE_F16, 1, 2, {-1, -1}, 0},
        {"BF16", GGML_TYPE_BF16, 1, 2, {-1, -1}, 0},
        {"IQ4_NL", GGML_TYPE_IQ4_NL, 32, 18, {0, -1}, 1},
    };
    ggml_cpu_init();
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 1);
    ggml_backend_buffer_type_t repack = find_repack(be);
    ggml_backend_buffer_type_t plain = ggml_backend_cpu_buffer_type();

    for (size_t k = 0; k < sizeof(formats) / sizeof(formats[0]); k++) {
        const struct format * t = &formats[k];
        int repacked = t->repack && ggml_cpu_has_avx2();
        size_t n_blocks = (size_t)ROWS * COLS / t->block_elems;
        uint8_t * w = malloc(n_blocks * t->block_bytes);
        for (size_t b = 0; b < n_blocks; b++) {
            uint8_t * block = w + b * t->block_bytes;
            if (t->type == GGML_TYPE_F16) {
                ggml_fp16_t h = ggml_fp32_to_fp16((float)gauss());
                memcpy(block, &h, 2);
                continue;
            }
            if (t->type == GGML_TYPE_BF16) {
                ggml_bf16_t h = ggml_fp32_to_bf16((float)gauss());
                memcpy(block, &h, 2);
                continue;
            }
            for (int i = 0; i < t->block_bytes; i++) block[i] = (uint8_t)(rnd() >> 56);
            for (int s = 0; s < 2; s++) {
                if (t->f16_at[s] < 0) continue;
                double mag = 1e-3 + 0.099 * uniform();
                ggml_fp16_t h = ggml_fp32_to_fp16((float)(rnd() & 1 ? mag : -mag));
                memcpy(block + t->f16_at[s], &h, 2);
            }
        }
        char name[64];
        snprintf(name, sizeof(name), "%s.bin", t->name);
        FILE * f = open_out(dir, name);
        uint32_t header[4] = {ROWS, COLS, N_ACTS, (uint32_t)repacked};
        put(f, header, sizeof(header));
        put(f, w, n_blocks * t->block_bytes);
        for (int a = 0; a < N_ACTS; a++) {
            float x[COLS], y_plain[ROWS], y_repack[ROWS];
            fill_x(x, COLS);
            mul_mat(be, plain, t->type, w, x, 1, y_plain);
            if (repacked) {
                mul_mat(be, repack, t->type, w, x, 1, y_repack);
            } else {
                memcpy(y_repack, y_plain, sizeof(y_plain));
            }
            put(f, x, sizeof(x));
            put(f, y_plain, sizeof(y_plain));
            put(f, y_repack, sizeof(y_repack));
        }
        static float X[N_TOK * COLS], Y[N_TOK * ROWS];
        fill_x(X, N_TOK * COLS);
        mul_mat(be, repacked ? repack : plain, t->type, w, X, N_TOK, Y);
        uint32_t n_tok = N_TOK;
        put(f, &n_tok, 4);
        put(f, X, sizeof(X));
        put(f, Y, sizeof(Y));
        fclose(f);
        free(w);
        printf("%s: %d x %d, %d activations + %d tokens%s\n", t->name, ROWS, COLS, N_ACTS, N_TOK,
               repacked ? ", repacked too" : "");
    }

    // Activation quantizers: random blocks, then an all-zero block, a lone outlier, exact
    // halves (amax 127 makes the multiplier 1), tiny values (subnormal f16 scale).
    enum { NQ = 64 * 32 };
    static float x[NQ];
    fill_x(x, NQ);
    for (int i = 0; i < 32; i++) x[i] = 0.0f;
    for (int i = 32; i < 64; i++) x[i] = 1e-3f;
    x[40] = -1000.0f;
    for (int i = 64; i < 96; i++) x[i] = (float)(i - 64) - 15.5f;
    x[95] = 127.0f;
    for (int i = 96; i < 128; i++) x[i] *= 1e-6f;
    uint8_t q0[NQ / 32 * 34], q1[NQ / 32 * 36];
    quantize_row_q8_0(x, q0, NQ);
    quantize_row_q8_1(x, q1, NQ);
    uint32_t n = NQ;
    FILE * f = open_out(dir, "Q8_0_act.bin");
    put(f, &n, 4);
    put(f, x, sizeof(x));
    put(f, q0, sizeof(q0));
    fclose(f);
    f = open_out(dir, "Q8_1_act.bin");
    put(f, &n, 4);
    put(f, x, sizeof(x));
    put(f, q1, sizeof(q1));
    fclose(f);
    printf("Q8_0 / Q8_1 activations: %d values\n", NQ);
    ggml_backend_free(be);
    return 0;
}
