// paste_faces_cpu and feather_masks_cpu against naive double-precision versions written here:
// the naive paste visits every pixel of every frame (no boxes), so it also checks that the face
// boxes computed like wscswap_fast.ops.paste_faces.plan cover every pixel a face can touch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <type_traits>
#include <vector>

#include "check.h"
#include "paste_faces.h"

using wsc::bf16_t;
using wsc::half_t;

namespace {

struct Plan {
  std::vector<int32_t> face_boxes, faces_by_frame, frame_offsets, frame_boxes;
};

// Face boxes: the frame-space bounding box of the crop square (-1, S)^2 mapped back through
// the inverse affine, widened by a pixel and clipped to the frame; then faces grouped by frame.
Plan make_plan(const std::vector<float>& affines, const std::vector<int>& frame_of, int B, int H, int W, int S) {
  const int K = static_cast<int>(frame_of.size());
  Plan plan;
  for (int k = 0; k < K; ++k) {
    const float* A = &affines[6 * k];
    const double det = static_cast<double>(A[0]) * A[4] - static_cast<double>(A[1]) * A[3];
    double lo[2] = {1e300, 1e300}, hi[2] = {-1e300, -1e300};
    for (const double u : {-1.0, static_cast<double>(S)}) {
      for (const double v : {-1.0, static_cast<double>(S)}) {
        const double du = u - A[2], dv = v - A[5];
        const double x = (A[4] * du - A[1] * dv) / det, y = (-A[3] * du + A[0] * dv) / det;
        lo[0] = std::min(lo[0], x); hi[0] = std::max(hi[0], x);
        lo[1] = std::min(lo[1], y); hi[1] = std::max(hi[1], y);
      }
    }
    auto clip = [](double v, int limit) { return static_cast<int32_t>(std::clamp(v, 0.0, static_cast<double>(limit))); };
    plan.face_boxes.insert(plan.face_boxes.end(), {clip(std::floor(lo[0]) - 1, W), clip(std::floor(lo[1]) - 1, H),
                                                   clip(std::ceil(hi[0]) + 2, W), clip(std::ceil(hi[1]) + 2, H)});
  }
  plan.frame_offsets.push_back(0);
  for (int b = 0; b < B; ++b) {
    int32_t box[4] = {0, 0, 0, 0};
    bool first = true;
    for (int k = 0; k < K; ++k) {
      if (frame_of[k] != b) continue;
      plan.faces_by_frame.push_back(k);
      const int32_t* fb = &plan.face_boxes[4 * k];
      for (int i = 0; i < 4; ++i) box[i] = first ? fb[i] : (i < 2 ? std::min(box[i], fb[i]) : std::max(box[i], fb[i]));
      first = false;
    }
    plan.frame_offsets.push_back(static_cast<int32_t>(plan.faces_by_frame.size()));
    plan.frame_boxes.insert(plan.frame_boxes.end(), box, box + 4);
  }
  return plan;
}

// Bilinear sample of an SxS plane at (x, y), zero outside, in double.
double sample_naive(const double* plane, int S, double x, double y) {
  const double x0 = std::floor(x), y0 = std::floor(y);
  double acc = 0;
  for (int dy = 0; dy < 2; ++dy) {
    for (int dx = 0; dx < 2; ++dx) {
      const double xi = x0 + dx, yi = y0 + dy;
      if (xi < 0 || yi < 0 || xi >= S || yi >= S) continue;
      const double w = (dx ? x - x0 : 1 - (x - x0)) * (dy ? y - y0 : 1 - (y - y0));
      acc += w * plane[static_cast<int>(yi) * S + static_cast<int>(xi)];
    }
  }
  return acc;
}

template <typename CropT>
void check_paste(std::mt19937& rng, int B, int H, int W, int K, int S) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::vector<uint8_t> frames(static_cast<size_t>(B) * H * W * 3);
  for (uint8_t& v : frames) v = static_cast<uint8_t>(rng() & 0xff);
  const float crop_scale = std::is_same_v<CropT, uint8_t> ? 1.f : 255.f;
  std::vector<CropT> crops(static_cast<size_t>(K) * 3 * S * S);
  for (CropT& v : crops) {
    if constexpr (std::is_same_v<CropT, uint8_t>) v = static_cast<uint8_t>(rng() & 0xff);
    else if constexpr (std::is_same_v<CropT, float>) v = static_cast<float>(unit(rng));
    else v = wsc::store<CropT>(static_cast<float>(unit(rng)));
  }
  // Masks: a soft disc (1 inside, 0 in the corners) with noise, so both m == 0 and 0 < m < 1 occur.
  std::vector<float> masks(static_cast<size_t>(K) * S * S);
  for (int k = 0; k < K; ++k)
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const double r = std::hypot(x - (S - 1) / 2.0, y - (S - 1) / 2.0) / (S / 2.0);
        masks[(static_cast<size_t>(k) * S + y) * S + x] = static_cast<float>(std::clamp(1.6 - 1.2 * r + 0.2 * (unit(rng) - 0.5), 0.0, 1.0));
      }
  // Rotated, scaled faces near (and across) the frame edges, faces of different frames interleaved.
  std::vector<float> affines;
  std::vector<int> frame_of;
  for (int k = 0; k < K; ++k) {
    const double angle = (unit(rng) - 0.5) * 1.2, scale = 0.5 + unit(rng);
    const double cx = unit(rng) * (W + 8) - 4, cy = unit(rng) * (H + 8) - 4;
    const double a = scale * std::cos(angle), s = scale * std::sin(angle);
    affines.insert(affines.end(), {static_cast<float>(a), static_cast<float>(-s), static_cast<float>(S / 2.0 - a * cx + s * cy),
                                   static_cast<float>(s), static_cast<float>(a), static_cast<float>(S / 2.0 - s * cx - a * cy)});
    frame_of.push_back(k % B);
  }
  const Plan plan = make_plan(affines, frame_of, B, H, W, S);

  std::vector<uint8_t> got = frames;
  wsc::paste_faces_cpu<CropT>(got.data(), B, H, W, crops.data(), masks.data(), K, S, affines.data(),
                              plan.face_boxes.data(), plan.faces_by_frame.data(), plan.frame_offsets.data(),
                              plan.frame_boxes.data(), crop_scale);

  // Naive: every face in index order over every pixel of its frame, in double.
  std::vector<uint8_t> expected = frames;
  for (int k = 0; k < K; ++k) {
    std::vector<double> planes(4 * static_cast<size_t>(S) * S);
    for (size_t i = 0; i < 3 * static_cast<size_t>(S) * S; ++i)
      planes[i] = static_cast<double>(wsc::load(crops[k * 3 * static_cast<size_t>(S) * S + i])) * crop_scale;
    for (size_t i = 0; i < static_cast<size_t>(S) * S; ++i) planes[3 * S * S + i] = masks[k * static_cast<size_t>(S) * S + i];
    const float* A = &affines[6 * k];
    for (int y = 0; y < H; ++y) {
      for (int x = 0; x < W; ++x) {
        const double xc = static_cast<double>(A[0]) * x + static_cast<double>(A[1]) * y + A[2];
        const double yc = static_cast<double>(A[3]) * x + static_cast<double>(A[4]) * y + A[5];
        const double m = sample_naive(&planes[3 * S * S], S, xc, yc);
        uint8_t* px = &expected[((static_cast<size_t>(frame_of[k]) * H + y) * W + x) * 3];
        for (int c = 0; c < 3; ++c) {
          const double v = m * sample_naive(&planes[c * S * S], S, xc, yc) + (1 - m) * px[c];
          px[c] = static_cast<uint8_t>(std::floor(std::clamp(v, 0.0, 255.0) + 0.5));
        }
      }
    }
  }

  // float vs double coordinates may flip a rounding at an exact .5: allow rare off-by-one bytes.
  size_t changed = 0, off_by_one = 0, wrong = 0;
  for (size_t i = 0; i < frames.size(); ++i) {
    changed += expected[i] != frames[i];
    const int d = std::abs(static_cast<int>(got[i]) - static_cast<int>(expected[i]));
    off_by_one += d == 1;
    wrong += d > 1;
  }
  const char* type = std::is_same_v<CropT, uint8_t> ? "uint8" : std::is_same_v<CropT, float> ? "float"
                     : std::is_same_v<CropT, half_t> ? "half" : "bf16";
  CHECK(changed > frames.size() / 20, "%s B=%d H=%d W=%d K=%d S=%d: only %zu bytes changed, the case is too weak",
        type, B, H, W, K, S, changed);
  CHECK(wrong == 0 && off_by_one <= changed / 200, "%s B=%d H=%d W=%d K=%d S=%d: %zu bytes off by more than 1, %zu off by 1 (of %zu changed)",
        type, B, H, W, K, S, wrong, off_by_one, changed);
}

