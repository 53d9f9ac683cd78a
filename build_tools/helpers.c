/* The C helpers of llamacffi's cffi module, compiled with the generated module source (see build_ffi.py). */
#include <errno.h>
#include <signal.h>
#include "llama.h"
#include "ggml-backend.h"
#include "ggml-cpu.h"

/* defined in guards.cpp, where llama.cpp's C++ exceptions can be caught */
struct llama_sampler *llamacffi_grammar_init(const struct llama_vocab *vocab, const char *text, const char *root,
                                             size_t max_stacks, size_t max_breadth, int *why);
long llamacffi_grammar_breadth(const struct llama_vocab *vocab, const char *text, const char *root, size_t budget);
int llamacffi_grammar_accept(struct llama_sampler *smpl, llama_token token);
int llamacffi_grammar_accepts_many(struct llama_sampler *smpl, const llama_token *tokens, size_t n,
                                   unsigned char *ok);
int32_t llamacffi_tokenize(const struct llama_vocab *vocab, const char *text, int32_t text_len, llama_token *tokens,
                           int32_t n_tokens_max, bool add_special, bool parse_special, char *error,
                           size_t error_size);

/* Whether a device's backend offers split buffers, which llama.cpp's split_mode row needs (it refuses the load
   otherwise, after reading the file). */
static int llamacffi_dev_splits_rows(ggml_backend_dev_t dev) {
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    return reg != NULL && ggml_backend_reg_get_proc_address(reg, "ggml_backend_split_buffer_type") != NULL;
}

static const char *llamacffi_package_version(void) { return LLAMACFFI_PACKAGE_VERSION; }
static const char *llamacffi_llama_cpp_commit(void) { return LLAMACFFI_LLAMA_CPP_COMMIT; }
static const char *llamacffi_build_flags(void) { return LLAMACFFI_BUILD_FLAGS; }

#if defined(_MSC_VER)
#define LLAMACFFI_THREAD_LOCAL __declspec(thread)
#else
#define LLAMACFFI_THREAD_LOCAL _Thread_local
#endif

/* Flags one thread (or a signal handler) sets and another reads while it decodes: atomic loads and stores, so that
   neither the compiler nor the CPU keeps a stale copy (lock-free, so also safe in a signal handler). MSVC gives
   volatile accesses these semantics itself. */
#if defined(_MSC_VER)
#define LLAMACFFI_LOAD(p) (*(volatile int *) (p))
#define LLAMACFFI_STORE(p, v) (*(volatile int *) (p) = (v))
#define LLAMACFFI_INCREMENT(p) (++*(volatile int *) (p))
#else
#define LLAMACFFI_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define LLAMACFFI_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define LLAMACFFI_INCREMENT(p) __atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)
#endif

/* ---- logging: filter in C so that dropped lines cost no Python call ---- */
static void llamacffi_log_callback(enum ggml_log_level level, const char *text, void *user_data);
static int llamacffi_log_threshold = GGML_LOG_LEVEL_WARN;
static LLAMACFFI_THREAD_LOCAL int llamacffi_log_last_passed = 0;  /* a continuation line follows its thread's line */

typedef struct { int abort; int sigint_epoch; int halt; } llamacffi_abort_state;
static int llamacffi_sigint_epoch = 0;
static LLAMACFFI_THREAD_LOCAL llamacffi_abort_state *llamacffi_decoding = NULL;  /* this thread's decode */
static bool llamacffi_abort_check(void *data);
static void llamacffi_sigint_keep(void);

