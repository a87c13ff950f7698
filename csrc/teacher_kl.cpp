// Fused forgetting-teacher + softmax + KL on the CPU (OpenMP over rows).
//
//   t = teacher - alpha * relu(augmented - teacher)        (t = teacher without augmented)
//   kl[i] = sum_v softmax(t_i)_v * (log_softmax(t_i)_v - log_softmax(s_i)_v)
//   d kl[i] / d s_i = softmax(s_i) - softmax(t_i)
//
// Forward makes one pass over each row with running maxima and rescaled sums
// (online softmax); it returns kl and the two log-sum-exps, which backward uses to
// write the gradient in one more pass. Accumulation is in fp32 for every input dtype.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>

#define CHECK_CPU(x) TORCH_CHECK(!(x).is_cuda(), #x " must be a CPU tensor")
#define CHECK_2D(x) TORCH_CHECK((x).dim() == 2, #x " must be (N, V)")

template <typename scalar_t>
static void forward_rows(const scalar_t* s, const scalar_t* t, const scalar_t* a, float alpha, int64_t N, int64_t V,
                         float* kl, float* lse_s, float* lse_t) {
  at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const scalar_t* si = s + i * V;
      const scalar_t* ti = t + i * V;
      const scalar_t* ai = a ? a + i * V : nullptr;
      // running maxima in fp32, sums in fp64 (cheap here, and exact enough for V = 32k rows)
      float m_t = -std::numeric_limits<float>::infinity(), m_s = -std::numeric_limits<float>::infinity();
      double z_t = 0.0, acc = 0.0, z_s = 0.0;  // acc = sum e^(t-m_t) (t - s)
      for (int64_t v = 0; v < V; ++v) {
        float tv = static_cast<float>(ti[v]);
        if (ai) {
          float d = static_cast<float>(ai[v]) - tv;
          tv -= alpha * (d > 0.f ? d : 0.f);
        }
        float sv = static_cast<float>(si[v]);
        if (tv > m_t) {
          double r = std::exp(static_cast<double>(m_t) - tv);
          z_t = z_t * r + 1.0;
          acc = acc * r + (static_cast<double>(tv) - sv);
          m_t = tv;
        } else {
          double e = std::exp(tv - m_t);
          z_t += e;
          acc += e * (static_cast<double>(tv) - sv);
        }
        if (sv > m_s) {
          z_s = z_s * std::exp(static_cast<double>(m_s) - sv) + 1.0;
          m_s = sv;
        } else {
          z_s += std::exp(sv - m_s);
        }
      }
      double lt = m_t + std::log(z_t), ls = m_s + std::log(z_s);
      kl[i] = static_cast<float>(acc / z_t - lt + ls);
      lse_s[i] = ls;
      lse_t[i] = lt;
    }
  });
}

template <typename scalar_t>
static void backward_rows(const scalar_t* s, const scalar_t* t, const scalar_t* a, float alpha, int64_t N, int64_t V,
                          const float* g, const float* lse_s, const float* lse_t, scalar_t* out) {
  at::parallel_for(0, N, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const scalar_t* si = s + i * V;
      const scalar_t* ti = t + i * V;
      const scalar_t* ai = a ? a + i * V : nullptr;
      scalar_t* oi = out + i * V;
      const float gi = g[i], ls = lse_s[i], lt = lse_t[i];
      for (int64_t v = 0; v < V; ++v) {
        float tv = static_cast<float>(ti[v]);
        if (ai) {
          float d = static_cast<float>(ai[v]) - tv;
          tv -= alpha * (d > 0.f ? d : 0.f);
        }
        oi[v] = static_cast<scalar_t>(gi * (std::exp(static_cast<float>(si[v]) - ls) - std::exp(tv - lt)));  // fp32
      }
    }
  });
}

static void check(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& a, bool has_a) {
  CHECK_CPU(s); CHECK_CPU(t); CHECK_2D(s);
  TORCH_CHECK(s.sizes() == t.sizes(), "student and teacher shapes differ");
  TORCH_CHECK(s.scalar_type() == t.scalar_type(), "student and teacher dtypes differ");
  if (has_a) {
    CHECK_CPU(a);
    TORCH_CHECK(a.sizes() == t.sizes() && a.scalar_type() == t.scalar_type(), "augmented must match teacher");
  }
}

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
