// The fused inference step of a whole SequencePolicy (or of one sequence layer) on CPU, for
// acting: one C++ call per environment step instead of some hundred small torch ops.
//
//   h = tanh(W0 [o ⊕ c] + b0);  e = tanh(W1 h + b1);  x = W_in [e ⊕ ctx] + b_in
//   x <- x + layer_i(LN_i(x))                  for each layer (pre-norm residual stack)
//   f = LN(x);  dist = head(f);  value = w_v . f + b_v
//
// The same arithmetic as ssm/policy.py, ssm/stack.py and the layers' `_step` (ssm/lti.py,
// ssm/mamba.py, ssm/rnn.py), the reference that stays the source of truth (tests/test_fast_step.py
// compares the two). No autograd. Projections go to BLAS (sgemm_/dgemm_, no
// dispatcher) from a few rows up and are plain dot products below; elementwise parts are
// vectorised loops. Scratch memory is kept per batch size; the parameters are the module's own
// tensors (no copies), and what is derived from them (the S4D/S5 discretisation, Mamba's
// A = -exp(A_log), a condition folded into the encoder bias) is recomputed when a parameter's
// version counter or storage changes (an optimiser step, load_state_dict, .data =).
//
// Resets: rows with reset[b] read their old state multiplied by 0 (as ssm.base.zero_where).
// In-place mode writes the new state over the old one (every kernel reads an element before it
// writes it, and no row reads another row's state).
#include <torch/extension.h>

#include <cmath>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace py = pybind11;
using at::Tensor;

// The BLAS torch was built with (MKL here), called directly: the dispatcher and tensor wrapping
// of at::mm cost more than a small projection. Weak, so a torch without these symbols still loads
// the extension and projections go through at::mm_out instead.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // the C entry (the lowercase one is Fortran's, by pointer)
}

// MKL on one thread for the duration of a step (restored after): the projections of an acting
// step are too small to pay for waking a second thread, and on a busy machine waiting for one
// costs milliseconds.
struct OneBlasThread {
  int prev = -1;
  OneBlasThread() {
    if (MKL_Set_Num_Threads_Local) prev = MKL_Set_Num_Threads_Local(1);
  }
  ~OneBlasThread() {
    if (MKL_Set_Num_Threads_Local && prev >= 0) MKL_Set_Num_Threads_Local(prev);
  }
};

namespace {

// C (m x n, col-major, ldc) = A^T B + beta C with A (k x m, lda), B (k x n, ldb): the row-major
// y (n, m) = x (n, k) W^T (+ beta y) for W (m, k).
template <typename T>
void gemm_tn(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
             T beta, T* c, int64_t ldc) {
  const int mi = int(m), ni = int(n), ki = int(k), la = int(lda), lb = int(ldb), lc = int(ldc);
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_) return sgemm_("T", "N", &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
  } else {
    if (dgemm_) return dgemm_("T", "N", &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto W = at::from_blob(const_cast<T*>(a), {m, k}, {lda, 1}, opts);
  auto x = at::from_blob(const_cast<T*>(b), {n, k}, {ldb, 1}, opts);
  auto y = at::from_blob(c, {n, m}, {ldc, 1}, opts);
  if (beta == T(0)) {
    at::mm_out(y, x, W.t());
  } else {
    y.add_(at::mm(x, W.t()));
  }
}

// Up to this many rows a projection is dot products (a BLAS call costs more than the arithmetic).
constexpr int64_t kDotRows = 4;

// y[b, o] = (acc ? y[b, o] : 0) + bias[o] + sum_i x[b, i] W[o, i]     (x (B, in), W (out, in))
template <typename T>
void linear(int64_t B, int64_t in, int64_t out, const T* x, int64_t ldx, const T* W, int64_t ldw,
            const T* bias, T* y, int64_t ldy, bool acc) {
  if (B <= kDotRows) {
    for (int64_t b = 0; b < B; ++b) {
      const T* xr = x + b * ldx;
      T* yr = y + b * ldy;
      for (int64_t o = 0; o < out; ++o) {
        const T* wr = W + o * ldw;
        T s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t i = 0; i < in; ++i) s += xr[i] * wr[i];
        if (bias) s += bias[o];
        yr[o] = acc ? yr[o] + s : s;
      }
    }
    return;
  }
  T beta = acc ? T(1) : T(0);
  if (bias) {
    for (int64_t b = 0; b < B; ++b) {
      T* yr = y + b * ldy;
      if (acc) {
#pragma omp simd
        for (int64_t o = 0; o < out; ++o) yr[o] += bias[o];
      } else {
        std::memcpy(yr, bias, out * sizeof(T));
      }
    }
    beta = T(1);
  }
  // column-major view: y^T (out x B) = W (out x in) . x^T (in x B)
  gemm_tn<T>(out, B, in, W, ldw, x, ldx, beta, y, ldy);
}

template <typename T>
inline T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

// tanh(x) = sign(x) (-expm1(-2|x|)) / (2 + expm1(-2|x|)): written through expm1, which gcc
// vectorises (libmvec has it; a tanhf call would keep the whole loop scalar).
template <typename T>
inline T tanh_v(T x) {
  const T e = std::expm1(T(-2) * std::fabs(x));
  return std::copysign(-e / (T(2) + e), x);
}

template <typename T>
void tanh_inplace(int64_t n, T* x) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = tanh_v(x[i]);
}

template <typename T>
void sigmoid_inplace(int64_t n, T* x) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = T(1) / (T(1) + std::exp(-x[i]));
}

// o += v (acc) or o = v
template <typename T>
void add_or_copy(int64_t n, const T* v, T* o, bool acc) {
  if (acc) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) o[i] += v[i];
  } else {
    std::memcpy(o, v, n * sizeof(T));
  }
}

template <typename T>
void silu_inplace(int64_t n, T* x) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (T(1) + std::exp(-x[i]));
}

// softplus with torch's threshold (20)
template <typename T>
void softplus_inplace(int64_t n, T* x) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] = x[i] > T(20) ? x[i] : std::log1p(std::exp(x[i]));
}