static void llamacffi_log_filter(enum ggml_log_level level, const char *text, void *user_data) {
    int pass = level == GGML_LOG_LEVEL_CONT ? llamacffi_log_last_passed
                                            : (int) level >= LLAMACFFI_LOAD(&llamacffi_log_threshold);
    /* an aborted decode (Ctrl-C, Context.abort) makes llama.cpp log its failure: Python raises for it instead */
    if (pass && llamacffi_decoding != NULL && llamacffi_abort_check(llamacffi_decoding)) pass = 0;
    llamacffi_log_last_passed = pass;
    if (pass) llamacffi_log_callback(level, text, user_data);
}
static void llamacffi_log_set_threshold(int threshold) { LLAMACFFI_STORE(&llamacffi_log_threshold, threshold); }
static void llamacffi_log_install(int threshold) {
    LLAMACFFI_STORE(&llamacffi_log_threshold, threshold);
    llama_log_set(llamacffi_log_filter, NULL);
}

/* ---- abort: a per-context flag plus a process-wide Ctrl-C epoch ---- */

static bool llamacffi_abort_check(void *data) {
    llamacffi_abort_state *s = (llamacffi_abort_state *) data;
    return LLAMACFFI_LOAD(&s->abort) != 0 || LLAMACFFI_LOAD(&s->halt) != 0 ||
           s->sigint_epoch != LLAMACFFI_LOAD(&llamacffi_sigint_epoch);
}
/* Context.abort (which = 0) and the halt at interpreter exit (1), from any thread */
static void llamacffi_abort_set(llamacffi_abort_state *s, int which) {
    LLAMACFFI_STORE(which ? &s->halt : &s->abort, 1);
}
/* whether an abort or a halt was asked (0 after a Ctrl-C alone) */
static int llamacffi_abort_asked(llamacffi_abort_state *s) {
    return LLAMACFFI_LOAD(&s->abort) != 0 || LLAMACFFI_LOAD(&s->halt) != 0;
}
static void llamacffi_abort_attach(struct llama_context *ctx, llamacffi_abort_state *state) {
    llama_set_abort_callback(ctx, llamacffi_abort_check, state);
}
/* llama_decode or llama_encode with the context's abort state armed; the two differ only in that call */
static int32_t llamacffi_process(struct llama_context *ctx, struct llama_batch *batch, llamacffi_abort_state *s,
                                 int encode) {
    if (LLAMACFFI_LOAD(&s->halt)) return 2;  /* halted for good (interpreter exit): as an aborted decode */
    llamacffi_sigint_keep();
    LLAMACFFI_STORE(&s->abort, 0);
    s->sigint_epoch = LLAMACFFI_LOAD(&llamacffi_sigint_epoch);
    llamacffi_decoding = s;
    const int32_t rc = encode ? llama_encode(ctx, *batch) : llama_decode(ctx, *batch);
    llamacffi_decoding = NULL;
    return rc;
}
static int32_t llamacffi_decode(struct llama_context *ctx, struct llama_batch *batch, llamacffi_abort_state *s) {
    return llamacffi_process(ctx, batch, s, 0);
}
static int32_t llamacffi_encode(struct llama_context *ctx, struct llama_batch *batch, llamacffi_abort_state *s) {
    return llamacffi_process(ctx, batch, s, 1);
}

/* ---- threads: without OpenMP, ggml starts and joins its threads for every graph unless a pool is attached ---- */
static struct ggml_threadpool *llamacffi_threadpool_new(int n_threads) {
    struct ggml_threadpool_params params = ggml_threadpool_params_default(n_threads);
    return ggml_threadpool_new(&params);
}
static void llamacffi_context_free(struct llama_context *ctx, struct ggml_threadpool *pool,
                                   struct ggml_threadpool *pool_batch) {
    if (ctx != NULL) llama_free(ctx);
    if (pool_batch != NULL && pool_batch != pool) ggml_threadpool_free(pool_batch);
    if (pool != NULL) ggml_threadpool_free(pool);
}

/* ---- sampling: the k best of a logits row in one pass (the numpy sampler's hot path) ---- */
/* ids/vals receive min(k, n) entries by descending value, ties by ascending id; returns their count, or -1 when the
   row holds a NaN. Once k entries are held, blocks of 16 with nothing above the k-th best (and no NaN) are skipped
   after one vectorisable test, so most of the row costs a fraction of a cycle per value. */
