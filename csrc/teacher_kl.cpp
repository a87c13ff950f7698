// Fused forgetting-teacher + softmax + KL on the CPU (parallel over rows).
//
//   t = teacher - alpha * relu(augmented - teacher)        (t = teacher without augmented)
//   kl[i] = sum_v softmax(t_i)_v * (log_softmax(t_i)_v - log_softmax(s_i)_v)
//         = sum_v e^(t-m_t) (t - s) / Z_t - lse_t + lse_s
//   d kl[i] / d s_i = softmax(s_i) - softmax(t_i)
//
// Per row: one pass builds t in a thread-local buffer and the two maxima, one pass
// sums the exponentials; both are plain loops over contiguous floats that the compiler
// vectorises (expf from libmvec; built with -ffast-math, so -inf is clamped to -1e30 on
// load, where e^(x - m) is exactly 0). Sums run in fp32 within blocks of 256 and in fp64 across blocks. Forward
// returns kl and each side's (max, log-sum) as a (2, N) buffer; backward writes
// g * (e^((s - m_s) - log Z_s) - e^((t - m_t) - log Z_t)) in one pass (no large lse subtracted). The student in any float dtype; the teacher and augmented logits in fp32
// (an fp32 cache is never rounded to a bf16 student's precision); fp32 math.
// -inf logits: 0 log 0 = 0. The row's KL is A/Z_t - (m_t - m_s) - log Z_t + log Z_s, so two
// large log-sum-exps are never subtracted (logits near 3e4 would cancel to 0 in fp32).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#define CHECK_CPU(x) TORCH_CHECK(!(x).is_cuda(), #x " must be a CPU tensor")
#define CHECK_2D(x) TORCH_CHECK((x).dim() == 2, #x " must be (N, V)")

namespace {
constexpr int64_t kBlock = 256;
// -inf logits are clamped to this on load: the file builds with -ffast-math, which assumes no
// infinities, and e^(-1e30 - m) is exactly 0, so a -inf entry contributes 0 (0 log 0 = 0)
constexpr float kNegBig = -1e30f;

template <typename scalar_t>
inline void load_row(const scalar_t* s, const float* t, const float* a, float alpha, int64_t V, float* sf, float* tf,
                     float shift_s, float shift_t) {
  // shift_*: the row's max, subtracted here (backward) in a loop of its own: -ffast-math may
  // reassociate (x - m) - log Z into x - (m + log Z) within one expression, which loses the
  // digits of large logits
  for (int64_t v = 0; v < V; ++v) sf[v] = std::max(static_cast<float>(s[v]), kNegBig) - shift_s;
  if (a) {
    for (int64_t v = 0; v < V; ++v) {
      const float tv = std::max(t[v], kNegBig);
      tf[v] = std::max(tv - alpha * std::max(std::max(a[v], kNegBig) - tv, 0.f), kNegBig) - shift_t;
    }
  } else {
    for (int64_t v = 0; v < V; ++v) tf[v] = std::max(t[v], kNegBig) - shift_t;
  }
}

inline float row_max(const float* x, int64_t V) {
  float m = x[0];
  for (int64_t v = 1; v < V; ++v) m = std::max(m, x[v]);
  return m;
}

// Runs body(i, s_row_fp32, t_row_fp32) for every row, rows split across threads; each
// thread converts its rows into one reused fp32 buffer (forgetting teacher applied).
template <typename scalar_t, typename Body>
void for_each_row(const scalar_t* s, const float* t, const float* a, float alpha, int64_t N, int64_t V, Body body,
                  const float* shift_s = nullptr, const float* shift_t = nullptr) {
  at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> buf(2 * V);
    float* sf = buf.data();
    float* tf = buf.data() + V;
    for (int64_t i = lo; i < hi; ++i) {
      load_row(s + i * V, t + i * V, a ? a + i * V : nullptr, alpha, V, sf, tf, shift_s ? shift_s[i] : 0.f,
               shift_t ? shift_t[i] : 0.f);
      body(i, sf, tf);
    }
  });
}

