// Golden outputs of llama.cpp's CPU ops for the `ggml_golden_*` tests in ../tests.rs.
//
// Runs ggml-cpu's RMS_NORM+MUL, ROPE (normal mode), FLASH_ATTN_EXT (single pass,
// split-KV decode, and the tiled kernel of batches of 64+ rows), SWIGLU and SOFT_MAX on
// inputs from a 64-bit LCG and appends every output (raw little-endian f32, in program
// order) to the file named on the command line: ggml_cpu_TIER.bin, one per kernel tier.
// The Rust test regenerates the same inputs and must reproduce each output bit for bit.
// ggml_cpu_avx512.bin: ggml built with -march=native on an AVX-512 (F, DQ) machine, no
// AVX512-FP16 (llama-ref.sh's native build); ggml_cpu_avx2.bin: its AVX2 build
// (LLAMA_REF_TIER=avx2 ../../../../shared/scripts/llama-ref.sh, $L/build-avx2).
//
// Regenerate (from this directory, with llama.cpp built in $L/$B, B=build or build-avx2):
//   gcc -O1 ggml_ops.c -I$L/ggml/include -L$L/$B/bin -lggml -lggml-base -lggml-cpu -lm -o /tmp/ggml_ops
//   LD_LIBRARY_PATH=$L/$B/bin /tmp/ggml_ops ggml_cpu_TIER.bin   # also writes the per-op .bin files; delete them
#include "ggml.h"
#include "ggml-cpu.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
static unsigned long long st = 12345;
static float rnd(float amp) { st = st*6364136223846793005ULL + 1442695040888963407ULL; return ((float)(st >> 40) / (float)(1<<24) * 2.0f - 1.0f) * amp; }
static void fill(struct ggml_tensor *t, float amp) {
  long n = ggml_nelements(t);
  if (t->type == GGML_TYPE_F32) { float *d = t->data; for (long i=0;i<n;i++) d[i]=rnd(amp); }
  else { ggml_fp16_t *d = t->data; for (long i=0;i<n;i++) d[i]=ggml_fp32_to_fp16(rnd(amp)); }
}
static FILE *golden;
static void dump(const char *name, struct ggml_tensor *t) {
  FILE *f = fopen(name, "wb"); fwrite(t->data, 1, ggml_nbytes(t), f); fclose(f);
  if (strstr(name, "out")) fwrite(t->data, 1, ggml_nbytes(t), golden);
}
static struct ggml_context *mk(void) { struct ggml_init_params p = { 256*1024*1024, NULL, false }; return ggml_init(p); }
static void run(struct ggml_context *ctx, struct ggml_tensor *out, int nth) {
  struct ggml_cgraph *g = ggml_new_graph(ctx); ggml_build_forward_expand(g, out); ggml_graph_compute_with_ctx(ctx, g, nth);
}
int main(int argc, char **argv) {
  char name[256];
  golden = fopen(argc > 1 ? argv[1] : "ggml_cpu_avx512.bin", "wb");
  // rms_norm * w
  { struct ggml_context *c = mk(); int n = 576;
    struct ggml_tensor *x = ggml_new_tensor_1d(c, GGML_TYPE_F32, n), *w = ggml_new_tensor_1d(c, GGML_TYPE_F32, n);
    fill(x, 3); fill(w, 2);
    struct ggml_tensor *o = ggml_mul(c, ggml_rms_norm(c, x, 1e-5f), w); run(c, o, 1);
    dump("rms_x.bin", x); dump("rms_w.bin", w); dump("rms_out.bin", o); ggml_free(c); }
  // rope: (head_dim, rope_dim, base, use_ff), positions list
  int hd[3] = {64, 128, 80}; int rd[3] = {64, 128, 64}; float base[3] = {100000.f, 500000.f, 10000.f}; int useff[3] = {0, 1, 0};
  int poss[4] = {0, 7, 300, 8000};
  for (int cfg = 0; cfg < 3; cfg++) for (int pi = 0; pi < 4; pi++) {
    struct ggml_context *c = mk(); int H = 3;
    struct ggml_tensor *x = ggml_new_tensor_3d(c, GGML_TYPE_F32, hd[cfg], H, 1); fill(x, 2);
    struct ggml_tensor *pos = ggml_new_tensor_1d(c, GGML_TYPE_I32, 1); ((int*)pos->data)[0] = poss[pi];
    struct ggml_tensor *ff = NULL;
    if (useff[cfg]) { ff = ggml_new_tensor_1d(c, GGML_TYPE_F32, rd[cfg]/2); float *d = ff->data; for (int i=0;i<rd[cfg]/2;i++) d[i] = 1.0f + (i % 7) * 1.1f; }
    struct ggml_tensor *o = ggml_rope_ext(c, x, pos, ff, rd[cfg], 0, 8192, base[cfg], 1.0f, 0.0f, 1.0f, 32.0f, 1.0f);
    run(c, o, 1);
    sprintf(name, "rope_%d_%d_x.bin", cfg, pi); dump(name, x);
    if (ff) { sprintf(name, "rope_%d_%d_ff.bin", cfg, pi); dump(name, ff); }
    sprintf(name, "rope_%d_%d_out.bin", cfg, pi); dump(name, o); ggml_free(c); }
  // flash attention: D, n_kv, nth ; 2 q heads share 1 kv head
  int Ds[4] = {64, 64, 128, 64}; int nkv[4] = {37, 700, 300, 1000}; int nths[4] = {1, 3, 2, 4};
  for (int t = 0; t < 4; t++) {
    struct ggml_context *c = mk(); int D = Ds[t], N = nkv[t];
    struct ggml_tensor *q = ggml_new_tensor_3d(c, GGML_TYPE_F32, D, 1, 2); fill(q, 3);
    struct ggml_tensor *k = ggml_new_tensor_3d(c, GGML_TYPE_F16, D, N, 1); fill(k, 1);
    struct ggml_tensor *v = ggml_new_tensor_3d(c, GGML_TYPE_F16, D, N, 1); fill(v, 1);
    struct ggml_tensor *o = ggml_flash_attn_ext(c, q, k, v, NULL, 1.0f/sqrtf((float)D), 0.0f, 0.0f);
    run(c, o, nths[t]);
    sprintf(name, "fa_%d_q.bin", t); dump(name, q); sprintf(name, "fa_%d_k.bin", t); dump(name, k);
    sprintf(name, "fa_%d_v.bin", t); dump(name, v); sprintf(name, "fa_%d_out.bin", t); dump(name, o); ggml_free(c); }
  // swiglu and softmax
  { struct ggml_context *c = mk(); int n = 1543;
    struct ggml_tensor *g = ggml_new_tensor_1d(c, GGML_TYPE_F32, n), *u = ggml_new_tensor_1d(c, GGML_TYPE_F32, n);
    fill(g, 12); fill(u, 3);
    struct ggml_tensor *o = ggml_swiglu_split(c, g, u); run(c, o, 1);
    dump("swiglu_g.bin", g); dump("swiglu_u.bin", u); dump("swiglu_out.bin", o);
    struct ggml_tensor *x = ggml_new_tensor_1d(c, GGML_TYPE_F32, 1003); fill(x, 30);
    struct ggml_tensor *s = ggml_soft_max(c, x); run(c, s, 1);
    dump("sm_x.bin", x); dump("sm_out.bin", s); ggml_free(c); }
  // tiled prefill flash attention (>= 64 query rows), causal f16 mask over a cached
  // prefix: D, n_q, n_kv, nth; 2 q heads share 1 kv head; row i sees n_kv - n_q + i + 1 keys
  int tDs[3] = {64, 128, 64}; int tnq[3] = {100, 64, 70}; int tnkv[3] = {300, 101, 70}; int tnth[3] = {2, 3, 1};
  for (int t = 0; t < 3; t++) {
    struct ggml_context *c = mk(); int D = tDs[t], NQ = tnq[t], N = tnkv[t];
    struct ggml_tensor *q = ggml_new_tensor_3d(c, GGML_TYPE_F32, D, NQ, 2); fill(q, 3);
    struct ggml_tensor *k = ggml_new_tensor_3d(c, GGML_TYPE_F16, D, N, 1); fill(k, 1);
    struct ggml_tensor *v = ggml_new_tensor_3d(c, GGML_TYPE_F16, D, N, 1); fill(v, 1);
    struct ggml_tensor *m = ggml_new_tensor_2d(c, GGML_TYPE_F16, N, NQ);
    ggml_fp16_t *md = m->data;
    for (int i = 0; i < NQ; i++) for (int j = 0; j < N; j++)
      md[i*N + j] = ggml_fp32_to_fp16(j <= N - NQ + i ? 0.0f : -INFINITY);
    struct ggml_tensor *o = ggml_flash_attn_ext(c, q, k, v, m, 1.0f/sqrtf((float)D), 0.0f, 0.0f);
    run(c, o, tnth[t]);
    sprintf(name, "fat_%d_out.bin", t); dump(name, o); ggml_free(c); }
  fclose(golden);
  printf("ok\n");
  return 0;
}
