// Golden model-file quantizations from llama.cpp's ggml: what llama-quantize writes for a
// row of f32 weights, with and without an importance matrix (imatrix), for Q4_0, Q4_1,
// Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL and IQ4_XS; and for IQ2_XXS, IQ2_XS and IQ2_S,
// whose quantizers may abort (see write_aborting_types).
//
// Each row goes through ggml_quantize_chunk (libggml-base), as llama-quantize calls it,
// once with imatrix NULL and once with the row's importance vector. The rows are
// deterministic pseudo-random weights of kinds chosen to reach every branch of the
// quantizers: normal weights, outliers, all-zero rows and groups, tiny values (down to
// subnormals, and scales whose reciprocal overflows), signed zeros, all-positive,
// all-negative and constant groups, bf16-valued and integer-valued weights (rounding
// ties, and halves where Q8_0 rounds), sub-blocks of very different magnitudes, scales
// beyond f16 range, inf, and NaNs with payloads. Importance vectors: log-uniform values
// with zeros scattered and in whole blocks, one all zero, one all one, one with negative
// values.
//
// Writes into the given directory (default runtime/src/quant/golden_quantize):
//   inputs.bin   u32 n_imatrix, then per importance vector: u32 width, f32 v[width]
//                u32 n_rows, then per row: u32 width, u32 imatrix id, f32 x[width]
//   <TYPE>.bin   u32 block_bytes, u32 block_elems, u32 n_rows (the rows whose width is
//                a multiple of block_elems), then per row: u32 row id,
//                width / block_elems blocks quantized without imatrix, then as many with
// All little-endian. An optional second argument adds that many random rows (widths 256
// to 4096) for a one-off wider check; the committed files have none.
//
// Build and run (from the repository root): scripts/quantize_golden.sh, or one line:
//   L=~/.cache/mcc/llama.cpp; gcc -O2 -I$L/ggml/include scripts/quantize_golden.c
//     -L$L/build/bin -lggml-base -Wl,-rpath,$L/build/bin -lm -o /tmp/quantize_golden
//     && /tmp/quantize_golden runtime/src/quant/golden_quantize

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ggml.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
// uniform in [0, 1)
static double unit(void) { return (double)(next_u64() >> 11) / 9007199254740992.0; }
static double normal(void) {
    double u = unit(), v = unit();
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}
static float to_bf16(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    b = (b + 0x7fff + ((b >> 16) & 1)) & 0xffff0000u;
    memcpy(&f, &b, 4);
    return f;
}

enum kind {
    NORMAL, OUTLIERS, UNIFORM, ZEROS, SPARSE, TINY, SIGNED_ZEROS, POSITIVE, NEGATIVE,
    CONSTANT, BF16, INTEGERS, HALVES, MAGNITUDES, HUGE_VALUES, INFS, NANS, NEG_NANS, NEG_SCALE, N_KINDS
};

