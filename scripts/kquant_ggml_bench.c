// Throughput of llama.cpp's own K-quant dot products on this CPU, in cache: the first 256
// rows of a 9216 x 3072 matrix (~1 MB, L2-resident), best of 200 passes, GB/s of weight
// bytes and ns per 256-weight block, one thread. Our side: runtime/examples/matvec_bench.rs
// (`--hot` for in-cache figures).
//
// Per type: ggml's vec_dot called row by row (its AVX2 kernels), and for Q4_K / Q2_K also
// a one-node ggml_mul_mat graph with the weights in the CPU_REPACK buffer, the path
// llama.cpp takes for them (that figure includes quantizing x and graph dispatch).
//
// Build and run (one shell line):
//   L=~/.cache/mcc/llama.cpp; gcc -O2 -I$L/ggml/include scripts/kquant_ggml_bench.c
//     -L$L/build/bin -lggml-cpu -lggml-base -Wl,-rpath,$L/build/bin -o /tmp/kq_ggml_bench
//     && /tmp/kq_ggml_bench

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "ggml.h"

void quantize_row_q8_K(const float * x, void * y, int64_t k);
typedef void (*vec_dot_t)(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void ggml_vec_dot_q2_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q3_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q4_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q5_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);
void ggml_vec_dot_q6_K_q8_K(int, float *, size_t, const void *, size_t, const void *, size_t, int);

enum { ROWS = 256, COLS = 3072, QK = 256, PASSES = 200 };

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next_u64(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

struct kind {
    const char * name;
    enum ggml_type type;
    int block_bytes;
    int f16_at[2];
    vec_dot_t dot;
    int repack;
};

static ggml_backend_buffer_type_t repack_buft(ggml_backend_t be) {
    ggml_backend_dev_t dev = ggml_backend_get_device(be);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t get =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    for (ggml_backend_buffer_type_t * b = get ? get(dev) : NULL; b && *b; b++) {
        if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    }
    return NULL;
}

// best time of PASSES graph computes of y = W x with W in `buft`
static double graph_best(ggml_backend_t be, ggml_backend_buffer_type_t buft, enum ggml_type type, const void * w,
                         const float * x) {
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
    double best = 1e9;
    for (int p = 0; p < PASSES; p++) {
        double t = now();
        ggml_backend_graph_compute(be, g);
        t = now() - t;
        if (t < best) best = t;
    }
    ggml_backend_buffer_free(gbuf);
    ggml_free(gctx);
    ggml_backend_buffer_free(wbuf);
    ggml_free(wctx);
    return best;
}

int main(void) {
    const struct kind kinds[] = {
        {"Q4_K", GGML_TYPE_Q4_K, 144, {0, 2}, ggml_vec_dot_q4_K_q8_K, 1},
        {"Q6_K", GGML_TYPE_Q6_K, 210, {208, -1}, ggml_vec_dot_q6_K_q8_K, 0},
        {"Q5_K", GGML_TYPE_Q5_K, 176, {0, 2}, ggml_vec_dot_q5_K_q8_K, 0},
        {"Q3_K", GGML_TYPE_Q3_K, 110, {108, -1}, ggml_vec_dot_q3_K_q8_K, 0},
        {"Q2_K", GGML_TYPE_Q2_K, 84, {80, 82}, ggml_vec_dot_q2_K_q8_K, 1},
    };
    ggml_cpu_init();
    ggml_backend_t be = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(be, 1);
    ggml_backend_buffer_type_t repack = repack_buft(be);
    static float x[COLS], y[ROWS];
    static uint8_t xq[COLS / QK * 292];
    for (int i = 0; i < COLS; i++) x[i] = (float)((int)(next_u64() >> 54) - 512) / 300.0f;
    quantize_row_q8_K(x, xq, COLS);

    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
        const struct kind * t = &kinds[k];
        size_t n_blocks = (size_t)ROWS * COLS / QK, row_bytes = (size_t)COLS / QK * t->block_bytes;
        size_t bytes = n_blocks * t->block_bytes;
        uint8_t * w = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)(next_u64() >> 56);
        for (size_t b = 0; b < n_blocks; b++) {
            for (int s = 0; s < 2; s++) {
                if (t->f16_at[s] < 0) continue;
                ggml_fp16_t h = ggml_fp32_to_fp16(0.001f + 0.05f * (float)(next_u64() >> 40) / 16777216.0f);
                memcpy(w + b * t->block_bytes + t->f16_at[s], &h, 2);
            }
        }
        double best = 1e9;
        for (int p = 0; p < PASSES; p++) {
            double t0 = now();
            for (int r = 0; r < ROWS; r++) t->dot(COLS, &y[r], 0, w + r * row_bytes, 0, xq, 0, 1);
            t0 = now() - t0;
            if (t0 < best) best = t0;
        }
        printf("%s ggml vec_dot: %6.2f GB/s (%5.2f ns/block)", t->name, bytes / best / 1e9, best / n_blocks * 1e9);
        double plain = graph_best(be, ggml_backend_cpu_buffer_type(), t->type, w, x);
        printf(", mul_mat %6.2f GB/s", bytes / plain / 1e9);
        if (t->repack && repack && (t->type != GGML_TYPE_Q2_K || ggml_cpu_has_avx512())) {
            double rp = graph_best(be, repack, t->type, w, x);
            printf(", mul_mat repacked %6.2f GB/s (%5.2f ns/block)", bytes / rp / 1e9, rp / n_blocks * 1e9);
        }
        printf("\n");
        free(w);
    }
    ggml_backend_free(be);
    return 0;
}