static inline void llamacffi_top_k_offer(float v, int32_t i, int32_t k, int32_t *m, int32_t *ids, float *vals) {
    if (*m == k) {
        if (!(v > vals[k - 1])) return;
        (*m)--;
    }
    int32_t j = *m;
    while (j > 0 && vals[j - 1] < v) {
        vals[j] = vals[j - 1];
        ids[j] = ids[j - 1];
        j--;
    }
    vals[j] = v;
    ids[j] = i;
    (*m)++;
}
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
/* whether any of x[0..16) is above thr or NaN ("not <=" is true for both) */
static inline int llamacffi_block_hit(const float *x, float thr) {
    const __m128 t = _mm_set1_ps(thr);
    const __m128 a = _mm_or_ps(_mm_cmpnle_ps(_mm_loadu_ps(x), t), _mm_cmpnle_ps(_mm_loadu_ps(x + 4), t));
    const __m128 b = _mm_or_ps(_mm_cmpnle_ps(_mm_loadu_ps(x + 8), t), _mm_cmpnle_ps(_mm_loadu_ps(x + 12), t));
    return _mm_movemask_ps(_mm_or_ps(a, b));
}
#else
static inline int llamacffi_block_hit(const float *x, float thr) {
    int hit = 0;
    for (int32_t j = 0; j < 16; j++) hit |= !(x[j] <= thr);
    return hit;
}
#endif
static int32_t llamacffi_top_k(const float *x, int32_t n, int32_t k, int32_t *ids, float *vals) {
    int32_t m = 0, nan = 0, i = 0;
    if (k > n) k = n;
    if (k <= 0) return 0;
    for (; i < k; i++) {
        nan |= x[i] != x[i];
        llamacffi_top_k_offer(x[i], i, k, &m, ids, vals);
    }
    for (; i + 16 <= n; i += 16) {
        if (!llamacffi_block_hit(x + i, vals[k - 1])) continue;
        for (int32_t j = 0; j < 16; j++) {
            nan |= x[i + j] != x[i + j];
            llamacffi_top_k_offer(x[i + j], i + j, k, &m, ids, vals);
        }
    }
    for (; i < n; i++) {
        nan |= x[i] != x[i];
        llamacffi_top_k_offer(x[i], i, k, &m, ids, vals);
    }
    return nan ? -1 : m;
}

#if defined(_WIN32)
static int llamacffi_sigint_install(void) { return 0; }
static void llamacffi_sigint_keep(void) {}
#else
#include <pthread.h>
/* Chains to the handler that was installed before (Python's), so KeyboardInterrupt is still raised once the
   decode returns to Python. Python code can install its own handler later (asyncio.run does, for SIGINT): every
   decode wraps the handler it finds again. The previous handler sits in one of two slots, and a new one goes to the
   other slot before it is published, so that a signal being handled meanwhile reads a whole one. */
