// Fused kernels of conf_plugins.calibration (the torch paths stay as fallback and test oracle):
// pixel_confidence: one pass over the logits, per group of pixels in vector registers: first
// arg-max, max, second largest logit, Σ exp((z_c − z_max)/T) and Σ e_c (z_c − z_max)/T, with
// torch's own vectorised exp (ATen's Vectorized<float>: AVX-512 or AVX2, chosen by setup.py for
// the building CPU); bin_statistics: CalibrationStats.update's per-bin sums; and
// calibration_statistics: both plus the class-wise sums, tile by tile, for SegCalibrationMetric.
// Pixels are split across torch's intra-op threads (at::parallel_for). Same values as the torch
// paths to float rounding (tested).
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <atomic>
#include <mutex>
#include <cmath>
#include <vector>

#ifndef BUILT_FOR
#define BUILT_FOR "AVX2"
#endif

#ifndef SOURCE_SHA
#define SOURCE_SHA "unknown"
#endif

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kGrain = 4096;  // pixels per parallel task

// Pixels [begin, end) of the (C, n) logits z; outputs written from index 0 (pixel begin).
// kMargin / kEntropy: whether gap / entropy are wanted; kScaled: T != 1 (compiled without the
// work they need otherwise).
template <bool kMargin, bool kEntropy, bool kScaled>
void confidence_range_of(const float* z, int64_t classes, int64_t n, int64_t begin, int64_t end,
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
      if (kMargin) second = Vec::blendv(at::vec::maximum(second, v), top, greater);
      top = Vec::blendv(top, v, greater);
      index = Vec::blendv(index, Vec(static_cast<float>(c)), greater);
    }
    // u = (z − z_max) / T: exactly 0 for the arg-max class, < 0 else, NaN for bad logits
    Vec total(0.f), weighted(0.f);
    for (int64_t c = 0; c < classes; ++c) {
      const Vec shifted = Vec::loadu(z + c * n + p, count) - top;
      const Vec u = kScaled ? shifted * Vec(scale) : shifted;
      const Vec e = u.exp_u20();
      total = total + e;
      if (kEntropy) {
        weighted = weighted + Vec::blendv(e * u, zero, e == zero);  // a -inf logit adds 0
      }
    }
    // the approximate exp may put exp(0) a rounding below 1: a probability never exceeds 1
    const Vec reciprocal = at::vec::minimum(total.reciprocal(), Vec(1.f));
    reciprocal.store(max_softmax + (p - begin), count);
    // x − x is 0 exactly for finite x (NaN for NaN / inf); padded lanes of a tail hold 0 logits
    if (((total - total) == zero).zero_mask() != 0) bad->store(true, std::memory_order_relaxed);
    index.store(index_buffer, count);
    for (int64_t k = 0; k < count; ++k) pred[p - begin + k] = static_cast<int64_t>(index_buffer[k]);
    if (kMargin) ((top - second) * Vec(scale)).store(gap + (p - begin), count);
    if (kEntropy) (total.log() - weighted * reciprocal).store(entropy + (p - begin), count);
  }
}

// Pixels [begin, end) of the (C, n) logits z; outputs written from index 0 (pixel begin);
// gap / entropy nullptr when not wanted.
void confidence_range(const float* z, int64_t classes, int64_t n, int64_t begin, int64_t end,
                      float scale, float* max_softmax, int64_t* pred, float* gap, float* entropy,
                      std::atomic<bool>* bad) {
  const bool margin = gap != nullptr, ent = entropy != nullptr, scaled = scale != 1.f;
  auto run = [&](auto kernel) { kernel(z, classes, n, begin, end, scale, max_softmax, pred, gap, entropy, bad); };
  if (!margin && !ent) {
    scaled ? run(confidence_range_of<false, false, true>) : run(confidence_range_of<false, false, false>);
  } else {
    // margin and entropy: the per-pixel reporting path (pixel_confidence), not the metric's
    if (margin && ent) run(confidence_range_of<true, true, true>);
    else if (margin) run(confidence_range_of<true, false, true>);
    else run(confidence_range_of<false, true, true>);
  }
}


// Per-fine-bin sums of CalibrationStats: for each counted sample its bin j (j/K < v <= (j+1)/K,
// 0 -> 0, exact against the float32-rounded-down upper edges as binning.bin_index), cell
// correct*K + j, five sums per cell: count, Σv, Σv², Σlog max(v, eps), Σlog max(1 − v, eps)
// (float32 logs, float64 sums). One 64-byte line per cell (all five sums of a sample at once).
class FineBins {
 public:
  static constexpr int64_t kStride = 8;
  FineBins(const float* upper, int64_t bins, float log_eps)
      : edge_(upper), bins_(bins), eps_(log_eps), cells_(kStride * 2 * bins, 0.0) {}

