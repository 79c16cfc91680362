// Throughput of llama.cpp's own i-quant dot products on this CPU, in cache: one 9216 x
// 3072 matrix of random blocks (L3-resident), best of 40 single-thread matvec passes, GB/s
// of weight bytes, ggml's vec_dot called row by row (its AVX2 kernels on this build). Our
// side: `runtime/examples/matvec_bench.rs --hot --shapes 3072x9216 --threads 1`.
//
// Build and run (one shell line):
//   L=~/.cache/mcc/llama.cpp/build/bin; gcc -O2 scripts/iquant_ggml_bench.c -L$L
//     -lggml-cpu -lggml-base -Wl,-rpath,$L -o /tmp/iq_ggml_bench && /tmp/iq_ggml_bench

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*vec_dot_t)(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);
void ggml_cpu_init(void);
void quantize_row_q8_K(const float * x, void * y, int64_t k);
void quantize_row_q8_0(const float * x, void * y, int64_t k);
#define DOT(name) void name(int, float *, size_t, const void *, size_t, const void *, size_t, int);
DOT(ggml_vec_dot_iq4_xs_q8_K)
DOT(ggml_vec_dot_iq4_nl_q8_0)
DOT(ggml_vec_dot_iq3_s_q8_K)
DOT(ggml_vec_dot_iq3_xxs_q8_K)
DOT(ggml_vec_dot_iq2_s_q8_K)
DOT(ggml_vec_dot_iq2_xs_q8_K)
DOT(ggml_vec_dot_iq2_xxs_q8_K)
DOT(ggml_vec_dot_iq1_m_q8_K)
DOT(ggml_vec_dot_iq1_s_q8_K)

enum { ROWS = 9216, COLS = 3072 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

// scale_at: byte offset of the f16 block scale, or -1 for IQ1_M (top nibbles of the four
// u16 scale words at byte 48). The scale is 0.03125 (0x2800), a sane magnitude.
static void bench(const char * name, vec_dot_t dot, int block_bytes, int block_elems, int scale_at, int q8_0) {
    const size_t blocks_per_row = COLS / block_elems;
    const size_t bytes = ROWS * blocks_per_row * block_bytes;
    uint8_t * w = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t) next();
    for (size_t b = 0; b < ROWS * blocks_per_row; b++) {
        uint8_t * block = w + b * block_bytes;
        if (scale_at >= 0) {
            block[scale_at] = 0x00;
            block[scale_at + 1] = 0x28;
        } else {
            for (int k = 0; k < 4; k++) block[48 + 2 * k + 1] &= 0x0f;
            block[48 + 2 * 3 + 1] |= 0x20; // bits 12..16 of 0x2800 are 0x2, in word 3
            block[48 + 2 * 2 + 1] |= 0x80; // bits 8..12 are 0x8, in word 2
        }
    }
    float x[COLS];
    for (int i = 0; i < COLS; i++) x[i] = ((i * 7919) % 1000) / 500.0f - 1.0f;
    static uint8_t act[COLS / 32 * 34 + COLS / 256 * 292];
    if (q8_0) quantize_row_q8_0(x, act, COLS); else quantize_row_q8_K(x, act, COLS);
    static float out[ROWS];
    double best = 1e30;
    for (int pass = 0; pass < 41; pass++) {
        const double t = now();
        for (int r = 0; r < ROWS; r++) dot(COLS, &out[r], 0, w + r * blocks_per_row * block_bytes, 0, act, 0, 1);
        const double secs = now() - t;
        if (pass > 0 && secs < best) best = secs;
    }
    printf("ggml %-8s hot 1t %6.2f GB/s (%6.1f ns/row)  [out[7] = %g]\n", name, bytes / best / 1e9, best / ROWS * 1e9, out[7]);
    free(w);
}

int main(void) {
    ggml_cpu_init(); // fills the f16 -> f32 table the kernels read
    bench("IQ4_XS", ggml_vec_dot_iq4_xs_q8_K, 136, 256, 0, 0);
    bench("IQ4_NL", ggml_vec_dot_iq4_nl_q8_0, 18, 32, 0, 1);
    bench("IQ3_S", ggml_vec_dot_iq3_s_q8_K, 110, 256, 0, 0);
    bench("IQ3_XXS", ggml_vec_dot_iq3_xxs_q8_K, 98, 256, 0, 0);
    bench("IQ2_S", ggml_vec_dot_iq2_s_q8_K, 82, 256, 0, 0);
    bench("IQ2_XS", ggml_vec_dot_iq2_xs_q8_K, 74, 256, 0, 0);
    bench("IQ2_XXS", ggml_vec_dot_iq2_xxs_q8_K, 66, 256, 0, 0);
    bench("IQ1_M", ggml_vec_dot_iq1_m_q8_K, 56, 256, -1, 0);
    bench("IQ1_S", ggml_vec_dot_iq1_s_q8_K, 50, 256, 0, 0);
    return 0;
}
