// Fused forgetting-teacher + softmax + KL on a CUDA GPU: the same op as teacher_kl.cpp.
//
//   t = teacher - alpha * relu(augmented - teacher)        (t = teacher without augmented)
//   kl[i] = sum_v e^(t-m_t) (t - s) / Z_t - lse_t + lse_s
//   d kl[i] / d s_i = softmax(s_i) - softmax(t_i)
//
// Forward, two kernels by width:
//   narrow (V <= 64, the Yes/No pair): one thread per row, many rows per block;
//   wide: one block per row, each thread keeps an online (running max, rescaled sum)
//   state for t and s and the running sum of e^(t - m_t)(t - s) over its strided
//   slice; the states merge across the warp by shuffles and across warps in shared
//   memory. No [N, V] temporary; fp32 math for an fp32/fp16/bf16 student; the teacher and
//   augmented logits are fp32 (never rounded to the student's dtype). -inf logits: 0 log 0
//   = 0. The row's KL is acc/Z_t - (m_t - m_s) - log Z_t + log Z_s (no cancellation of two
//   large log-sum-exps).
// Backward: one grid-stride pass writing g_i * (e^(s - lse_s) - e^(t - lse_t)).
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <vector>

namespace {

constexpr int kThreads = 256;
constexpr int64_t kNarrow = 64;

template <typename T>
__device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <>
__device__ __forceinline__ float to_f<at::Half>(at::Half x) { return __half2float(static_cast<__half>(x)); }
template <>
__device__ __forceinline__ float to_f<at::BFloat16>(at::BFloat16 x) { return __bfloat162float(static_cast<__nv_bfloat16>(x)); }

__device__ __forceinline__ float teacher_at(const float* t, const float* a, float alpha, int64_t k) {
  const float tv = t[k];
  return a ? tv - alpha * fmaxf(a[k] - tv, 0.f) : tv;
}

// Online state of one softmax pair: m_t, z_t (sum e^(t - m_t)), acc (sum e^(t - m_t)(t - s)), m_s, z_s.
struct State {
  float m_t, z_t, acc, m_s, z_s;
};

__device__ __forceinline__ void push(State& st, float tv, float sv) {
  if (tv > st.m_t) {
    const float r = __expf(st.m_t - tv);
    st.z_t *= r;
    st.acc *= r;
    st.m_t = tv;
  }
  const float et = tv == -INFINITY ? 0.f : __expf(tv - st.m_t);  // (-inf) - (-inf) is NaN: 0 log 0 = 0
  st.z_t += et;
  st.acc += et > 0.f ? et * (tv - sv) : 0.f;
  if (sv > st.m_s) {
    st.z_s *= __expf(st.m_s - sv);
    st.m_s = sv;
  }
  st.z_s += sv == -INFINITY ? 0.f : __expf(sv - st.m_s);
}

__device__ __forceinline__ State merge(State x, State y) {
  State o;
  o.m_t = fmaxf(x.m_t, y.m_t);
  const float rx = x.z_t > 0.f ? __expf(x.m_t - o.m_t) : 0.f, ry = y.z_t > 0.f ? __expf(y.m_t - o.m_t) : 0.f;
  o.z_t = x.z_t * rx + y.z_t * ry;
  o.acc = x.acc * rx + y.acc * ry;
  o.m_s = fmaxf(x.m_s, y.m_s);
  const float sx = x.z_s > 0.f ? __expf(x.m_s - o.m_s) : 0.f, sy = y.z_s > 0.f ? __expf(y.m_s - o.m_s) : 0.f;
  o.z_s = x.z_s * sx + y.z_s * sy;
  return o;
}

__device__ __forceinline__ State empty_state() { return State{-INFINITY, 0.f, 0.f, -INFINITY, 0.f}; }

// each side's softmax as (max, log-sum): rows `row` and N + row of a (2, N) buffer
__device__ __forceinline__ void finish(const State& st, int64_t row, int64_t N, float* kl, float* lse_s, float* lse_t) {
  kl[row] = st.acc / st.z_t - (st.m_t - st.m_s) - logf(st.z_t) + logf(st.z_s);
  lse_s[row] = st.m_s;
  lse_s[N + row] = logf(st.z_s);
  lse_t[row] = st.m_t;
  lse_t[N + row] = logf(st.z_t);
}

template <typename T>
__global__ void forward_narrow(const T* __restrict__ s, const float* __restrict__ t, const float* __restrict__ a, float alpha, int64_t N,
                               int64_t V, float* kl, float* lse_s, float* lse_t) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= N) return;
  State st = empty_state();
  const int64_t base = row * V;
  for (int64_t v = 0; v < V; ++v) push(st, teacher_at(t, a, alpha, base + v), to_f(s[base + v]));
  finish(st, row, N, kl, lse_s, lse_t);
}

