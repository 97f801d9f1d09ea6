// Fused per-pixel confidence of class logits (conf_plugins.calibration.pixel_confidence):
// one pass over the logits, per group of pixels in vector registers: first arg-max, max,
// second largest logit, Σ exp((z_c − z_max)/T) and Σ e_c (z_c − z_max)/T, with torch's own
// vectorised exp (ATen's Vectorized<float>, AVX2). Pixels are split across torch's intra-op
// threads (at::parallel_for). Same values as the torch path to float rounding (tested).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <atomic>
#include <mutex>
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
    // u = (z − z_max) / T: exactly 0 for the arg-max class, < 0 else, NaN for bad logits
    Vec total(0.f), weighted(0.f);
    for (int64_t c = 0; c < classes; ++c) {
      const Vec u = (Vec::loadu(z + c * n + p, count) - top) * Vec(scale);
      const Vec e = u.exp_u20();
      total = total + e;
      if (entropy != nullptr) {
        weighted = weighted + Vec::blendv(e * u, zero, e == zero);  // a -inf logit adds 0
      }
    }
    // the approximate exp may put exp(0) a rounding below 1: a probability never exceeds 1
    const Vec reciprocal = at::vec::minimum(total.reciprocal(), Vec(1.f));
    reciprocal.store(max_softmax + p, count);
    float totals[Vec::size()];
    total.store(totals, count);
    for (int64_t k = 0; k < count; ++k) {
      if (!std::isfinite(totals[k])) bad->store(true, std::memory_order_relaxed);
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

// The per-fine-bin statistics of CalibrationStats.update in one pass: for each sample (mask
// true) its bin j (j/K < v <= (j+1)/K, 0 -> 0, exact against the float32-rounded-down upper
// edges as conf_plugins.calibration.binning.bin_index), row correct*K + j of five sums:
// count, Σv, Σv², Σlog max(v, eps), Σlog max(1 − v, eps) (float32 logs, float64 sums).
at::Tensor bin_statistics(const at::Tensor& conf, const at::Tensor& correct, const at::Tensor& mask,
                          const at::Tensor& upper, double log_eps) {
  TORCH_CHECK(conf.device().is_cpu() && conf.scalar_type() == at::kFloat && conf.dim() == 1 && conf.is_contiguous(),
              "bin_statistics kernel: need contiguous float32 (N,) CPU values");
  TORCH_CHECK(correct.scalar_type() == at::kBool && correct.numel() == conf.numel() && correct.is_contiguous(),
              "bin_statistics kernel: need a contiguous bool (N,) correct");
  const bool masked = mask.numel() > 0;
  TORCH_CHECK(!masked || (mask.scalar_type() == at::kBool && mask.numel() == conf.numel() && mask.is_contiguous()),
              "bin_statistics kernel: need a contiguous bool (N,) mask or an empty one");
  TORCH_CHECK(upper.scalar_type() == at::kFloat && upper.dim() == 1 && upper.is_contiguous(),
              "bin_statistics kernel: need float32 upper edges");
  const int64_t bins = upper.size(0), n = conf.numel();
  auto sums = at::zeros({5, 2 * bins}, conf.options().dtype(at::kDouble));
  const float* v = conf.data_ptr<float>();
  const bool* right = correct.data_ptr<bool>();
  const bool* keep = masked ? mask.data_ptr<bool>() : nullptr;
  const float* edge = upper.data_ptr<float>();
  const float eps = static_cast<float>(log_eps);
  const float scale = static_cast<float>(bins);
  std::mutex merge;
  double* total = sums.data_ptr<double>();
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    std::vector<double> local(5 * 2 * bins, 0.0);
    const int64_t row = 2 * bins;
    const int64_t width = Vec::size();
    float logs[2][Vec::size()];
    for (int64_t p = begin; p < end; p += width) {
      const int64_t count = std::min(width, end - p);
      const Vec x = Vec::loadu(v + p, count);
      at::vec::maximum(x, Vec(eps)).log().store(logs[0], count);
      at::vec::maximum(Vec(1.f) - x, Vec(eps)).log().store(logs[1], count);
      for (int64_t k = 0; k < count; ++k) {
        if (keep != nullptr && !keep[p + k]) continue;
        const float value = v[p + k];
        int64_t j = static_cast<int64_t>(value * scale - 0.5f);
        j = std::min<int64_t>(std::max<int64_t>(j, 0), bins - 1);
        if (value > edge[j] && j + 1 < bins) ++j;
        const int64_t cell = (right[p + k] ? bins : 0) + j;
        const double d = value;
        local[cell] += 1.0;
        local[row + cell] += d;
        local[2 * row + cell] += d * d;
        local[3 * row + cell] += logs[0][k];
        local[4 * row + cell] += logs[1][k];
      }
    }
    std::lock_guard<std::mutex> guard(merge);
    for (int64_t i = 0; i < 5 * row; ++i) total[i] += local[i];
  });
  return sums;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pixel_confidence", &pixel_confidence, "fused per-pixel confidence of (C, N) float32 logits");
  m.def("bin_statistics", &bin_statistics, "per-fine-bin statistics of CalibrationStats.update");
  m.attr("SOURCE_SHA") = SOURCE_SHA;
}
