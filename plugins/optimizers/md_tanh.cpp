// MD-tanh's stable step on float32 CPU tensors, one fused pass (benchbnn's native kernel).
//
// The same operations, in the same order and with the same float32 roundings, as
// MDTanh.update with stable=True in md_tanh.py (the Adam direction, then tanh_step, then the
// flip count), so the weights, moments and counts are BIT-IDENTICAL to the reference
// (tests/test_native_kernels.py checks it). Each line below names the Python it mirrors.
// Built with -ffp-contract=off (no fused multiply-add: one rounding per operation, as PyTorch
// rounds) and without -ffast-math; GCC vectorizes the loop (AVX-512 on the CPUs measured).
// Why a kernel of its own: Inductor's code for this rule was compute-bound at about 2x the
// memory-bandwidth floor (docs/speed.md); this loop keeps every intermediate in registers,
// has no NaN-propagating min/max helpers, counts flips in 32-bit lanes and is unrolled twice.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// Constants of benchbnn.optim.elementary, rounded to float32 as the rule's casts round them.
const float LOG2E = 1.44269502162933349609375f;
const float LN2_HI = 0.693359375f;
const float LN2_LO = static_cast<float>(-2.12194440e-4);
const float EXP_FLOOR = -80.0f;
const float E7 = static_cast<float>(1.0 / 5040), E6 = static_cast<float>(1.0 / 720),
            E5 = static_cast<float>(1.0 / 120), E4 = static_cast<float>(1.0 / 24),
            E3 = static_cast<float>(1.0 / 6), E2 = static_cast<float>(1.0 / 2);
// md_tanh.SMALL_X, md_tanh.SMALL_A
const float SMALL_X = 0.25f, SMALL_A = 0.125f;

inline float bits_to_float(int32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

struct Constants {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps, rate;
};

// Steps n weights; returns their flips (n below 2**31: the caller passes blocks).
int32_t step_block(float* __restrict w, const float* __restrict g, float* __restrict m,
                   float* __restrict v, int64_t n, Constants c) {
  int32_t flips = 0;
#pragma GCC unroll 2
  for (int64_t i = 0; i < n; ++i) {
    const float x = w[i], gi = g[i];
    // m.mul_(beta1).add_(g * (1 - beta1)); v.mul_(beta2).add_(g * g * (1 - beta2))
    const float mi = m[i] * c.beta1 + gi * c.one_minus_beta1;
    const float vi = v[i] * c.beta2 + (gi * gi) * c.one_minus_beta2;
    m[i] = mi;
    v[i] = vi;
    // d = m / (sqrt_rn(v) + eps); a = rate * d   (sqrt is IEEE, correctly rounded)
    const float a = c.rate * (mi / (std::sqrt(vi) + c.eps));
    const float size = std::fabs(a);
    // exp_nonpositive(-2 |a|): y = clamp(z, min=-80) (NaN stays NaN), n = round(y log2 e)
    const float z = -2.0f * size;
    const float y = z < EXP_FLOOR ? EXP_FLOOR : z;
    const float n = std::nearbyint(y * LOG2E);  // ties to even, as torch.round
    const float r = (y - n * LN2_HI) - n * LN2_LO;
    float t = r * E7 + E6;
    t = t * r + E5;
    t = t * r + E4;
    t = t * r + E3;
    t = t * r + E2;
    t = (t * r + 1.0f) * r;
    // 2^n from its exponent field, in unsigned arithmetic (n is an integer in [-116, 0]; for
    // a NaN a, t is NaN already and the scale does not matter)
    const float scale = bits_to_float(
        static_cast<int32_t>((static_cast<uint32_t>(static_cast<int32_t>(n)) + 127u) << 23));
    const float q = scale * (t + 1.0f);
    const float q_minus_1 = scale * t + (scale - 1.0f);
    // tanh_step(x, a)
    const bool up = a >= 0.0f;
    const float plus = 1.0f + x, minus = 1.0f - x;
    const float top = up ? q * plus : plus;
    const float bottom = up ? minus : q * minus;
    const float small = 2.0f * x + (up ? q_minus_1 * plus : -(q_minus_1 * minus));
    const bool near_zero = (std::fabs(x) < SMALL_X) & (size < SMALL_A);
    const float lower = top < bottom ? top : bottom;  // torch.minimum (NaN: bottom is NaN)
    const float ratio = (near_zero ? small : 2.0f * lower) / (top + bottom);
    const float far = top >= bottom ? 1.0f - ratio : ratio - 1.0f;
    const float updated = near_zero ? ratio : far;
    w[i] = updated;
    // (before != (w >= 0)).sum()
    flips += static_cast<int32_t>((x >= 0.0f) != (updated >= 0.0f));
  }
  return flips;
}

void check(const torch::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
              name, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.numel() == numel, name, " must have the weight's number of elements");
}

}  // namespace

// One stable MD-tanh step over w (in place, with its moments m and v); returns the flips.
int64_t md_tanh_stable(torch::Tensor w, torch::Tensor g, torch::Tensor m, torch::Tensor v,
                       double beta1, double beta2, double eps, double rate) {
  const int64_t n = w.numel();
  check(w, "w", n);
  check(g, "g", n);
  check(m, "m", n);
  check(v, "v", n);
  const void* pointers[] = {w.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr()};
  for (int i = 0; i < 4; ++i)
    for (int j = i + 1; j < 4; ++j)
      TORCH_CHECK(n == 0 || pointers[i] != pointers[j], "w, g, m and v must be distinct tensors");
  // Python floats reach PyTorch's float32 kernels rounded to float32; so do 1 - beta here.
  const Constants c{static_cast<float>(beta1), static_cast<float>(1.0 - beta1),
                    static_cast<float>(beta2), static_cast<float>(1.0 - beta2),
                    static_cast<float>(eps), static_cast<float>(rate)};
  float* wp = w.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  constexpr int64_t kBlock = int64_t{1} << 20;
  std::atomic<int64_t> total{0};
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    int64_t sum = 0;
    for (int64_t s = begin; s < end; s += kBlock) {
      const int64_t e = std::min(end, s + kBlock);
      sum += step_block(wp + s, gp + s, mp + s, vp + s, e - s, c);
    }
    total.fetch_add(sum, std::memory_order_relaxed);
  });
  return total.load();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("md_tanh_stable", &md_tanh_stable,
             "MD-tanh's stable step in place (w, g, m, v float32, contiguous, CPU); the flips",
             pybind11::call_guard<pybind11::gil_scoped_release>());
}