  // samples [0, count): values, correct, keep (nullptr: all count); bin_out (nullptr or
  // count entries) receives each sample's bin j
  void add(const float* v, const bool* right, const bool* keep, int64_t count, int32_t* bin_out = nullptr) {
    const int64_t width = Vec::size();
    const float scale = static_cast<float>(bins_);
    float logs[2][Vec::size()];
    float values[Vec::size()];
    int32_t cells[Vec::size()];
    for (int64_t p = 0; p < count; p += width) {
      const int64_t m = std::min(width, count - p);
      const Vec x = Vec::loadu(v + p, m);
      x.store(values, m);
      at::vec::maximum(x, Vec(eps_)).log().store(logs[0], m);
      at::vec::maximum(Vec(1.f) - x, Vec(eps_)).log().store(logs[1], m);
      // trunc(v K − 1/2) is the bin or the one below it; one exact edge comparison fixes it
      const Vec guess = at::vec::clamp(x * Vec(scale) - Vec(0.5f), Vec(0.f), Vec(static_cast<float>(bins_ - 1)));
      at::vec::convert_to_int_of_same_size(guess.trunc()).store(cells, m);
      for (int64_t k = 0; k < m; ++k) {
        int32_t j = cells[k];
        j += (values[k] > edge_[j]) & (j + 1 < bins_);
        if (bin_out != nullptr) bin_out[p + k] = j;
        cells[k] = (right[p + k] ? bins_ : 0) + j;
      }
      for (int64_t k = 0; k < m; ++k) {
        if (keep != nullptr && !keep[p + k]) continue;
        double* cell = cells_.data() + kStride * cells[k];
        const double d = values[k];
        cell[0] += 1.0;
        cell[1] += d;
        cell[2] += d * d;
        cell[3] += logs[0][k];
        cell[4] += logs[1][k];
      }
    }
  }

  // add the sums into total (5, 2K) row-major
  void merge_into(double* total) const {
    const int64_t row = 2 * bins_;
    for (int64_t c = 0; c < row; ++c)
      for (int64_t r = 0; r < 5; ++r) total[r * row + c] += cells_[kStride * c + r];
  }

 private:
  const float* edge_;
  int64_t bins_;
  float eps_;
  std::vector<double> cells_;
};

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
    confidence_range(z, classes, n, begin, end, scale, max_softmax.data_ptr<float>() + begin,
                     pred.data_ptr<int64_t>() + begin, margin ? gap.data_ptr<float>() + begin : nullptr,
                     entropy ? ent.data_ptr<float>() + begin : nullptr, &bad);
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
  std::mutex merge;
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    FineBins local(upper.data_ptr<float>(), bins, static_cast<float>(log_eps));
    local.add(v + begin, right + begin, keep == nullptr ? nullptr : keep + begin, end - begin);
    std::lock_guard<std::mutex> guard(merge);
    local.merge_into(sums.data_ptr<double>());
  });
  return sums;
}