static void fill_row(enum kind k, float * x, int n) {
    switch (k) {
    case NORMAL:
        for (int i = 0; i < n; i++) x[i] = (float)(0.02 * normal());
        break;
    case OUTLIERS:
        for (int i = 0; i < n; i++) x[i] = (float)((i % 37 == 5 ? 1.5 : 0.05) * normal());
        break;
    case UNIFORM:
        for (int i = 0; i < n; i++) x[i] = (float)(2.0 * unit() - 1.0);
        break;
    case ZEROS:
        for (int i = 0; i < n; i++) x[i] = 0.0f;
        break;
    case SPARSE:
        // whole zero groups of 16 and 32, groups with one value, half-filled groups
        for (int i = 0; i < n; i++) {
            int g = (i / 16) % 8;
            double v = normal();
            x[i] = g == 0 || g == 3 ? 0.0f
                 : g == 1           ? (i % 16 == 7 ? (float)v : 0.0f)
                 : g == 5           ? (i % 2 ? (float)(0.1 * v) : 0.0f)
                 : (unit() < 0.2 ? (float)(0.03 * v) : 0.0f);
        }
        break;
    case TINY: {
        // per group of 32: magnitudes from subnormal to small normal, around the
        // all-zero threshold (1e-15) and where 1 / scale overflows
        static const double mags[] = {1e-42, 1e-38, 0x1p-140, 1e-30, 1e-20, 1e-16,
                                      2e-15, 1e-12, 1e-8, 1e-5, 0x1p-126, 3e-39};
        for (int i = 0; i < n; i++) x[i] = (float)(mags[(i / 32) % 12] * normal());
        break;
    }
    case SIGNED_ZEROS:
        for (int i = 0; i < n; i++) {
            int g = (i / 32) % 4;
            x[i] = g == 0 ? -0.0f : g == 1 ? (i % 2 ? -0.0f : 0.0f)
                 : g == 2 ? (i % 8 == 3 ? (float)(0.01 * normal()) : -0.0f)
                 : (float)(0.01 * normal());
        }
        break;
    case POSITIVE:
        for (int i = 0; i < n; i++) x[i] = (float)(0.1 + unit());
        break;
    case NEGATIVE:
        for (int i = 0; i < n; i++) x[i] = (float)(-0.1 - unit());
        break;
    case CONSTANT:
        for (int i = 0; i < n; i++) {
            static const float c[] = {0.5f, -0.25f, 3.0f, -7.0f, 1e-3f, 0.0f, -1.0f, 100.0f};
            x[i] = c[(i / 32) % 8];
        }
        break;
    case BF16:
        for (int i = 0; i < n; i++) x[i] = to_bf16((float)(0.02 * normal()));
        break;
    case INTEGERS:
        // small integers times a power of two: many exact ties for the rounding steps
        for (int i = 0; i < n; i++) {
            int v = (int)(next_u64() % 33) - 16;
            x[i] = ldexpf((float)v, -(int)((i / 64) % 6));
        }
        break;
    case HALVES:
        // per group of 32: the largest magnitude 127 (times a power of two) and the rest
        // halfway between integers, so that x / d lands exactly on .5 (Q8_0's roundf)
        for (int i = 0; i < n; i++) {
            int v = (int)(next_u64() % 253) - 126;
            float h = i % 32 == 17 ? (v < 0 ? -127.0f : 127.0f) : (float)v + (v < 0 ? -0.5f : 0.5f);
            x[i] = ldexpf(h, -(int)((i / 32) % 5));
        }
        break;
    case MAGNITUDES:
        for (int i = 0; i < n; i++) {
            double m = pow(10.0, (double)((i / 16) * 7 % 11) / 2.0 - 3.0);
            x[i] = (float)(m * normal());
        }
        break;
    case HUGE_VALUES:
        for (int i = 0; i < n; i++) x[i] = (float)((i / 32 % 2 ? 1e6 : 3e4) * normal());
        break;
    case INFS:
        for (int i = 0; i < n; i++) {
            int g = (i / 32) % 8, j = i % 32;
            x[i] = (float)(0.02 * normal());
            if ((g == 1 && j == 0) || (g == 3 && j == 17)) x[i] = INFINITY;
            if ((g == 2 && j == 31) || (g == 3 && j == 5)) x[i] = -INFINITY;
            if (g == 4) x[i] = INFINITY;
        }
        break;
    case NANS:
    case NEG_NANS: {
        // NaNs with a payload (which ggml's f16 conversion drops and F16C keeps): one
        // first in its block (where the min/max searches start), one last (where ggml's
        // MAX keeps it), two in one group, a whole block. One bit pattern per row: where
        // two NaNs meet in an operation, which one comes out depends on the operand order
        // the compiler picked, which C and Rust need not share.
        const uint32_t bits = k == NANS ? 0x7fc12345u : 0xffd0f00du;
        float nan;
        memcpy(&nan, &bits, 4);
        for (int i = 0; i < n; i++) {
            int g = (i / 32) % 8, j = i % 32;
            x[i] = (float)(0.02 * normal());
            if ((g == 0 && j == 9) || (g == 1 && j == 31) || (g == 2 && j == 0) ||
                (g == 3 && (j == 3 || j == 11)) || g == 4)
                x[i] = nan;
        }
        break;
    }
    case NEG_SCALE:
        // no random numbers (rows before it stay as they were): per group of 8, one
        // small negative weight among larger positive ones; under IM_SKEWED it is the
        // one the IQ2 sign parity flips, and it outweighs the rest, so the best IQ2
        // scale comes out negative (ggml's "should never happen" branch)
        for (int i = 0; i < n; i++)
            x[i] = i % 8 == 0 ? -0.001f : 1.0f + 0.0625f * (float)(i % 7);
        break;
    default:
        abort();
    }
}

