// Golden matrix-vector products from llama.cpp's CPU backend, for the K-quant formats.
//
// For each of Q2_K..Q6_K, builds a 16 x 2048 weight matrix of random blocks (random
// quants, sane f16 scales), and for 3 activation vectors computes y = W x with a real
// ggml graph (ggml_mul_mat) on the CPU backend, one thread, twice: with the weights in a
// plain CPU buffer (ggml's vec_dot kernels) and, for the types llama.cpp repacks on x86
// (Q4_K with AVX2, Q2_K with AVX-512), in the CPU_REPACK buffer it uses by default.
// Writes runtime/src/quant/golden_matvec/<TYPE>.bin:
//
//     u32 rows, u32 cols, u32 n_acts, u32 repacked (1 if the repack results are real)
//     rows * cols / 256 weight blocks
//     n_acts times: f32 x[cols], f32 y_plain[rows], f32 y_repack[rows] (= y_plain if not
//                   repacked)
//
// and Q8_K.bin: u32 n, f32 x[n], then quantize_row_q8_K(x) as n / 256 raw blocks.
// All little-endian. The results pin the exact f32 values llama.cpp computes on this CPU.
//
// Build and run (from the repository root, one shell line):
//   L=~/.cache/mcc/llama.cpp; gcc -O2 -I$L/ggml/include scripts/kquant_matvec_golden.c
//     -L$L/build/bin -lggml-cpu -lggml-base -Wl,-rpath,$L/build/bin -o /tmp/kq_golden
//     && /tmp/kq_golden runtime/src/quant/golden_matvec

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
void quantize_row_q8_K(const float * x, void * y, int64_t k);

enum { ROWS = 16, COLS = 2048, N_ACTS = 3, QK = 256 };

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static double unit(void) { return (double)(next_u64() >> 11) / 9007199254740992.0; }

// roughly N(0, 1.7) with an outlier every 97 values, as residual activations look
static void activations(float * x, int n) {
    for (int i = 0; i < n; i++) {
        double u = unit() + unit() + unit() + unit() - 2.0;
        x[i] = (float)(i % 97 == 0 ? 8.0 * u : 1.7 * u);
    }
}

struct kind {
    const char * name;
    enum ggml_type type;
    int block_bytes;
    int f16_at[2];  // byte offsets of the f16 scales, -1 if unused
    int repack;     // llama.cpp repacks this type on this CPU
};

static void put(FILE * f, const void * p, size_t n) {
    if (fwrite(p, 1, n, f) != n) {
        perror("write");
        exit(1);
    }
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

// y = W x through a one-node graph, with W's data in a buffer of type `buft`
static void matvec(ggml_backend_t be, ggml_backend_buffer_type_t buft, enum ggml_type type, const void * w,
                   const float * x, float * y) {
    struct ggml_init_params wp = {ggml_tensor_overhead() * 2, NULL, true};
    struct ggml_context * wctx = ggml_init(wp);
    struct ggml_tensor * W = ggml_new_tensor_2d(wctx, type, COLS, ROWS);
    ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, buft);
    ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    ggml_backend_tensor_set(W, w, 0, ggml_nbytes(W));

    struct ggml_init_params gp = {ggml_tensor_overhead() * 8 + ggml_graph_overhead(), NULL, true};
    struct ggml_context * gctx = ggml_init(gp);
    struct ggml_tensor * X = ggml_new_tensor_1d(gctx, GGML_TYPE_F32, COLS);
    struct ggml_tensor * Y = ggml_mul_mat(gctx, W, X);
    struct ggml_cgraph * g = ggml_new_graph(gctx);
    ggml_build_forward_expand(g, Y);
    ggml_backend_buffer_t gbuf = ggml_backend_alloc_ctx_tensors_from_buft(gctx, ggml_backend_cpu_buffer_type());
    ggml_backend_tensor_set(X, x, 0, sizeof(float) * COLS);
    if (ggml_backend_graph_compute(be, g) != GGML_STATUS_SUCCESS) {
        fprintf(stderr, "graph compute failed\n");
        exit(1);
    }
    ggml_backend_tensor_get(Y, y, 0, sizeof(float) * ROWS);
    ggml_backend_buffer_free(gbuf);
    ggml_free(gctx);
    ggml_backend_buffer_free(wbuf);
    ggml_free(wctx);
}