template <typename scalar_t>
void forward_rows(const scalar_t* s, const float* t, const float* a, float alpha, int64_t N, int64_t V, float* kl,
                  float* lse_s, float* lse_t) {
  for_each_row(s, t, a, alpha, N, V, [&](int64_t i, const float* sf, const float* tf) {
    const float m_t = row_max(tf, V), m_s = row_max(sf, V);
    double z_t = 0.0, z_s = 0.0, acc = 0.0;
    for (int64_t b = 0; b < V; b += kBlock) {
      const int64_t e = std::min(V, b + kBlock);
      float bz_t = 0.f, bz_s = 0.f, bacc = 0.f;
      for (int64_t v = b; v < e; ++v) {
        const float et = std::exp(tf[v] - m_t);
        bz_t += et;
        bacc += et * (tf[v] - sf[v]);  // t = -inf (clamped): et is exactly 0, so 0 log 0 = 0
        bz_s += std::exp(sf[v] - m_s);
      }
      z_t += bz_t;
      z_s += bz_s;
      acc += bacc;
    }
    kl[i] = static_cast<float>(acc / z_t - (static_cast<double>(m_t) - m_s) - std::log(z_t) + std::log(z_s));
    lse_s[i] = m_s;  // (max, log-sum) per side: rows i and N + i of a (2, N) buffer
    lse_s[N + i] = static_cast<float>(std::log(z_s));
    lse_t[i] = m_t;
    lse_t[N + i] = static_cast<float>(std::log(z_t));
  });
}

template <typename scalar_t>
void backward_rows(const scalar_t* s, const float* t, const float* a, float alpha, int64_t N, int64_t V, const float* g,
                   const float* lse_s, const float* lse_t, scalar_t* out) {
  // the buffers arrive with each row's max already subtracted (lse_* row 0 holds the maxima)
  for_each_row(s, t, a, alpha, N, V, [&](int64_t i, const float* sf, const float* tf) {
    const float gi = g[i], lzs = lse_s[N + i], lzt = lse_t[N + i];
    scalar_t* oi = out + i * V;
    for (int64_t v = 0; v < V; ++v) oi[v] = static_cast<scalar_t>(gi * (std::exp(sf[v] - lzs) - std::exp(tf[v] - lzt)));
  }, lse_s, lse_t);
}

void check(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& a, bool has_a) {
  CHECK_CPU(s); CHECK_CPU(t); CHECK_2D(s);
  TORCH_CHECK(s.sizes() == t.sizes(), "student and teacher shapes differ");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "the teacher must be fp32");
  if (has_a) {
    CHECK_CPU(a);
    TORCH_CHECK(a.sizes() == t.sizes() && a.scalar_type() == torch::kFloat32, "augmented must be fp32 and match teacher");
  }
}
}  // namespace

std::vector<torch::Tensor> teacher_kl_forward(torch::Tensor s, torch::Tensor t, torch::Tensor a, bool has_a, double alpha) {
  check(s, t, a, has_a);
  s = s.contiguous(); t = t.contiguous();
  if (has_a) a = a.contiguous();
  const int64_t N = s.size(0), V = s.size(1);
  auto opts = s.options().dtype(torch::kFloat32);
  auto kl = torch::empty({N}, opts), lse_s = torch::empty({2, N}, opts), lse_t = torch::empty({2, N}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "teacher_kl_forward", [&] {
    forward_rows<scalar_t>(s.data_ptr<scalar_t>(), t.data_ptr<float>(), has_a ? a.data_ptr<float>() : nullptr,
                           static_cast<float>(alpha), N, V, kl.data_ptr<float>(), lse_s.data_ptr<float>(),
                           lse_t.data_ptr<float>());
  });
  return {kl, lse_s, lse_t};
}

torch::Tensor teacher_kl_backward(torch::Tensor g, torch::Tensor s, torch::Tensor t, torch::Tensor a, bool has_a,
                                  double alpha, torch::Tensor lse_s, torch::Tensor lse_t) {
  check(s, t, a, has_a);
  s = s.contiguous(); t = t.contiguous();
  if (has_a) a = a.contiguous();
  g = g.to(torch::kFloat32).contiguous();
  const int64_t N = s.size(0), V = s.size(1);
  auto out = torch::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "teacher_kl_backward", [&] {
    backward_rows<scalar_t>(s.data_ptr<scalar_t>(), t.data_ptr<float>(), has_a ? a.data_ptr<float>() : nullptr,
                            static_cast<float>(alpha), N, V, g.data_ptr<float>(), lse_s.data_ptr<float>(),
                            lse_t.data_ptr<float>(), out.data_ptr<scalar_t>());
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &teacher_kl_forward, "fused teacher KL forward (CPU)");
  m.def("backward", &teacher_kl_backward, "fused teacher KL backward (CPU)");
}