// out = (x - mean) / sqrt(var + eps) * w + b per row (biased variance), as F.layer_norm.
template <typename T>
void layer_norm_rows(int64_t B, int64_t D, const T* x, const T* w, const T* bias, T eps, T* out) {
  for (int64_t b = 0; b < B; ++b) {
    const T* xr = x + b * D;
    T* o = out + b * D;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < D; ++i) s += xr[i];
    const T mean = s / T(D);
    T v = 0;
#pragma omp simd reduction(+ : v)
    for (int64_t i = 0; i < D; ++i) v += (xr[i] - mean) * (xr[i] - mean);
    const T rstd = T(1) / std::sqrt(v / T(D) + eps);
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) o[i] = (xr[i] - mean) * rstd * w[i] + bias[i];
  }
}

// log_softmax over each row of a (B, n) block with row stride ld
template <typename T>
void log_softmax_rows(int64_t B, int64_t n, T* x, int64_t ld) {
  for (int64_t b = 0; b < B; ++b) {
    T* r = x + b * ld;
    T m = r[0];
    for (int64_t i = 1; i < n; ++i) m = r[i] > m ? r[i] : m;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += std::exp(r[i] - m);
    const T lse = m + std::log(s);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) r[i] -= lse;
  }
}

#if defined(__AVX512F__)
// exp for 16 floats: exp(x) = 2^k p(x - k ln 2), k = round(x / ln 2); cephes' expf polynomial
// (about 1 ulp). Inline, so the Mamba step does not pay a libm call per 16 lanes.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.72283f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}
#endif

#if defined(__AVX512F__)
// r[i] = sum of the 16 lanes of a[i], for 16 vectors: a transposing tree of adds (45 shuffles and
// adds for 16 sums, against ~8 each for separate reductions).
inline __m512 hsum16x16(__m512* a) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                         _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  // b[i] per 128-bit lane: [a2i, a2i+1, a2i, a2i+1] partials
  for (int i = 0; i < 4; ++i)
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
  // c[i] per lane: [a4i, a4i+1, a4i+2, a4i+3] partial sums (each lane a quarter of the n)
  for (int i = 0; i < 2; ++i)
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88),
                       _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

// The Mamba SSM update of one row for N = 16 (one vector per channel), 16 channels at a time:
//   h_d <- exp(dt_d A_d) (k h_d) + dt_d x_d B;   y_d = (<C, h_d> + D_d x_d) * g_d
// Returns the number of channels done (a multiple of 16).
inline int64_t mamba_scan16(int64_t E, const float* dt, const float* xc, const float* g,
                            const float* A, const float* Dsk, const float* Bm, const float* Cm,
                            float k, const float* hs, float* hn, float* y) {
  const __m512 vB = _mm512_loadu_ps(Bm), vC = _mm512_loadu_ps(Cm), vk = _mm512_set1_ps(k);
  int64_t d0 = 0;
  for (; d0 + 16 <= E; d0 += 16) {
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) {
      const int64_t d = d0 + i;
      const __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(dt[d]), _mm512_loadu_ps(A + d * 16)));
      const __m512 hv = _mm512_mul_ps(_mm512_loadu_ps(hs + d * 16), vk);
      const __m512 v = _mm512_fmadd_ps(e, hv, _mm512_mul_ps(_mm512_set1_ps(dt[d] * xc[d]), vB));
      _mm512_storeu_ps(hn + d * 16, v);
      acc[i] = _mm512_mul_ps(v, vC);
    }
    const __m512 s = hsum16x16(acc);
    const __m512 xv = _mm512_loadu_ps(xc + d0);
    _mm512_storeu_ps(y + d0, _mm512_mul_ps(_mm512_fmadd_ps(_mm512_loadu_ps(Dsk + d0), xv, s),
                                           _mm512_loadu_ps(g + d0)));
  }
  return d0;
}
#endif

// -- parameters ---------------------------------------------------------------------------------
struct Held {
  Tensor t;
  int64_t version;
  const void* ptr;
};

int64_t version_of(const Tensor& t) { return t.is_inference() ? -1 : int64_t(t._version()); }

// -- layers -------------------------------------------------------------------------------------
enum class Kind { S4D, S5, Mamba, GRU, LSTM };

struct Layer {
  Kind kind;
  std::unordered_map<std::string, Tensor> p;  // the layer's parameters by local name
  Tensor derived;                               // discretisation / A, recomputed on change
  Tensor derived2;
  int64_t E = 0, N = 0, K = 0, R = 0;  // Mamba: d_inner, d_state, d_conv, dt_rank
  int64_t M = 0;                       // S4D modes per channel / S5 modes
  int64_t n_state = 1;
  bool has_norm = true;
  double eps = 1e-5;

  const Tensor& get(const std::string& k) const {
    auto it = p.find(k);
    TORCH_CHECK(it != p.end(), "fused policy step: missing parameter ", k);
    return it->second;
  }
  template <typename T>
  const T* ptr(const std::string& k) const {
    auto it = p.find(k);
    return it == p.end() ? nullptr : it->second.data_ptr<T>();
  }
};

// Zero-order hold of diagonal complex modes (as ssm/lti.py): A = -exp(re_log) + i im,
// Abar = exp(dt A), Bbar = (Abar - 1) / A, computed in double.
template <typename T>
void zoh(T dt, T re_log, T im, T* ab_re, T* ab_im, T* bb_re, T* bb_im) {
  const double ar = -std::exp(double(re_log)), ai = double(im);
  const double mag = std::exp(double(dt) * ar), th = double(dt) * ai;
  const double er = mag * std::cos(th), ei = mag * std::sin(th);
  const double nr = er - 1.0, den = ar * ar + ai * ai;
  *ab_re = T(er);
  *ab_im = T(ei);
  *bb_re = T((nr * ar + ei * ai) / den);
  *bb_im = T((ei * ar - nr * ai) / den);
}