enum imat { IM_LOG, IM_ZERO, IM_ONE, IM_SIGNED, IM_SKEWED };

// log-uniform over 1e-4..1e2, with every 7th value zero, a zero block of 32 and a
// block of 16 ones; IM_SIGNED also flips the sign of half of them (llama-quantize
// only checks that an imatrix is finite, and negative weights reach the searches'
// unusual branches)
static void fill_imatrix(enum imat k, float * v, int n) {
    for (int i = 0; i < n; i++) {
        if (k == IM_ZERO) { v[i] = 0.0f; continue; }
        if (k == IM_ONE) { v[i] = 1.0f; continue; }
        // one weight in 8 important (no random numbers, for NEG_SCALE)
        if (k == IM_SKEWED) { v[i] = i % 8 == 0 ? 1.0f : 1e-6f; continue; }
        v[i] = (float)pow(10.0, 6.0 * unit() - 4.0);
        if (k == IM_SIGNED && next_u64() % 2 == 0) v[i] = -v[i];
        if (i % 7 == 3 || (i >= 64 && i < 96)) v[i] = 0.0f;
        if (i >= 160 && i < 176) v[i] = 1.0f;
    }
}

struct row { int width, imat; enum kind kind; };
struct im { int width; enum imat kind; };

static const struct im IMATS[] = {
    {512, IM_LOG}, {256, IM_LOG}, {512, IM_ZERO}, {256, IM_ONE}, {32, IM_LOG},
    {96, IM_LOG}, {1024, IM_SIGNED}, {256, IM_SKEWED},
};
static const struct row ROWS[] = {
    {512, 0, NORMAL},     {512, 0, OUTLIERS},    {512, 0, UNIFORM},    {256, 1, ZEROS},
    {512, 0, SPARSE},     {512, 0, TINY},        {256, 1, SIGNED_ZEROS},
    {256, 1, POSITIVE},   {256, 1, NEGATIVE},    {256, 1, CONSTANT},   {512, 0, BF16},
    {512, 0, INTEGERS},   {512, 0, MAGNITUDES},  {256, 1, HUGE_VALUES},
    {256, 1, INFS},       {256, 1, NANS},        {256, 1, NEG_NANS},   {512, 2, NORMAL},
    {256, 3, OUTLIERS},   {32, 4, NORMAL},       {96, 5, OUTLIERS},    {32, 4, TINY},
    {256, 1, HALVES},     {1024, 6, NORMAL},     {1024, 6, MAGNITUDES}, {256, 7, NEG_SCALE},
};

struct qtype { const char * name; enum ggml_type type; };
static const struct qtype TYPES[] = {
    {"Q4_0", GGML_TYPE_Q4_0}, {"Q4_1", GGML_TYPE_Q4_1}, {"Q5_0", GGML_TYPE_Q5_0},
    {"Q5_1", GGML_TYPE_Q5_1}, {"Q8_0", GGML_TYPE_Q8_0}, {"Q2_K", GGML_TYPE_Q2_K},
    {"Q3_K", GGML_TYPE_Q3_K}, {"Q4_K", GGML_TYPE_Q4_K}, {"Q5_K", GGML_TYPE_Q5_K},
    {"Q6_K", GGML_TYPE_Q6_K}, {"IQ4_NL", GGML_TYPE_IQ4_NL}, {"IQ4_XS", GGML_TYPE_IQ4_XS},
};

static void put_u32(FILE * f, uint32_t v) { fwrite(&v, 4, 1, f); }

static FILE * open_out(const char * dir, const char * name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    return f;
}

