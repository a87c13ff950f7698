// Fused forgetting-teacher + softmax + KL on the CPU (parallel over rows).
//
//   t = teacher - alpha * relu(augmented - teacher)        (t = teacher without augmented)
//   kl[i] = sum_v softmax(t_i)_v * (log_softmax(t_i)_v - log_softmax(s_i)_v)
//         = sum_v e^(t-m_t) (t - s) / Z_t - lse_t + lse_s
//   d kl[i] / d s_i = softmax(s_i) - softmax(t_i)
//
// Per row: one pass builds t in a thread-local buffer and the two maxima, one pass
// sums the exponentials; both are plain loops over contiguous floats that the compiler
// vectorises (expf from libmvec; built with -ffast-math, so no inf/NaN sentinels here). Sums run in fp32 within blocks of 256 and in fp64
// across blocks. Forward returns kl and the two log-sum-exps; backward writes
// g * (e^(s - lse_s) - e^(t - lse_t)) in one pass. Any input dtype, fp32 math.
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

template <typename scalar_t>
inline void load_row(const scalar_t* s, const scalar_t* t, const scalar_t* a, float alpha, int64_t V, float* sf, float* tf) {
  for (int64_t v = 0; v < V; ++v) sf[v] = static_cast<float>(s[v]);
  if (a) {
    for (int64_t v = 0; v < V; ++v) {
      const float tv = static_cast<float>(t[v]);
      tf[v] = tv - alpha * std::max(static_cast<float>(a[v]) - tv, 0.f);
    }
  } else {
    for (int64_t v = 0; v < V; ++v) tf[v] = static_cast<float>(t[v]);
  }
}

inline float row_max(const float* x, int64_t V) {
  float m = x[0];  // no -inf sentinel: the file builds with -ffast-math
  for (int64_t v = 1; v < V; ++v) m = std::max(m, x[v]);
  return m;
}

// Runs body(i, s_row_fp32, t_row_fp32) for every row, rows split across threads; each
// thread converts its rows into one reused fp32 buffer (forgetting teacher applied).
template <typename scalar_t, typename Body>
void for_each_row(const scalar_t* s, const scalar_t* t, const scalar_t* a, float alpha, int64_t N, int64_t V, Body body) {
  at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> buf(2 * V);
    float* sf = buf.data();
    float* tf = buf.data() + V;
    for (int64_t i = lo; i < hi; ++i) {
      load_row(s + i * V, t + i * V, a ? a + i * V : nullptr, alpha, V, sf, tf);
      body(i, sf, tf);
    }
  });
}

template <typename scalar_t>
void forward_rows(const scalar_t* s, const scalar_t* t, const scalar_t* a, float alpha, int64_t N, int64_t V, float* kl,
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
        bacc += et * (tf[v] - sf[v]);
        bz_s += std::exp(sf[v] - m_s);
      }
      z_t += bz_t;
      z_s += bz_s;
      acc += bacc;
    }
    const double lt = m_t + std::log(z_t), ls = m_s + std::log(z_s);
    kl[i] = static_cast<float>(acc / z_t - lt + ls);
    lse_s[i] = static_cast<float>(ls);
    lse_t[i] = static_cast<float>(lt);
  });
}

template <typename scalar_t>
void backward_rows(const scalar_t* s, const scalar_t* t, const scalar_t* a, float alpha, int64_t N, int64_t V, const float* g,
                   const float* lse_s, const float* lse_t, scalar_t* out) {
  for_each_row(s, t, a, alpha, N, V, [&](int64_t i, const float* sf, const float* tf) {
    const float gi = g[i], ls = lse_s[i], lt = lse_t[i];
    scalar_t* oi = out + i * V;
    for (int64_t v = 0; v < V; ++v) oi[v] = static_cast<scalar_t>(gi * (std::exp(sf[v] - ls) - std::exp(tf[v] - lt)));
  });
}

void check(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& a, bool has_a) {
  CHECK_CPU(s); CHECK_CPU(t); CHECK_2D(s);
  TORCH_CHECK(s.sizes() == t.sizes(), "student and teacher shapes differ");
  TORCH_CHECK(s.scalar_type() == t.scalar_type(), "student and teacher dtypes differ");
  if (has_a) {
    CHECK_CPU(a);
    TORCH_CHECK(a.sizes() == t.sizes() && a.scalar_type() == t.scalar_type(), "augmented must match teacher");
  }
}
}  // namespace

std::vector<torch::Tensor> teacher_kl_forward(torch::Tensor s, torch::Tensor t, torch::Tensor a, bool has_a, double alpha) {
  check(s, t, a, has_a);
  s = s.contiguous(); t = t.contiguous();
  if (has_a) a = a.contiguous();
  const int64_t N = s.size(0), V = s.size(1);
  auto opts = s.options().dtype(torch::kFloat32);
  auto kl = torch::empty({N}, opts), lse_s = torch::empty({N}, opts), lse_t = torch::empty({N}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "teacher_kl_forward", [&] {
    forward_rows<scalar_t>(s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), has_a ? a.data_ptr<scalar_t>() : nullptr,
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
    backward_rows<scalar_t>(s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), has_a ? a.data_ptr<scalar_t>() : nullptr,
                            static_cast<float>(alpha), N, V, g.data_ptr<float>(), lse_s.data_ptr<float>(),
                            lse_t.data_ptr<float>(), out.data_ptr<scalar_t>());
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &teacher_kl_forward, "fused teacher KL forward (CPU)");
  m.def("backward", &teacher_kl_backward, "fused teacher KL backward (CPU)");
}