template <typename T>
void derive(Layer& L) {
  if (L.kind == Kind::S4D) {
    // derived: (6, H, M) = Abar re, Abar im, Bbar re, Bbar im, C re, C im
    const int64_t H = L.get("log_dt").size(0), M = L.M;
    L.derived = at::empty({6, H, M}, L.get("log_dt").options());
    T* d = L.derived.data_ptr<T>();
    const T* log_dt = L.ptr<T>("log_dt");
    const T* rl = L.ptr<T>("A_re_log");
    const T* im = L.ptr<T>("A_im");
    const int64_t n = H * M;
    for (int64_t h = 0; h < H; ++h) {
      const T dt = std::exp(log_dt[h]);
      for (int64_t m = 0; m < M; ++m) {
        const int64_t i = h * M + m;
        zoh<T>(dt, rl[i], im[i], d + i, d + n + i, d + 2 * n + i, d + 3 * n + i);
      }
    }
    std::memcpy(d + 4 * n, L.ptr<T>("C_re"), n * sizeof(T));
    std::memcpy(d + 5 * n, L.ptr<T>("C_im"), n * sizeof(T));
  } else if (L.kind == Kind::S5) {
    // derived: Abar (2, P); derived2: B_int (2P, H) rows (re, im) of Bbar, then C_int (H, 2P)
    // with columns (2 C re, -2 C im): bu = x B_int^T is the interleaved complex B̄x and
    // y = h C_int^T = 2 Re(C h)
    const int64_t P = L.M, H = L.get("B_re").size(1);
    L.derived = at::empty({4, P}, L.get("B_re").options());
    L.derived2 = at::empty({4 * P * H}, L.get("B_re").options());
    T* ab = L.derived.data_ptr<T>();
    T* bi = L.derived2.data_ptr<T>();
    T* ci = bi + 2 * P * H;
    const T *lr = L.ptr<T>("Lambda_re_log"), *li = L.ptr<T>("Lambda_im"),
            *ld = L.ptr<T>("log_dt");
    const T *br = L.ptr<T>("B_re"), *bim = L.ptr<T>("B_im");
    const T *cr = L.ptr<T>("C_re"), *cim = L.ptr<T>("C_im");
    for (int64_t p = 0; p < P; ++p) {
      T sr, si;
      zoh<T>(std::exp(ld[p]), lr[p], li[p], ab + p, ab + P + p, &sr, &si);
      for (int64_t j = 0; j < H; ++j) {
        const T r = br[p * H + j], i = bim[p * H + j];
        bi[(2 * p) * H + j] = sr * r - si * i;
        bi[(2 * p + 1) * H + j] = sr * i + si * r;
      }
    }
    for (int64_t k = 0; k < H; ++k) {
      for (int64_t p = 0; p < P; ++p) {
        ci[k * 2 * P + 2 * p] = 2 * cr[k * P + p];
        ci[k * 2 * P + 2 * p + 1] = -2 * cim[k * P + p];
      }
    }
  } else if (L.kind == Kind::Mamba) {
    const Tensor& a_log = L.get("A_log");
    L.derived = at::empty_like(a_log);
    const T* a = a_log.data_ptr<T>();
    T* A = L.derived.data_ptr<T>();
    for (int64_t i = 0; i < a_log.numel(); ++i) A[i] = -std::exp(a[i]);
  }
}

// Scratch sizes (elements) of one layer step for B rows.
int64_t scratch_of(const Layer& L, int64_t B, int64_t D) {
  switch (L.kind) {
    case Kind::Mamba:
      return B * (2 * L.E + 3 * L.E + L.R + 2 * L.N + L.E);
    case Kind::S4D:
      return B * (2 * D + 2 * D);
    case Kind::S5:
      return B * (2 * L.M + 4 * D);
    case Kind::GRU:
      return B * (7 * D);
    case Kind::LSTM:
      return B * (5 * D);
  }
  return 0;
}