int main(int argc, char ** argv) {
    const char * dir = argc > 1 ? argv[1] : "runtime/src/quant/golden_matvec";
    const struct kind kinds[] = {
        {"Q2_K", GGML_TYPE_Q2_K, 84, {80, 82}, 1},
        {"Q3_K", GGML_TYPE_Q3_K, 110, {108, -1}, 0},
        {"Q4_K", GGML_TYPE_Q4_K, 144, {0, 2}, 1},
        {"Q5_K", GGML_TYPE_Q5_K, 176, {0, 2}, 0},
        {"Q6_K", GGML_TYPE_Q6_K, 210, {208, -1}, 0},
    };
    ggml_cpu_init();
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 1);
    ggml_backend_buffer_type_t repack = repack_buft(be);
    char path[4096];

    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        const struct kind * t = &kinds[k];
        int repacked = t->repack && (t->type != GGML_TYPE_Q2_K || ggml_cpu_has_avx512());
        size_t n_blocks = (size_t)ROWS * COLS / QK;
        uint8_t * w = malloc(n_blocks * t->block_bytes);
        for (size_t i = 0; i < n_blocks * t->block_bytes; i++) {
            w[i] = (uint8_t)(next_u64() >> 56);
        }
        for (size_t b = 0; b < n_blocks; b++) {
            for (int s = 0; s < 2; s++) {
                if (t->f16_at[s] < 0) continue;
                double mag = 1e-3 + 0.099 * unit();
                ggml_fp16_t h = ggml_fp32_to_fp16((float)(next_u64() & 1 ? mag : -mag));
                memcpy(w + b * t->block_bytes + t->f16_at[s], &h, 2);
            }
        }
        snprintf(path, sizeof(path), "%s/%s.bin", dir, t->name);
        FILE * f = fopen(path, "wb");
        if (!f) {
            perror(path);
            return 1;
        }
        uint32_t header[4] = {ROWS, COLS, N_ACTS, (uint32_t)repacked};
        put(f, header, sizeof(header));
        put(f, w, n_blocks * t->block_bytes);
        for (int a = 0; a < N_ACTS; a++) {
            float x[COLS], y_plain[ROWS], y_repack[ROWS];
            activations(x, COLS);
            matvec(be, ggml_backend_cpu_buffer_type(), t->type, w, x, y_plain);
            if (repacked) {
                matvec(be, repack, t->type, w, x, y_repack);
            } else {
                memcpy(y_repack, y_plain, sizeof(y_plain));
            }
            put(f, x, sizeof(x));
            put(f, y_plain, sizeof(y_plain));
            put(f, y_repack, sizeof(y_repack));
        }
        fclose(f);
        free(w);
        printf("%s: %d x %d, %d activations%s\n", t->name, ROWS, COLS, N_ACTS, repacked ? ", repacked too" : "");
    }

    // Q8_K quantization of activations with ties, zeros and both signs of the maximum
    enum { NQ = 8 * QK };
    float x[NQ];
    activations(x, NQ);
    for (int i = 0; i < QK; i++) x[i] = 0.0f;                                // all-zero block
    x[QK + 5] = -9.5f, x[QK + 200] = 9.5f;                                    // equal magnitudes
    for (int i = 2 * QK; i < 3 * QK; i++) x[i] = (float)(i % 7) - 3.0f + 0.5f;  // halfway values
    uint8_t q[NQ / QK * 292];
    quantize_row_q8_K(x, q, NQ);
    snprintf(path, sizeof(path), "%s/Q8_K.bin", dir);
    FILE * f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 1;
    }
    uint32_t n = NQ;
    put(f, &n, 4);
    put(f, x, sizeof(x));
    put(f, q, sizeof(q));
    fclose(f);
    printf("Q8_K: %d values\n", NQ);
    ggml_backend_free(be);
    return 0;
}
