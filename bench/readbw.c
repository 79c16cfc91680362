// Machine read bandwidth, as decode sees it: T threads each stream their share of a
// buffer much larger than the caches, summing 32-byte vectors (so the loads, not the
// arithmetic, are the limit). Prints the best of R passes in GB/s (10^9 bytes/s).
//
//   cc -O2 -march=native -pthread bench/readbw.c -o readbw && ./readbw [threads] [MiB] [passes]
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct part {
    const __m256i *p;
    size_t n;  // vectors
    __m256i sum;
};

static void *reader(void *arg) {
    struct part *w = arg;
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 4 <= w->n; i += 4) {
        a = _mm256_add_epi64(a, _mm256_load_si256(w->p + i));
        b = _mm256_add_epi64(b, _mm256_load_si256(w->p + i + 1));
        c = _mm256_add_epi64(c, _mm256_load_si256(w->p + i + 2));
        d = _mm256_add_epi64(d, _mm256_load_si256(w->p + i + 3));
    }
    w->sum = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t mib = argc > 2 ? (size_t)atoll(argv[2]) : 1024;
    int passes = argc > 3 ? atoi(argv[3]) : 5;
    if (threads < 1 || threads > 256 || mib < 1 || passes < 1) {
        fprintf(stderr, "usage: readbw [threads 1..256] [MiB] [passes]\n");
        return 2;
    }
    size_t bytes = mib << 20;
    __m256i *buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "readbw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    memset(buf, 1, bytes);  // fault every page in before timing
    size_t n = bytes / sizeof(__m256i), per = n / threads / 4 * 4;
    double best = 0;
    int64_t check = 0;
    for (int r = 0; r < passes; r++) {
        pthread_t tid[256];
        struct part parts[256];
        double t0 = now();
        for (int i = 0; i < threads; i++) {
            parts[i] = (struct part){buf + (size_t)i * per, per, _mm256_setzero_si256()};
            pthread_create(&tid[i], NULL, reader, &parts[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
        double gbs = (double)per * threads * sizeof(__m256i) / (now() - t0) / 1e9;
        if (gbs > best) best = gbs;
        for (int i = 0; i < threads; i++) check += _mm256_extract_epi64(parts[i].sum, 0);
    }
    printf("%.2f\n", best);
    fprintf(stderr, "readbw: %d threads, %zu MiB, best of %d passes (checksum %lld)\n", threads,
            mib, passes, (long long)check);
    free(buf);
    return 0;
}