// One layer step: y = layer(u) with the state (sin -> sout, may alias), added into `res` when
// `acc` (the residual), else written to `res`. keep[b] in {0, 1} or null.
template <typename T>
void layer_step(const Layer& L, int64_t B, int64_t D, const T* u, T* res, bool acc,
                const std::vector<T*>& sin, const std::vector<T*>& sout, const T* keep, T* work) {
  auto kp = [&](int64_t b) { return keep ? keep[b] : T(1); };
  if (L.kind == Kind::Mamba) {
    const int64_t E = L.E, N = L.N, K = L.K, R = L.R, W = R + 2 * N;
    T* xz = work;               // (B, 2E)
    T* xc = xz + B * 2 * E;     // (B, E)
    T* g = xc + B * E;          // (B, E)
    T* dt = g + B * E;          // (B, E)
    T* xdbl = dt + B * E;       // (B, R + 2N)
    T* y = xdbl + B * W;        // (B, E)
    linear<T>(B, D, 2 * E, u, D, L.ptr<T>("in_proj.weight"), D, L.ptr<T>("in_proj.bias"), xz,
              2 * E, false);
    const T* cw = L.ptr<T>("conv1d.weight");
    const T* cb = L.ptr<T>("conv1d.bias");
    for (int64_t b = 0; b < B; ++b) {
      const T k = kp(b);
      const T* cs = sin[0] + b * E * K;
      T* ns = sout[0] + b * E * K;
      const T* xin = xz + b * 2 * E;
      // the conv window shifts by one: new[d, j] = old[d, j + 1], new[d, K-1] = x[d]
      T* xr = xc + b * E;
      if (K == 4) {
#pragma omp simd
        for (int64_t d = 0; d < E; ++d) {
          const T s1 = cs[4 * d + 1] * k, s2 = cs[4 * d + 2] * k, s3 = cs[4 * d + 3] * k;
          const T s4 = xin[d];
          ns[4 * d] = s1;
          ns[4 * d + 1] = s2;
          ns[4 * d + 2] = s3;
          ns[4 * d + 3] = s4;
          const T* w = cw + 4 * d;
          xr[d] = (s1 * w[0] + s2 * w[1] + s3 * w[2] + s4 * w[3]) + cb[d];
        }
      } else {
        for (int64_t d = 0; d < E; ++d) {
          for (int64_t j = 0; j + 1 < K; ++j) ns[d * K + j] = cs[d * K + j + 1] * k;
          ns[d * K + K - 1] = xin[d];
          T a = 0;
          for (int64_t j = 0; j < K; ++j) a += ns[d * K + j] * cw[d * K + j];
          xr[d] = a + cb[d];
        }
      }
      std::memcpy(g + b * E, xin + E, E * sizeof(T));
    }
    silu_inplace<T>(B * E, xc);
    silu_inplace<T>(B * E, g);
    linear<T>(B, E, W, xc, E, L.ptr<T>("x_proj.weight"), E, nullptr, xdbl, W, false);
    linear<T>(B, R, E, xdbl, W, L.ptr<T>("dt_proj.weight"), R, L.ptr<T>("dt_proj.bias"), dt, E,
              false);
    softplus_inplace<T>(B * E, dt);
    const T* A = L.derived.data_ptr<T>();
    const T* Dsk = L.ptr<T>("D");
    for (int64_t b = 0; b < B; ++b) {
      const T k = kp(b);
      const T* Bm = xdbl + b * W + R;
      const T* Cm = Bm + N;
      int64_t d0 = 0;
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float>) {
        if (N == 16) d0 = mamba_scan16(E, dt + b * E, xc + b * E, g + b * E, A, Dsk, Bm, Cm, k,
                                       sin[1] + b * E * N, sout[1] + b * E * N, y + b * E);
      }
#endif
      for (int64_t d = d0; d < E; ++d) {
        const int64_t bd = b * E + d;
        const T dtt = dt[bd], xv = xc[bd], du = dtt * xv;
        const T* h = sin[1] + bd * N;
        T* hn = sout[1] + bd * N;
        const T* Ad = A + d * N;
        T a = 0;
#if defined(__AVX512F__)
        if constexpr (std::is_same_v<T, float>) {
          if (N % 16 == 0) {
            __m512 acc = _mm512_setzero_ps();
            const __m512 vdt = _mm512_set1_ps(dtt), vdu = _mm512_set1_ps(du),
                         vk = _mm512_set1_ps(k);
            for (int64_t n = 0; n < N; n += 16) {
              const __m512 e = exp16(_mm512_mul_ps(vdt, _mm512_loadu_ps(Ad + n)));
              const __m512 hv = _mm512_mul_ps(_mm512_loadu_ps(h + n), vk);
              const __m512 v = _mm512_fmadd_ps(e, hv, _mm512_mul_ps(vdu, _mm512_loadu_ps(Bm + n)));
              _mm512_storeu_ps(hn + n, v);
              acc = _mm512_fmadd_ps(v, _mm512_loadu_ps(Cm + n), acc);
            }
            a = _mm512_reduce_add_ps(acc);
            y[bd] = (a + Dsk[d] * xv) * g[bd];
            continue;
          }
        }
#endif
#pragma omp simd reduction(+ : a)
        for (int64_t n = 0; n < N; ++n) {
          const T v = std::exp(dtt * Ad[n]) * (h[n] * k) + du * Bm[n];
          hn[n] = v;
          a += v * Cm[n];
        }
        y[bd] = (a + Dsk[d] * xv) * g[bd];
      }
    }
    linear<T>(B, E, D, y, E, L.ptr<T>("out_proj.weight"), E, L.ptr<T>("out_proj.bias"), res, D,
              acc);
    return;
  }
  if (L.kind == Kind::GRU || L.kind == Kind::LSTM) {
    const int64_t G = L.kind == Kind::GRU ? 3 : 4;
    T* gi = work;                               // (B, G D)
    T* gh = gi + B * G * D;                     // GRU: (B, 3D)
    T* hm = L.kind == Kind::GRU ? gh + B * 3 * D : gi + B * G * D;  // masked h (B, D)
    const T* h = sin[0];
    if (keep) {
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < D; ++i) hm[b * D + i] = sin[0][b * D + i] * keep[b];
      h = hm;
    }
    const T* wih = L.ptr<T>("weight_ih");
    const T* whh = L.ptr<T>("weight_hh");
    linear<T>(B, D, G * D, u, D, wih, D, L.ptr<T>("bias_ih"), gi, G * D, false);
    if (L.kind == Kind::GRU) {
      linear<T>(B, D, 3 * D, h, D, whh, D, L.ptr<T>("bias_hh"), gh, 3 * D, false);
      for (int64_t b = 0; b < B; ++b) {
        const T* a = gi + b * 3 * D;
        const T* c = gh + b * 3 * D;
        const T* hp = h + b * D;
        T* hn = sout[0] + b * D;
        T* o = res + b * D;
        // r, z = sigmoid(gi + gh) over the first 2D; n = tanh(gi_n + r gh_n); simple loops, each
        // of which gcc vectorises (one loop with everything in it stays scalar)
        T* rz = const_cast<T*>(c);
        T* nn = const_cast<T*>(a) + 2 * D;
#pragma omp simd
        for (int64_t i = 0; i < 2 * D; ++i) rz[i] = a[i] + rz[i];
        sigmoid_inplace<T>(2 * D, rz);
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) nn[i] = nn[i] + rz[i] * c[2 * D + i];
        tanh_inplace<T>(D, nn);
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) hn[i] = (T(1) - rz[D + i]) * nn[i] + rz[D + i] * hp[i];
        add_or_copy<T>(D, hn, o, acc);
      }
    } else {
      linear<T>(B, D, 4 * D, h, D, whh, D, L.ptr<T>("bias_hh"), gi, 4 * D, true);
      for (int64_t b = 0; b < B; ++b) {
        const T* a = gi + b * 4 * D;
        const T* cp = sin[1] + b * D;
        const T k = kp(b);
        T* hn = sout[0] + b * D;
        T* cn = sout[1] + b * D;
        T* o = res + b * D;
        T* ga = const_cast<T*>(a);
        sigmoid_inplace<T>(2 * D, ga);           // i, f
        tanh_inplace<T>(D, ga + 2 * D);          // g
        sigmoid_inplace<T>(D, ga + 3 * D);       // o
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) cn[i] = a[D + i] * (cp[i] * k) + a[i] * a[2 * D + i];
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) ga[2 * D + i] = cn[i];
        tanh_inplace<T>(D, ga + 2 * D);
