// Fused per-pixel confidence of class logits (conf_plugins.calibration.pixel_confidence):
// one pass over the logits, per group of pixels in vector registers: first arg-max, max,
// second largest logit, Σ exp((z_c − z_max)/T) and Σ e_c (z_c − z_max)/T, with torch's own
// vectorised exp (ATen's Vectorized<float>, AVX2). Pixels are split across torch's intra-op
// threads (at::parallel_for). Same values as the torch path to float rounding (tested).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <atomic>
#include <cmath>
#include <vector>

#ifndef SOURCE_SHA
#define SOURCE_SHA "unknown"
#endif

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kGrain = 4096;  // pixels per parallel task

void confidence_range(const float* z, int64_t classes, int64_t n, int64_t begin, int64_t end,
                      float scale, float* max_softmax, int64_t* pred, float* gap, float* entropy,
                      std::atomic<bool>* bad) {
  const int64_t width = Vec::size();
  float index_buffer[Vec::size()];
  const Vec zero(0.f);
  for (int64_t p = begin; p < end; p += width) {
    const int64_t count = std::min(width, end - p);
    Vec top = Vec::loadu(z + p, count);
    Vec second(-std::numeric_limits<float>::infinity());
    Vec index(0.f);
    for (int64_t c = 1; c < classes; ++c) {
      const Vec v = Vec::loadu(z + c * n + p, count);
      const Vec greater = v > top;  // strict: ties keep the first maximum, as torch.argmax
      second = Vec::blendv(at::vec::maximum(second, v), top, greater);
      top = Vec::blendv(top, v, greater);
      index = Vec::blendv(index, Vec(static_cast<float>(c)), greater);
    }
    Vec total(0.f), weighted(0.f);
    const Vec shift = top * Vec(scale);
    if (entropy == nullptr) {
      Vec total2(0.f);  // two chains of additions: the exponentials overlap
      int64_t c = 0;
      for (; c + 1 < classes; c += 2) {
        total = total + at::vec::fmsub(Vec::loadu(z + c * n + p, count), Vec(scale), shift).exp_u20();
        total2 = total2 + at::vec::fmsub(Vec::loadu(z + (c + 1) * n + p, count), Vec(scale), shift).exp_u20();
      }
      if (c < classes) total = total + at::vec::fmsub(Vec::loadu(z + c * n + p, count), Vec(scale), shift).exp_u20();
      total = total + total2;
    } else {
      for (int64_t c = 0; c < classes; ++c) {
        const Vec u = (Vec::loadu(z + c * n + p, count) - top) * Vec(scale);  // <= 0; NaN if bad
        const Vec e = u.exp_u20();
        total = total + e;
        weighted = weighted + Vec::blendv(e * u, zero, e == zero);  // a -inf logit adds 0
      }
    }
    const Vec reciprocal = total.reciprocal();
    reciprocal.store(max_softmax + p, count);
    float totals[Vec::size()];
    total.store(totals, count);
    for (int64_t k = 0; k < count; ++k) {
      if (!std::isfinite(totals[k]) || !(totals[k] >= 1.f)) bad->store(true, std::memory_order_relaxed);
    }
    index.store(index_buffer, count);
    for (int64_t k = 0; k < count; ++k) pred[p + k] = static_cast<int64_t>(index_buffer[k]);
    if (gap != nullptr) ((top - second) * Vec(scale)).store(gap + p, count);
    if (entropy != nullptr) (total.log() - weighted * reciprocal).store(entropy + p, count);
  }
}

}  // namespace

// logits: (C, N) float32, contiguous, on the CPU. Returns [max_softmax, pred, margin, entropy]
// (margin / entropy empty tensors unless asked).
std::vector<at::Tensor> pixel_confidence(const at::Tensor& logits, double temperature, bool margin,
                                         bool entropy) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
                  logits.is_contiguous(),
              "pixel_confidence kernel: need contiguous float32 (C, N) CPU logits");
  TORCH_CHECK(logits.size(0) >= 2, "pixel_confidence kernel: need at least two classes");
  TORCH_CHECK(temperature > 0, "pixel_confidence kernel: temperature must be > 0");
  const int64_t classes = logits.size(0), n = logits.size(1);
  auto max_softmax = at::empty({n}, logits.options());
  auto pred = at::empty({n}, logits.options().dtype(at::kLong));
  auto gap = margin ? at::empty({n}, logits.options()) : at::empty({0}, logits.options());
  auto ent = entropy ? at::empty({n}, logits.options()) : at::empty({0}, logits.options());
  const float scale = static_cast<float>(1.0 / temperature);
  const float* z = logits.data_ptr<float>();
  std::atomic<bool> bad(false);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    confidence_range(z, classes, n, begin, end, scale, max_softmax.data_ptr<float>(), pred.data_ptr<int64_t>(),
                     margin ? gap.data_ptr<float>() : nullptr, entropy ? ent.data_ptr<float>() : nullptr, &bad);
  });
  TORCH_CHECK_VALUE(!bad.load(), "logits contain NaN or +inf (or a pixel whose logits are all -inf)");
  return {max_softmax, pred, gap, ent};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pixel_confidence", &pixel_confidence, "fused per-pixel confidence of (C, N) float32 logits");
  m.attr("SOURCE_SHA") = SOURCE_SHA;
}