// ---- Types whose quantizer may abort: IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S
//
// These need ggml_quantize_init (their grid lookups), and ggml aborts (GGML_ASSERT)
// instead of returning: IQ2_XXS, IQ2_XS and IQ1_S without an importance vector, and any
// of them where NaN or infinite weights (or negative importances) leave a group with no
// grid point at a finite distance or make a scale NaN. Each run is made in a
// child process; the file records which runs ggml finished:
//   <TYPE>.bin   u32 block_bytes, u32 block_elems, u32 n_rows, then per row: u32 row id,
//                u32 runs (bit 0: without imatrix, bit 1: with), the blocks of each
//                finished run in that order

struct qtype_abort { const char * name; enum ggml_type type; };
static const struct qtype_abort ABORTING_TYPES[] = {
    {"IQ2_XXS", GGML_TYPE_IQ2_XXS}, {"IQ2_XS", GGML_TYPE_IQ2_XS}, {"IQ2_S", GGML_TYPE_IQ2_S},
    {"IQ3_XXS", GGML_TYPE_IQ3_XXS}, {"IQ3_S", GGML_TYPE_IQ3_S},   {"IQ1_S", GGML_TYPE_IQ1_S},
    {"IQ1_M", GGML_TYPE_IQ1_M},
};

// ggml_quantize_chunk of one row in a child process: 1 with the bytes in `out`, 0 if
// ggml aborted.
static int quantize_or_abort(enum ggml_type type, const float * x, int width,
                             const float * imatrix, void * out, size_t row_bytes) {
    void * shared = mmap(NULL, row_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) { perror("mmap"); exit(1); }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(1); }
    if (pid == 0) {
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        ggml_quantize_chunk(type, x, shared, 0, 1, width, imatrix);
        _exit(0);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) { perror("waitpid"); exit(1); }
    const int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok) memcpy(out, shared, row_bytes);
    munmap(shared, row_bytes);
    return ok;
}

static void write_aborting_types(const char * dir, int n_rows, const int * widths,
                                 float ** xs, float ** ims, const int * imat_of) {
    setenv("GGML_NO_BACKTRACE", "1", 1);
    for (size_t t = 0; t < sizeof ABORTING_TYPES / sizeof ABORTING_TYPES[0]; t++) {
        const enum ggml_type type = ABORTING_TYPES[t].type;
        const int64_t blck = ggml_blck_size(type);
        ggml_quantize_init(type); // once here, not in every child
        char name[64];
        snprintf(name, sizeof name, "%s.bin", ABORTING_TYPES[t].name);
        FILE * f = open_out(dir, name);
        uint32_t n_taken = 0;
        for (int r = 0; r < n_rows; r++) n_taken += widths[r] % blck == 0;
        put_u32(f, (uint32_t)ggml_type_size(type));
        put_u32(f, (uint32_t)blck);
        put_u32(f, n_taken);
        int n_runs = 0, n_aborted = 0;
        for (int r = 0; r < n_rows; r++) {
            if (widths[r] % blck != 0) continue;
            const size_t row_bytes = ggml_row_size(type, widths[r]);
            void * plain = calloc(1, row_bytes);
            void * weighted = calloc(1, row_bytes);
            const int has_plain = quantize_or_abort(type, xs[r], widths[r], NULL, plain, row_bytes);
            const int has_weighted =
                quantize_or_abort(type, xs[r], widths[r], ims[imat_of[r]], weighted, row_bytes);
            put_u32(f, (uint32_t)r);
            put_u32(f, (uint32_t)(has_plain | has_weighted << 1));
            if (has_plain) fwrite(plain, 1, row_bytes, f);
            if (has_weighted) fwrite(weighted, 1, row_bytes, f);
            n_runs += 2;
            n_aborted += !has_plain + !has_weighted;
            free(plain);
            free(weighted);
        }
        fclose(f);
        printf("%s: %d runs, %d aborted\n", ABORTING_TYPES[t].name, n_runs, n_aborted);
    }
}