#pragma omp simd
        for (int64_t i = 0; i < D; ++i) hn[i] = a[3 * D + i] * a[2 * D + i];
        add_or_copy<T>(D, hn, o, acc);
      }
    }
    return;
  }
  // S4D / S5: y from the recurrence, then out = GLU(W gelu(y + D u) + b)
  T* y = work;              // (B, D)
  T* v = y + B * D;         // (B, D)
  T* o = v + B * D;         // (B, 2D)
  if (L.kind == Kind::S4D) {
    const int64_t M = L.M, n = D * M;
    const T* c = L.derived.data_ptr<T>();
    const T *ar = c, *ai = c + n, *br = c + 2 * n, *bi = c + 3 * n, *cr = c + 4 * n,
            *ci = c + 5 * n;
    for (int64_t b = 0; b < B; ++b) {
      const T k = kp(b);
      for (int64_t h = 0; h < D; ++h) {
        const T xv = u[b * D + h];
        const T* hp = sin[0] + (b * D + h) * 2 * M;
        T* hq = sout[0] + (b * D + h) * 2 * M;
        const int64_t o0 = h * M;
        T a = 0;
#pragma omp simd reduction(+ : a)
        for (int64_t m = 0; m < M; ++m) {
          const T pr = hp[2 * m] * k, pi = hp[2 * m + 1] * k;
          const T re = ar[o0 + m] * pr - ai[o0 + m] * pi + br[o0 + m] * xv;
          const T im = ar[o0 + m] * pi + ai[o0 + m] * pr + bi[o0 + m] * xv;
          hq[2 * m] = re;
          hq[2 * m + 1] = im;
          a += cr[o0 + m] * re - ci[o0 + m] * im;
        }
        y[b * D + h] = 2 * a;
      }
    }
  } else {  // S5
    const int64_t P = L.M;
    const T* ab = L.derived.data_ptr<T>();
    const T* bint = L.derived2.data_ptr<T>();
    const T* cint = bint + 2 * P * D;
    T* bu = o + B * 2 * D;  // (B, 2P)
    linear<T>(B, D, 2 * P, u, D, bint, D, nullptr, bu, 2 * P, false);
    for (int64_t b = 0; b < B; ++b) {
      const T k = kp(b);
      const T* hp = sin[0] + b * 2 * P;
      T* hq = sout[0] + b * 2 * P;
      const T* w = bu + b * 2 * P;
#pragma omp simd
      for (int64_t p = 0; p < P; ++p) {
        const T pr = hp[2 * p] * k, pi = hp[2 * p + 1] * k;
        const T re = ab[p] * pr - ab[P + p] * pi + w[2 * p];
        const T im = ab[p] * pi + ab[P + p] * pr + w[2 * p + 1];
        hq[2 * p] = re;
        hq[2 * p + 1] = im;
      }
    }
    linear<T>(B, 2 * P, D, sout[0], 2 * P, cint, 2 * P, nullptr, y, D, false);
  }
  const T* Dsk = L.ptr<T>("D");
  for (int64_t b = 0; b < B; ++b) {
#pragma omp simd
    for (int64_t h = 0; h < D; ++h) {
      const T s = y[b * D + h] + Dsk[h] * u[b * D + h];
      v[b * D + h] = T(0.5) * s * (T(1) + std::erf(s * T(M_SQRT1_2)));
    }
  }
  linear<T>(B, D, 2 * D, v, D, L.ptr<T>("out_proj.weight"), D, L.ptr<T>("out_proj.bias"), o,
            2 * D, false);
  for (int64_t b = 0; b < B; ++b) {
    const T* ob = o + b * 2 * D;
    T* r = res + b * D;
#pragma omp simd
    for (int64_t h = 0; h < D; ++h) {
      const T val = ob[h] / (T(1) + std::exp(-ob[D + h]));
      r[h] = acc ? r[h] + val : val;
    }
  }
}

Kind kind_of(const std::string& s) {
  if (s == "s4d") return Kind::S4D;
  if (s == "s5") return Kind::S5;
  if (s == "mamba") return Kind::Mamba;
  if (s == "gru") return Kind::GRU;
  if (s == "lstm") return Kind::LSTM;
  TORCH_CHECK(false, "fused policy step: unsupported layer kind ", s);
}