// OpenCV's getGaussianKernel(2*feather+1, 0) for sizes above 7; any normalised kernel would do.
std::vector<float> gaussian(int feather) {
  const int size = 2 * feather + 1;
  const double sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8;
  std::vector<double> g(size);
  double sum = 0;
  for (int i = 0; i < size; ++i) sum += g[i] = std::exp(-(i - feather) * (i - feather) / (2 * sigma * sigma));
  std::vector<float> out(size);
  for (int i = 0; i < size; ++i) out[i] = static_cast<float>(g[i] / sum);
  return out;
}

int reflect101_naive(int p, int len) {
  if (len == 1) return 0;
  const int period = 2 * len - 2;
  p = std::abs(p) % period;
  return p >= len ? period - p : p;
}

void check_feather(std::mt19937& rng, int K, int S, int feather) {
  std::uniform_real_distribution<float> unit(0.f, 1.f);
  std::vector<float> masks(static_cast<size_t>(K) * S * S);
  for (float& v : masks) v = unit(rng);
  const std::vector<float> kernel = gaussian(feather);
  std::vector<float> out(masks.size()), scratch(masks.size());
  wsc::feather_masks_cpu(masks.data(), out.data(), scratch.data(), K, S, feather, kernel.data());

  // Naive: a 2-D min over the feather x feather window (samples outside the mask ignored), then a
  // 2-D Gaussian with reflect-101 borders.
  const int lo = feather / 2, hi = feather - 1 - feather / 2;
  double worst = 0;
  for (int k = 0; k < K; ++k) {
    const float* m = &masks[static_cast<size_t>(k) * S * S];
    std::vector<double> eroded(static_cast<size_t>(S) * S);
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        double v = 1e300;
        for (int yy = y - lo; yy <= y + hi; ++yy)
          for (int xx = x - lo; xx <= x + hi; ++xx)
            if (yy >= 0 && yy < S && xx >= 0 && xx < S) v = std::min(v, static_cast<double>(m[yy * S + xx]));
        eroded[y * S + x] = v;
      }
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        double v = 0;
        for (int j = -feather; j <= feather; ++j)
          for (int i = -feather; i <= feather; ++i)
            v += static_cast<double>(kernel[j + feather]) * kernel[i + feather] *
                 eroded[reflect101_naive(y + j, S) * S + reflect101_naive(x + i, S)];
        worst = std::max(worst, std::fabs(v - out[(static_cast<size_t>(k) * S + y) * S + x]));
      }
  }
  CHECK(worst < 1e-5, "feather K=%d S=%d feather=%d: max error %g", K, S, feather, worst);
}

}  // namespace

int main() {
  const unsigned seed = std::random_device{}();  // fresh inputs every run; the seed reproduces a failure
  std::printf("test_paste_faces_cpu: seed %u\n", seed);
  std::mt19937 rng(seed);
  check_paste<uint8_t>(rng, 2, 23, 31, 5, 16);
  check_paste<float>(rng, 3, 40, 29, 7, 12);
  check_paste<half_t>(rng, 1, 17, 45, 4, 9);
  check_paste<bf16_t>(rng, 2, 32, 32, 6, 20);
  check_paste<uint8_t>(rng, 2, 96, 128, 6, 40);  // large enough for the multi-threaded CPU path
  for (const int S : {1, 2, 9, 16})
    for (const int feather : {1, 2, 3, 4, 7})
      if (feather < S || S == 1) check_feather(rng, 3, S, feather);
  check_feather(rng, 4, 64, 5);  // multi-threaded
  return wsc_test::report("test_paste_faces_cpu");
}