template <typename T>
__global__ void forward_wide(const T* __restrict__ s, const float* __restrict__ t, const float* __restrict__ a, float alpha, int64_t N, int64_t V,
                             float* kl, float* lse_s, float* lse_t) {
  const int64_t row = blockIdx.x;
  const int64_t base = row * V;
  State st = empty_state();
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) push(st, teacher_at(t, a, alpha, base + v), to_f(s[base + v]));
  for (int off = 16; off > 0; off >>= 1) {  // warp
    State o;
    o.m_t = __shfl_down_sync(0xffffffff, st.m_t, off);
    o.z_t = __shfl_down_sync(0xffffffff, st.z_t, off);
    o.acc = __shfl_down_sync(0xffffffff, st.acc, off);
    o.m_s = __shfl_down_sync(0xffffffff, st.m_s, off);
    o.z_s = __shfl_down_sync(0xffffffff, st.z_s, off);
    st = merge(st, o);
  }
  __shared__ State warps[kThreads / 32];
  const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
  if (lane == 0) warps[wid] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    State tot = warps[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) tot = merge(tot, warps[w]);
    finish(tot, row, N, kl, lse_s, lse_t);
  }
}

template <typename T>
__global__ void backward_kernel(const float* __restrict__ g, const T* __restrict__ s, const float* __restrict__ t,
                                const float* __restrict__ a, float alpha, int64_t N, int64_t V, const float* __restrict__ lse_s,
                                const float* __restrict__ lse_t, T* __restrict__ out) {
  const int64_t total = N * V;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = k / V;
    const float tv = teacher_at(t, a, alpha, k);
    out[k] = static_cast<T>(g[i] * (__expf((to_f(s[k]) - lse_s[i]) - lse_s[N + i]) - __expf((tv - lse_t[i]) - lse_t[N + i])));
  }
}

void check(const torch::Tensor& s, const torch::Tensor& t, const torch::Tensor& a, bool has_a) {
  TORCH_CHECK(s.is_cuda() && t.is_cuda(), "student and teacher must be CUDA tensors");
  TORCH_CHECK(s.dim() == 2, "student must be (N, V)");
  TORCH_CHECK(s.sizes() == t.sizes(), "student and teacher shapes differ");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "the teacher must be fp32");
  if (has_a) TORCH_CHECK(a.is_cuda() && a.sizes() == t.sizes() && a.scalar_type() == torch::kFloat32, "augmented must be fp32 and match teacher");
}

}  // namespace

std::vector<torch::Tensor> teacher_kl_forward(torch::Tensor s, torch::Tensor t, torch::Tensor a, bool has_a, double alpha) {
  check(s, t, a, has_a);
  const c10::cuda::CUDAGuard guard(s.device());
  s = s.contiguous();
  t = t.contiguous();
  if (has_a) a = a.contiguous();
  const int64_t N = s.size(0), V = s.size(1);
  auto opts = s.options().dtype(torch::kFloat32);
  auto kl = torch::empty({N}, opts), lse_s = torch::empty({2, N}, opts), lse_t = torch::empty({2, N}, opts);
  if (N == 0) return {kl, lse_s, lse_t};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "teacher_kl_forward_cuda", [&] {
    const float* ap = has_a ? a.data_ptr<float>() : nullptr;
    if (V <= kNarrow) {
      const int blocks = static_cast<int>((N + kThreads - 1) / kThreads);
      forward_narrow<scalar_t><<<blocks, kThreads, 0, stream>>>(s.data_ptr<scalar_t>(), t.data_ptr<float>(), ap,
                                                                 static_cast<float>(alpha), N, V, kl.data_ptr<float>(),
                                                                 lse_s.data_ptr<float>(), lse_t.data_ptr<float>());
    } else {
      forward_wide<scalar_t><<<static_cast<unsigned>(N), kThreads, 0, stream>>>(
          s.data_ptr<scalar_t>(), t.data_ptr<float>(), ap, static_cast<float>(alpha), N, V, kl.data_ptr<float>(),
          lse_s.data_ptr<float>(), lse_t.data_ptr<float>());
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {kl, lse_s, lse_t};
}

torch::Tensor teacher_kl_backward(torch::Tensor g, torch::Tensor s, torch::Tensor t, torch::Tensor a, bool has_a, double alpha,
                                  torch::Tensor lse_s, torch::Tensor lse_t) {
  check(s, t, a, has_a);
  const c10::cuda::CUDAGuard guard(s.device());
  s = s.contiguous();
  t = t.contiguous();
  if (has_a) a = a.contiguous();
  g = g.to(torch::kFloat32).contiguous();
  const int64_t N = s.size(0), V = s.size(1);
  auto out = torch::empty_like(s);
  if (N == 0) return out;
  const int64_t total = N * V;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "teacher_kl_backward_cuda", [&] {
    backward_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        g.data_ptr<float>(), s.data_ptr<scalar_t>(), t.data_ptr<float>(), has_a ? a.data_ptr<float>() : nullptr,
        static_cast<float>(alpha), N, V, lse_s.data_ptr<float>(), lse_t.data_ptr<float>(), out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &teacher_kl_forward, "fused teacher KL forward (CUDA)");
  m.def("backward", &teacher_kl_backward, "fused teacher KL backward (CUDA)");
}