int main(int argc, char ** argv) {
    const char * dir = argc > 1 ? argv[1] : "runtime/src/quant/golden_quantize";
    const int n_extra = argc > 2 ? atoi(argv[2]) : 0;
    const int n_imat = (int)(sizeof IMATS / sizeof IMATS[0]);
    const int n_fixed = (int)(sizeof ROWS / sizeof ROWS[0]);
    const int n_rows = n_fixed + n_extra;

    // The extra rows' importance vectors: one log-uniform vector per row, after the fixed.
    int * widths = malloc(sizeof(int) * n_rows);
    int * imat_of = malloc(sizeof(int) * n_rows);
    float ** xs = malloc(sizeof(float *) * n_rows);
    float ** ims = malloc(sizeof(float *) * (n_imat + n_extra));
    int * im_widths = malloc(sizeof(int) * (n_imat + n_extra));
    for (int i = 0; i < n_imat; i++) {
        im_widths[i] = IMATS[i].width;
        ims[i] = malloc(sizeof(float) * IMATS[i].width);
        fill_imatrix(IMATS[i].kind, ims[i], IMATS[i].width);
    }
    for (int r = 0; r < n_rows; r++) {
        if (r < n_fixed) {
            widths[r] = ROWS[r].width;
            imat_of[r] = ROWS[r].imat;
            xs[r] = malloc(sizeof(float) * widths[r]);
            fill_row(ROWS[r].kind, xs[r], widths[r]);
        } else {
            const int e = n_imat + (r - n_fixed);
            widths[r] = 256 * (1 + (int)(next_u64() % 16));
            im_widths[e] = widths[r];
            ims[e] = malloc(sizeof(float) * widths[r]);
            const uint64_t pick = next_u64() % 8;
            fill_imatrix(pick == 0 ? IM_ZERO : pick == 1 ? IM_SIGNED : IM_LOG, ims[e], widths[r]);
            imat_of[r] = e;
            xs[r] = malloc(sizeof(float) * widths[r]);
            // no NaN/inf rows among the extra ones
            fill_row((enum kind)(next_u64() % INFS), xs[r], widths[r]);
        }
    }

    FILE * f = open_out(dir, "inputs.bin");
    put_u32(f, (uint32_t)(n_imat + n_extra));
    for (int i = 0; i < n_imat + n_extra; i++) {
        put_u32(f, (uint32_t)im_widths[i]);
        fwrite(ims[i], sizeof(float), im_widths[i], f);
    }
    put_u32(f, (uint32_t)n_rows);
    for (int r = 0; r < n_rows; r++) {
        put_u32(f, (uint32_t)widths[r]);
        put_u32(f, (uint32_t)imat_of[r]);
        fwrite(xs[r], sizeof(float), widths[r], f);
    }
    fclose(f);

    for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++) {
        const enum ggml_type type = TYPES[t].type;
        const int64_t blck = ggml_blck_size(type);
        const size_t block_bytes = ggml_type_size(type);
        char name[64];
        snprintf(name, sizeof name, "%s.bin", TYPES[t].name);
        f = open_out(dir, name);
        uint32_t n_taken = 0;
        for (int r = 0; r < n_rows; r++) n_taken += widths[r] % blck == 0;
        put_u32(f, (uint32_t)block_bytes);
        put_u32(f, (uint32_t)blck);
        put_u32(f, n_taken);
        for (int r = 0; r < n_rows; r++) {
            if (widths[r] % blck != 0) continue;
            const size_t row_bytes = ggml_row_size(type, widths[r]);
            void * plain = calloc(1, row_bytes);
            void * weighted = calloc(1, row_bytes);
            ggml_quantize_chunk(type, xs[r], plain, 0, 1, widths[r], NULL);
            ggml_quantize_chunk(type, xs[r], weighted, 0, 1, widths[r], ims[imat_of[r]]);
            put_u32(f, (uint32_t)r);
            fwrite(plain, 1, row_bytes, f);
            fwrite(weighted, 1, row_bytes, f);
            free(plain);
            free(weighted);
        }
        fclose(f);
    }
    write_aborting_types(dir, n_rows, widths, xs, ims, imat_of);
    printf("%d rows, %d importance vectors -> %s\n", n_rows, n_imat + n_extra, dir);
    return 0;
}