static struct sigaction llamacffi_prev_sigint[2];
static int llamacffi_prev_slot = 0;
static int llamacffi_sigint_wanted = 0;
static pthread_mutex_t llamacffi_sigint_lock = PTHREAD_MUTEX_INITIALIZER;
static void llamacffi_on_sigint(int sig, siginfo_t *info, void *uctx) {
    const int saved_errno = errno;  /* the code it interrupted may be about to read errno */
    const struct sigaction *prev = &llamacffi_prev_sigint[LLAMACFFI_LOAD(&llamacffi_prev_slot)];
    LLAMACFFI_INCREMENT(&llamacffi_sigint_epoch);
    if (prev->sa_flags & SA_SIGINFO) {
        if (prev->sa_sigaction) prev->sa_sigaction(sig, info, uctx);
    } else if (prev->sa_handler == SIG_DFL) {
        sigaction(SIGINT, prev, NULL);
        raise(SIGINT);
    } else if (prev->sa_handler != SIG_IGN) {
        prev->sa_handler(sig);
    }
    errno = saved_errno;
}
static int llamacffi_sigint_wrap(void) {
    struct sigaction cur, ours;
    int rc = 0;
    /* a thread that finds another one wrapping leaves it to that one; a child forked meanwhile (its lock then held
       for good) keeps the handler it has instead of waiting forever */
    if (pthread_mutex_trylock(&llamacffi_sigint_lock) != 0) return 0;
    if (sigaction(SIGINT, NULL, &cur) != 0) {
        rc = -1;
    } else if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == llamacffi_on_sigint) &&
               !(!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_IGN)) {  /* not ours, not ignored */
        const int next = 1 - LLAMACFFI_LOAD(&llamacffi_prev_slot);
        llamacffi_prev_sigint[next] = cur;
        LLAMACFFI_STORE(&llamacffi_prev_slot, next);
        ours = cur;
        ours.sa_sigaction = llamacffi_on_sigint;
        ours.sa_flags = (cur.sa_flags | SA_SIGINFO) & ~SA_RESETHAND;
        rc = sigaction(SIGINT, &ours, NULL);
    }
    pthread_mutex_unlock(&llamacffi_sigint_lock);
    return rc;
}
static int llamacffi_sigint_install(void) {
    LLAMACFFI_STORE(&llamacffi_sigint_wanted, 1);
    return llamacffi_sigint_wrap();
}
static void llamacffi_sigint_keep(void) {  /* before a decode: one sigaction call when nothing changed */
    if (LLAMACFFI_LOAD(&llamacffi_sigint_wanted)) llamacffi_sigint_wrap();
}
#endif

/* ---- memory: transparent huge pages for a range of anonymous memory (Linux) ---- */
/* Asks that the range (start and length multiples of page, the huge page size) take huge pages from its next page
   faults on; with collapse set, also moves the small pages it holds now, one huge page at a time (a single call
   over the range can give up on all of it). Returns how many of its huge pages are huge after the call (0 without
   collapse), or -errno. A part of the range no longer mapped is skipped. */
#include <errno.h>
#if defined(__linux__)
#include <sys/mman.h>
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE 14
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
static int64_t llamacffi_huge_pages(uintptr_t start, size_t length, size_t page, int collapse) {
    int64_t n = 0;
    if (page == 0 || start % page != 0 || length % page != 0) return -EINVAL;
    /* ENOMEM: a part of the range is unmapped; the advice still applies to the rest */
    if (madvise((void *) start, length, MADV_HUGEPAGE) != 0 && errno != ENOMEM) return -errno;
    for (size_t off = 0; collapse && off < length; off += page) {
        if (madvise((void *) (start + off), page, MADV_COLLAPSE) == 0) n++;
    }
    return n;
}
#else
static int64_t llamacffi_huge_pages(uintptr_t start, size_t length, size_t page, int collapse) {
    (void) start; (void) length; (void) page; (void) collapse;
    return -ENOSYS;
}
#endif

/* ---- the RPC backend: declared by ggml-rpc.h in every tree, compiled into ggml only with GGML_RPC=ON ---- */
#include "ggml-rpc.h"
#if !defined(LLAMACFFI_HAVE_RPC)
/* Stand-ins so a build without GGML_RPC links; llama_supports_rpc() is false there and Python refuses before these
   are reached. */
ggml_backend_reg_t ggml_backend_rpc_add_server(const char *endpoint) {
    (void) endpoint;
    return NULL;
}
void ggml_backend_rpc_start_server(const char *endpoint, const char *cache_dir, size_t n_threads, size_t n_devices,
                                   ggml_backend_dev_t *devices) {
    (void) endpoint; (void) cache_dir; (void) n_threads; (void) n_devices; (void) devices;
}
#endif