// SegCalibrationMetric.process for the max softmax of logits, in one pass over tiles of pixels
// that stay in cache: per-pixel confidence (as pixel_confidence), correct = (argmax == label),
// counted = (label != ignore_index), the fine-bin sums of bin_statistics and, when classes > 0,
// the class-wise sums of DetectionBinStats(classes, (coarse bins,)) per predicted class:
// count, Σv, Σcorrect, Σiou (0), Σ|v − iou| (= Σv). Also counts the pixels whose argmax differs
// from prediction (an empty prediction: none checked). Returns [fine (5, 2K), class-wise
// (5, classes, Kc) or empty, mismatches (scalar int64)].
std::vector<at::Tensor> calibration_statistics(const at::Tensor& logits, const at::Tensor& label,
                                               const at::Tensor& prediction, int64_t ignore_index,
                                               double temperature, const at::Tensor& upper,
                                               const at::Tensor& coarse_upper, int64_t classes, double log_eps) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
                  logits.is_contiguous() && logits.size(0) >= 2,
              "calibration_statistics kernel: need contiguous float32 (C >= 2, N) CPU logits");
  const int64_t n = logits.size(1), num_logits = logits.size(0);
  TORCH_CHECK(label.scalar_type() == at::kLong && label.numel() == n && label.is_contiguous(),
              "calibration_statistics kernel: need a contiguous int64 (N,) label");
  const bool checked = prediction.numel() > 0;
  TORCH_CHECK(!checked || (prediction.scalar_type() == at::kLong && prediction.numel() == n && prediction.is_contiguous()),
              "calibration_statistics kernel: need a contiguous int64 (N,) prediction or an empty one");
  TORCH_CHECK(temperature > 0, "calibration_statistics kernel: temperature must be > 0");
  TORCH_CHECK(upper.scalar_type() == at::kFloat && upper.dim() == 1 && upper.is_contiguous() &&
                  coarse_upper.scalar_type() == at::kDouble && coarse_upper.dim() == 1 && coarse_upper.is_contiguous(),
              "calibration_statistics kernel: need float32 fine and float64 coarse upper edges");
  const int64_t bins = upper.size(0), coarse = coarse_upper.size(0);
  TORCH_CHECK(classes == 0 || coarse > 0, "calibration_statistics kernel: class-wise sums need coarse bins");
  auto options = logits.options().dtype(at::kDouble);
  auto fine = at::zeros({5, 2 * bins}, options);
  auto classwise = classes > 0 ? at::zeros({5, classes, coarse}, options) : at::zeros({0}, options);
  const float scale = static_cast<float>(1.0 / temperature);
  const float* z = logits.data_ptr<float>();
  const int64_t* truth = label.data_ptr<int64_t>();
  const int64_t* made = checked ? prediction.data_ptr<int64_t>() : nullptr;
  const double* coarse_edge = coarse_upper.data_ptr<double>();
  std::atomic<bool> bad(false);
  std::atomic<int64_t> mismatches(0);
  std::mutex merge;
  // when the coarse bins group whole fine bins (K % Kc == 0) both share their edges exactly
  std::vector<int64_t> coarse_of_fine;
  if (classes > 0 && bins % coarse == 0)
    for (int64_t j = 0; j < bins; ++j) coarse_of_fine.push_back(j / (bins / coarse));
  constexpr int64_t kTile = 1024;  // pixels whose confidence, argmax and flags stay in L1
  at::parallel_for(0, n, 1 << 16, [&](int64_t begin, int64_t end) {
    FineBins local(upper.data_ptr<float>(), bins, static_cast<float>(log_eps));
    // class-wise cells (class, coarse bin): count, Σv, Σcorrect; consecutive pixels alternate
    // between kCopies tables, so pixels of the same cell do not wait for each other's sums
    constexpr int64_t kCopies = 4, kWidth = 4;
    const int64_t cells = std::max<int64_t>(classes * coarse, 0);
    std::vector<double> by_class(kCopies * kWidth * cells, 0.0);
    float conf[kTile];
    int64_t arg[kTile];
    int32_t fine_bin[kTile];
    bool right[kTile], keep[kTile];
    int64_t differ = 0;
    for (int64_t t0 = begin; t0 < end; t0 += kTile) {
      const int64_t m = std::min(kTile, end - t0);
      confidence_range(z, num_logits, n, t0, t0 + m, scale, conf, arg, nullptr, nullptr, &bad);
      for (int64_t k = 0; k < m; ++k) {
        const int64_t y = truth[t0 + k];
        right[k] = arg[k] == y;
        keep[k] = y != ignore_index;
        if (made != nullptr) differ += arg[k] != made[t0 + k];
      }
      local.add(conf, right, keep, m, fine_bin);
      if (classes == 0) continue;
      for (int64_t k = 0; k < m; ++k) {
        if (!keep[k] || arg[k] >= classes) continue;
        int64_t j;
        if (!coarse_of_fine.empty()) {
          j = coarse_of_fine[fine_bin[k]];
        } else {
          const double v = conf[k];
          j = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(v * coarse - 0.5), 0), coarse - 1);
          if (v > coarse_edge[j] && j + 1 < coarse) ++j;
        }
        double* cell = by_class.data() + kWidth * ((k % kCopies) * cells + arg[k] * coarse + j);
        cell[0] += 1.0;
        cell[1] += conf[k];
        cell[2] += right[k] ? 1.0 : 0.0;
      }
    }
    mismatches.fetch_add(differ, std::memory_order_relaxed);
    std::lock_guard<std::mutex> guard(merge);
    local.merge_into(fine.data_ptr<double>());
    double* total = classes > 0 ? classwise.data_ptr<double>() : nullptr;
    for (int64_t copy = 0; copy < kCopies; ++copy) {
      for (int64_t c = 0; c < cells; ++c) {
        const double* cell = by_class.data() + kWidth * (copy * cells + c);
        total[c] += cell[0];
        total[cells + c] += cell[1];
        total[2 * cells + c] += cell[2];
        total[4 * cells + c] += cell[1];  // Σ|v − iou| with iou = 0
      }
    }
  });
  TORCH_CHECK_VALUE(!bad.load(), "logits contain NaN or +inf (or a pixel whose logits are all -inf)");
  return {fine, classwise, at::scalar_tensor(mismatches.load(), logits.options().dtype(at::kLong))};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pixel_confidence", &pixel_confidence, "fused per-pixel confidence of (C, N) float32 logits");
  m.def("bin_statistics", &bin_statistics, "per-fine-bin statistics of CalibrationStats.update");
  m.def("calibration_statistics", &calibration_statistics,
        "SegCalibrationMetric.process for the max softmax of logits in one pass");
  m.attr("SOURCE_SHA") = SOURCE_SHA;
  m.attr("BUILT_FOR") = BUILT_FOR;  // the vector instructions it needs: "AVX2" or "AVX512"
}