// -- the stepper --------------------------------------------------------------------------------
class Stepper {
 public:
  Stepper(const py::dict& cfg, const py::dict& params) {
    for (auto item : params) {
      Tensor t = item.second.cast<Tensor>();
      TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(),
                  "fused policy step: parameters must be contiguous CPU tensors");
      all_[item.first.cast<std::string>()] = t;
    }
    mode_policy_ = cfg["mode"].cast<std::string>() == "policy";
    D_ = cfg["d_model"].cast<int64_t>();
    const Kind kind = kind_of(cfg["kind"].cast<std::string>());
    auto prefixes = cfg["layer_prefixes"].cast<std::vector<std::string>>();
    auto eps = cfg["norm_eps"].cast<std::vector<double>>();
    for (size_t i = 0; i < prefixes.size(); ++i) {
      Layer L;
      L.kind = kind;
      const std::string& pre = prefixes[i];
      for (auto& kv : all_) {
        if (kv.first.rfind(pre, 0) == 0) L.p[kv.first.substr(pre.size())] = kv.second;
      }
      if (kind == Kind::Mamba) {
        L.E = cfg["d_inner"].cast<int64_t>();
        L.N = cfg["d_state"].cast<int64_t>();
        L.K = cfg["d_conv"].cast<int64_t>();
        L.R = cfg["dt_rank"].cast<int64_t>();
        L.n_state = 2;
      } else if (kind == Kind::S4D || kind == Kind::S5) {
        L.M = cfg["modes"].cast<int64_t>();
      } else if (kind == Kind::LSTM) {
        L.n_state = 2;
      }
      if (mode_policy_) L.eps = eps[i];
      layers_.push_back(std::move(L));
    }
    dtype_ = all_.begin()->second.scalar_type();
    for (auto& kv : all_) {
      TORCH_CHECK(kv.second.scalar_type() == dtype_,
                  "fused policy step: parameters of mixed dtypes");
    }
    TORCH_CHECK(dtype_ == at::kFloat || dtype_ == at::kDouble,
                "fused policy step: float32 or float64 parameters only");
    if (mode_policy_) {
      obs_discrete_ = cfg["obs"].cast<std::string>() == "discrete";
      d_obs_ = cfg["d_obs"].cast<int64_t>();
      hidden_ = cfg["encoder_hidden"].cast<int64_t>();
      final_eps_ = cfg["final_eps"].cast<double>();
      placement_ = cfg["placement"].cast<std::string>();
      TORCH_CHECK(placement_ == "pre" || placement_ == "post" || placement_ == "none",
                  "fused policy step: norm placement must be pre, post or none");
      head_gauss_ = cfg["head"].cast<std::string>() == "gaussian";
      head_groups_ = cfg["head_groups"].cast<std::vector<int64_t>>();
      in_context_ = cfg["in_context"].cast<bool>();
      if (in_context_) {
        ctx_action_ = cfg["ctx_action"].cast<std::string>();
        ctx_nvec_ = cfg["ctx_nvec"].cast<std::vector<int64_t>>();
        ctx_dim_ = cfg["ctx_dim"].cast<int64_t>();
      }
      P_ = 0;
      for (auto n : head_groups_) P_ += n;
      if (head_gauss_) P_ *= 2;
    }
    for (auto& kv : all_) held_.push_back({kv.second, -2, nullptr});
    refresh_if_stale();
  }

  // (dist_params, value, state) or None where the inputs are not what the fused step takes
  // (the caller then runs the reference step, which raises the proper error for bad input).
  py::object step(const Tensor& obs, const py::object& state, const py::object& reset,
                  const py::object& prev_action, const py::object& prev_reward,
                  const py::object& prev_done, bool inplace) {
    if (!obs.device().is_cpu()) return py::none();
    int64_t B;
    if (!mode_policy_) {
      if (obs.dim() != 2 || obs.size(1) != D_ || obs.scalar_type() != dtype_) return py::none();
      B = obs.size(0);
    } else if (obs_discrete_) {
      if (obs.dim() != 1 || obs.is_floating_point() || obs.is_complex() ||
          obs.scalar_type() == at::kBool)
        return py::none();
      B = obs.size(0);
    } else {
      if (obs.dim() < 1 || obs.scalar_type() != dtype_) return py::none();
      B = obs.size(0);
      if (B == 0 || obs.numel() != B * d_obs_) return py::none();
    }
    if (B < 1) return py::none();
    // reset mask -> keep (B,) in {0, 1}
    Tensor reset_t;
    if (!reset.is_none()) {
      reset_t = reset.cast<Tensor>();
      if (reset_t.scalar_type() != at::kBool || reset_t.dim() != 1 || reset_t.size(0) != B ||
          !reset_t.device().is_cpu())
        return py::none();
    }
    // state: a tuple of one tuple of tensors per layer
    const int64_t nl = int64_t(layers_.size());
    std::vector<std::vector<Tensor>> st(nl);
    if (!py::isinstance<py::tuple>(state) && !py::isinstance<py::list>(state)) return py::none();
    py::sequence seq = state.cast<py::sequence>();
    if (int64_t(py::len(seq)) != nl) return py::none();
    for (int64_t i = 0; i < nl; ++i) {
      py::object li = seq[i];
      if (!py::isinstance<py::tuple>(li)) return py::none();
      py::tuple lt = li.cast<py::tuple>();
      if (int64_t(lt.size()) != layers_[i].n_state) return py::none();
      for (int64_t j = 0; j < layers_[i].n_state; ++j) {
        if (!THPVariable_Check(lt[j].ptr())) return py::none();
        Tensor t = lt[j].cast<Tensor>();
        if (!state_ok(layers_[i], j, t, B)) return py::none();
        st[i].push_back(t);
      }
    }
    Tensor ctx;
    if (in_context_) {
      ctx = context(B, prev_action, prev_reward, prev_done);
      if (!ctx.defined()) return py::none();
    }
    Tensor obs_in = obs;
    if (mode_policy_ && obs_discrete_) {
      obs_in = obs.to(at::kLong).contiguous();
      const int64_t* op = obs_in.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b)
        if (op[b] < 0 || op[b] >= d_obs_) return py::none();
    } else {
      obs_in = obs.contiguous();
    }
    if (refresh_if_stale() != 0) return py::none();

    // outputs
    auto opts = at::TensorOptions().dtype(dtype_);
    std::vector<std::vector<Tensor>> out_state(nl);
    for (int64_t i = 0; i < nl; ++i) {
      for (auto& t : st[i]) {
        if (inplace) {
          if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
          out_state[i].push_back(t);
        } else {
          out_state[i].push_back(at::empty_like(t));
        }
      }
    }
    Tensor dist, value;
    if (mode_policy_) {
      dist = at::empty({B, P_}, opts);
      value = at::empty({B}, opts);
    } else {
      dist = at::empty({B, D_}, opts);
    }
    OneBlasThread one_thread;
    AT_DISPATCH_FLOATING_TYPES(dtype_, "fused_policy_step", [&] {
      run<scalar_t>(B, obs_in, reset_t, ctx, st, out_state, dist, value);
    });
    py::object value_obj = mode_policy_ ? py::cast(value) : py::none();
    if (inplace) return py::make_tuple(dist, value_obj, state);  // the caller's own tuple
    py::tuple ns(nl);
    for (int64_t i = 0; i < nl; ++i) {
      py::tuple lt(out_state[i].size());
      for (size_t j = 0; j < out_state[i].size(); ++j) lt[j] = py::cast(out_state[i][j]);
      ns[i] = lt;
    }
    return py::make_tuple(dist, value_obj, ns);
  }

  // 0: up to date (re-derived if a parameter changed); 1: a parameter changed dtype or layout.
  int refresh_if_stale() {
    bool changed = false;
    for (auto& h : held_) {
      const int64_t v = version_of(h.t);
      const void* p = h.t.data_ptr();
      if (v != h.version || p != h.ptr || v < 0) {
        changed = true;
        h.version = v;
        h.ptr = p;
      }
    }
    if (!changed) return 0;
    for (auto& h : held_) {
      if (h.t.scalar_type() != dtype_ || !h.t.is_contiguous()) return 1;
    }
    AT_DISPATCH_FLOATING_TYPES(dtype_, "fused_policy_derive", [&] {
      for (auto& L : layers_) derive<scalar_t>(L);
      derive_encoder<scalar_t>();
    });
    ++derivations_;
    return 0;
  }

  int64_t derivations() const { return derivations_; }

 private:
  bool state_ok(const Layer& L, int64_t j, const Tensor& t, int64_t B) const {
    if (!t.device().is_cpu() || !t.is_contiguous() || t.size(0) != B) return false;
    const bool cplx = L.kind == Kind::S4D || L.kind == Kind::S5;
    const auto want = cplx ? (dtype_ == at::kFloat ? at::kComplexFloat : at::kComplexDouble)
                           : dtype_;
    if (t.scalar_type() != want) return false;
    switch (L.kind) {
      case Kind::Mamba:
        return t.dim() == 3 && t.size(1) == L.E && t.size(2) == (j == 0 ? L.K : L.N);
      case Kind::S4D:
        return t.dim() == 3 && t.size(1) == D_ && t.size(2) == L.M;
      case Kind::S5:
        return t.dim() == 2 && t.size(1) == L.M;
      default:
        return t.dim() == 2 && t.size(1) == D_;
    }
  }

  // The in-context inputs [onehot(a) or a, r, d] as a (B, ctx_dim + 2) tensor of the policy
  // dtype, or undefined where they are not of the expected shapes and types.
  Tensor context(int64_t B, const py::object& pa, const py::object& pr, const py::object& pd) {
    if (!THPVariable_Check(pa.ptr()) || !THPVariable_Check(pr.ptr()) ||
        !THPVariable_Check(pd.ptr()))
      return Tensor();
    Tensor a = pa.cast<Tensor>(), r = pr.cast<Tensor>(), d = pd.cast<Tensor>();
    for (auto* t : {&a, &r, &d})
      if (!t->device().is_cpu()) return Tensor();
    if (r.dim() != 1 || r.size(0) != B || d.dim() != 1 || d.size(0) != B) return Tensor();
    if (r.is_complex() || d.is_complex()) return Tensor();
    auto ctx = at::zeros({B, ctx_dim_ + 2}, at::TensorOptions().dtype(dtype_));
    if (ctx_action_ == "box") {
      if (a.size(0) != B || a.numel() != B * ctx_dim_ || a.is_complex()) return Tensor();
      ctx.narrow(1, 0, ctx_dim_).copy_(a.reshape({B, ctx_dim_}));
    } else {
      const bool multi = ctx_action_ == "multidiscrete";
      const int64_t k = int64_t(ctx_nvec_.size());
      if (a.is_floating_point() || a.is_complex() || a.scalar_type() == at::kBool) {
        // one_hot needs integer actions; let the reference say so
        return Tensor();
      }
      if (multi ? (a.dim() != 2 || a.size(0) != B || a.size(1) != k)
                : (a.dim() != 1 || a.size(0) != B))
        return Tensor();
      auto ai = a.to(at::kLong).reshape({B, k}).contiguous();
      const int64_t* ap = ai.data_ptr<int64_t>();
      AT_DISPATCH_FLOATING_TYPES(dtype_, "ctx_onehot", [&] {
        scalar_t* c = ctx.data_ptr<scalar_t>();
        for (int64_t b = 0; b < B; ++b) {
          int64_t off = 0;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t v = ap[b * k + j];
            if (v < 0 || v >= ctx_nvec_[j]) {
              off = -1;
              break;
            }
            c[b * (ctx_dim_ + 2) + off + v] = scalar_t(1);
            off += ctx_nvec_[j];
          }
          if (off < 0) {
            ctx = Tensor();
            return;
          }
        }
      });
      if (!ctx.defined()) return Tensor();
    }
    ctx.select(1, ctx_dim_).copy_(r);
    ctx.select(1, ctx_dim_ + 1).copy_(d);
    return ctx;
  }

  template <typename T>
  void derive_encoder() {
    if (!mode_policy_) return;
    auto it = all_.find("condition");
    if (it == all_.end()) return;
    // W0 [o; c] + b0 = W0[:, :d_obs] o + (b0 + W0[:, d_obs:] c)   (o: the one-hot for Discrete)
    at::NoGradGuard no_grad;
    const Tensor w0 = all_.at("encoder.net.0.weight").detach();
    const Tensor b0 = all_.at("encoder.net.0.bias").detach();
    bias0_ = (b0 + at::mv(w0.narrow(1, d_obs_, w0.size(1) - d_obs_), it->second.detach()))
                 .contiguous();
  }

  template <typename T>
  T* scratch(int64_t n) {
    if (work_.numel() < n || work_.scalar_type() != dtype_) {
      work_ = at::empty({n}, at::TensorOptions().dtype(dtype_));
    }
    return work_.data_ptr<T>();
  }

  template <typename T>
  void run(int64_t B, const Tensor& obs, const Tensor& reset, const Tensor& ctx,
           const std::vector<std::vector<Tensor>>& st, std::vector<std::vector<Tensor>>& ost,
           Tensor& dist, Tensor& value) {
    const int64_t D = D_;
    int64_t layer_work = 0;
    for (auto& L : layers_) layer_work = std::max(layer_work, scratch_of(L, B, D));
    const int64_t enc_work = mode_policy_ ? B * (hidden_ + 3 * D) : 0;
    T* w = scratch<T>(layer_work + enc_work + B + 64);
    T* keep = nullptr;
    if (reset.defined()) {
      keep = w;
      const bool* r = reset.data_ptr<bool>();
      for (int64_t b = 0; b < B; ++b) keep[b] = r[b] ? T(0) : T(1);
    }
    T* enc = w + B;
    T* lw = enc + enc_work;
    auto ptr_of = [](const Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); };
    auto pget = [&](const char* k) -> const T* {
      auto it = all_.find(k);
      return it == all_.end() ? nullptr : it->second.data_ptr<T>();
    };
    if (!mode_policy_) {
      std::vector<T*> sin, sout;
      for (size_t j = 0; j < st[0].size(); ++j) {
        sin.push_back(ptr_of(st[0][j]));
        sout.push_back(ptr_of(ost[0][j]));
      }
      layer_step<T>(layers_[0], B, D, obs.data_ptr<T>(), dist.data_ptr<T>(), false, sin, sout,
                    keep, lw);
      return;
    }
    T* h1 = enc;                 // (B, hidden)
    T* e = h1 + B * hidden_;     // (B, D)
    T* x = e + B * D;            // (B, D)  the residual stream
    T* u = x + B * D;            // (B, D)  its norm
    // encoder
    const T* w0 = pget("encoder.net.0.weight");
    const int64_t ld0 = all_.at("encoder.net.0.weight").size(1);
    const T* b0 = bias0_.defined() ? bias0_.data_ptr<T>() : pget("encoder.net.0.bias");
    if (obs_discrete_) {
      const int64_t* op = obs.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b)  // one_hot(o) W0^T = the column o of W0
        for (int64_t j = 0; j < hidden_; ++j) h1[b * hidden_ + j] = w0[j * ld0 + op[b]] + b0[j];
    } else {
      linear<T>(B, d_obs_, hidden_, obs.data_ptr<T>(), d_obs_, w0, ld0, b0, h1, hidden_, false);
    }
    tanh_inplace<T>(B * hidden_, h1);
    linear<T>(B, hidden_, D, h1, hidden_, pget("encoder.net.2.weight"), hidden_,
              pget("encoder.net.2.bias"), e, D, false);
    tanh_inplace<T>(B * D, e);
    const int64_t ldin = all_.at("in_proj.weight").size(1);
    linear<T>(B, D, D, e, D, pget("in_proj.weight"), ldin, pget("in_proj.bias"), x, D, false);
    if (ctx.defined()) {
      linear<T>(B, ctx_dim_ + 2, D, ctx.data_ptr<T>(), ctx_dim_ + 2, pget("in_proj.weight") + D,
                ldin, nullptr, x, D, true);
    }
    // the residual stack: pre  x <- x + f(LN x);  post  x <- LN(x + f x);  none  x <- x + f x
    for (size_t i = 0; i < layers_.size(); ++i) {
      const std::string pre = "norms." + std::to_string(i) + ".";
      const T* nw = pget((pre + "weight").c_str());
      const T* nb = pget((pre + "bias").c_str());
      if (placement_ == "pre") {
        layer_norm_rows<T>(B, D, x, nw, nb, T(layers_[i].eps), u);
      } else {
        std::memcpy(u, x, B * D * sizeof(T));
      }
      std::vector<T*> sin, sout;
      for (size_t j = 0; j < st[i].size(); ++j) {
        sin.push_back(ptr_of(st[i][j]));
        sout.push_back(ptr_of(ost[i][j]));
      }
      layer_step<T>(layers_[i], B, D, u, x, true, sin, sout, keep, lw);
      if (placement_ == "post") layer_norm_rows<T>(B, D, x, nw, nb, T(layers_[i].eps), x);
    }
    if (placement_ == "none") {
      std::memcpy(u, x, B * D * sizeof(T));
    } else {
      layer_norm_rows<T>(B, D, x, pget("final_norm.weight"), pget("final_norm.bias"),
                         T(final_eps_), u);
    }
    // heads
    T* dp = dist.data_ptr<T>();
    linear<T>(B, D, 1, u, D, pget("value.weight"), D, pget("value.bias"), value.data_ptr<T>(), 1,
              false);
    if (head_gauss_) {
      const int64_t A = head_groups_[0];
      linear<T>(B, D, A, u, D, pget("head.mean.weight"), D, pget("head.mean.bias"), dp, 2 * A,
                false);
      const T* ls = pget("head.log_std");
      for (int64_t b = 0; b < B; ++b) std::memcpy(dp + b * 2 * A + A, ls, A * sizeof(T));
    } else if (head_groups_.size() == 1 && all_.count("head.linear.weight")) {
      const int64_t n = head_groups_[0];
      linear<T>(B, D, n, u, D, pget("head.linear.weight"), D, pget("head.linear.bias"), dp, n,
                false);
      log_softmax_rows<T>(B, n, dp, n);
    } else {
      int64_t off = 0;
      for (size_t j = 0; j < head_groups_.size(); ++j) {
        const int64_t n = head_groups_[j];
        const std::string pre = "head.heads." + std::to_string(j) + ".linear.";
        linear<T>(B, D, n, u, D, pget((pre + "weight").c_str()), D, pget((pre + "bias").c_str()),
                  dp + off, P_, false);
        log_softmax_rows<T>(B, n, dp + off, P_);
        off += n;
      }
    }
  }

  std::unordered_map<std::string, Tensor> all_;
  std::vector<Held> held_;
  std::vector<Layer> layers_;
  Tensor work_, bias0_;
  at::ScalarType dtype_;
  bool mode_policy_ = true, obs_discrete_ = false, head_gauss_ = false, in_context_ = false;
  int64_t D_ = 0, d_obs_ = 0, hidden_ = 0, P_ = 0, ctx_dim_ = 0, derivations_ = 0;
  double final_eps_ = 1e-5;
  std::vector<int64_t> head_groups_, ctx_nvec_;
  std::string ctx_action_, placement_ = "pre";
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<Stepper>(m, "Stepper")
      .def(py::init<const py::dict&, const py::dict&>())
      .def("step", &Stepper::step, py::arg("obs"), py::arg("state"), py::arg("reset"),
           py::arg("prev_action"), py::arg("prev_reward"), py::arg("prev_done"),
           py::arg("inplace"))
      .def("refresh_if_stale", &Stepper::refresh_if_stale)
      .def("derivations", &Stepper::derivations);
}
