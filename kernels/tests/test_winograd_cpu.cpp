// The Winograd transforms (winograd_cpu.cpp) composed with a plain GEMM against a direct
// convolution in double: forward with bias, input gradient and weight gradient, for r = 2, 3, 4,
// every padding, odd sizes, sizes under one tile, and plane buffers with padding rows. Guard
// elements after each output catch writes past the end.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"
#include "winograd.h"

namespace {

constexpr int kGuard = 8;
constexpr double kSentinel = 1e300;

struct Case {
  int64_t N, H, W, C, K, pad;
  int r;
};

// Direct convolution, NHWC input, (K, C, r, r) weights, NHWC output.
std::vector<double> conv(const Case& c, const std::vector<double>& x, const std::vector<double>& w,
                         const std::vector<double>& b, int64_t Ho, int64_t Wo) {
  std::vector<double> y(c.N * Ho * Wo * c.K);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t oy = 0; oy < Ho; ++oy)
      for (int64_t ox = 0; ox < Wo; ++ox)
        for (int64_t k = 0; k < c.K; ++k) {
          double acc = b[k];
          for (int a = 0; a < c.r; ++a)
            for (int bb = 0; bb < c.r; ++bb) {
              const int64_t iy = oy + a - c.pad, ix = ox + bb - c.pad;
              if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
              for (int64_t ch = 0; ch < c.C; ++ch)
                acc += x[((n * c.H + iy) * c.W + ix) * c.C + ch] * w[((k * c.C + ch) * c.r + a) * c.r + bb];
            }
          y[((n * Ho + oy) * Wo + ox) * c.K + k] = acc;
        }
  return y;
}

// out[p] = op(A[p]) @ op(B[p]) for every plane: (rows x inner) @ (inner x cols), with the given
// plane strides and row strides of row-major operands; transposes by index.
void gemm(int64_t P, int64_t rows, int64_t inner, int64_t cols, const double* A, int64_t pa, bool ta, int64_t lda,
          const double* B, int64_t pb, bool tb, int64_t ldb, double* out, int64_t po) {
  for (int64_t p = 0; p < P; ++p)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) {
        double acc = 0;
        for (int64_t q = 0; q < inner; ++q) {
          const double a = ta ? A[p * pa + q * lda + i] : A[p * pa + i * lda + q];
          const double bv = tb ? B[p * pb + j * ldb + q] : B[p * pb + q * ldb + j];
          acc += a * bv;
        }
        out[p * po + i * cols + j] = acc;
      }
}

double max_rel(const std::vector<double>& got, const std::vector<double>& want, size_t n) {
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    err = std::fmax(err, std::fabs(got[i] - want[i]));
    scale = std::fmax(scale, std::fabs(want[i]));
  }
  return err / scale;
}

bool guards_intact(const std::vector<double>& v, size_t n) {
  for (size_t i = n; i < v.size(); ++i)
    if (v[i] != kSentinel) return false;
  return true;
}

void run(const Case& c, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  const auto s = wsc::winograd_shape(c.N, c.H, c.W, c.C, c.K, c.pad, c.r);
  const int64_t P = s.planes(), T = s.tiles(), rows = T + 3;  // padding rows, as the Python driver adds
  std::vector<double> x(c.N * c.H * c.W * c.C), w(c.K * c.C * c.r * c.r), b(c.K), dy(c.N * s.Ho * s.Wo * c.K);
  for (auto* v : {&x, &w, &b, &dy})
    for (double& e : *v) e = normal(rng);

  // forward: U = input transform, V = weight transform, M = U @ V, y = output transform + bias
  std::vector<double> U(P * rows * c.C, 0.0), V(P * c.C * c.K), M(P * rows * c.K, 0.0);
  wsc::winograd_input_transform_cpu(s, x.data(), U.data(), rows * c.C);
  const wsc::WeightStrides ws{c.C * c.r * c.r, c.r * c.r, 1};  // contiguous (K, C, r, r)
  wsc::winograd_weight_transform_cpu(s, w.data(), ws, V.data(), c.C * c.K);
  gemm(P, T, c.C, c.K, U.data(), rows * c.C, false, c.C, V.data(), c.C * c.K, false, c.K, M.data(), rows * c.K);
  const size_t ny = dy.size();
  std::vector<double> y(ny + kGuard, kSentinel);
  wsc::winograd_output_transform_cpu(s, M.data(), rows * c.K, b.data(), y.data());
  const auto want = conv(c, x, w, b, s.Ho, s.Wo);
  CHECK(max_rel(y, want, ny) < 1e-12, "forward r=%d pad=%lld N=%lld H=%lld W=%lld C=%lld K=%lld: %g", c.r,
        (long long)c.pad, (long long)c.N, (long long)c.H, (long long)c.W, (long long)c.C, (long long)c.K,
        max_rel(y, want, ny));
  CHECK(guards_intact(y, ny), "forward wrote past y (r=%d)", c.r);

  // backward: Yh = grad transform; dx from Z = Yh @ V^T; dw from S = U^T @ Yh
  std::vector<double> Yh(P * rows * c.K, 0.0), Z(P * rows * c.C), S(P * c.C * c.K);
  wsc::winograd_grad_transform_cpu(s, dy.data(), Yh.data(), rows * c.K);
  gemm(P, T, c.K, c.C, Yh.data(), rows * c.K, false, c.K, V.data(), c.C * c.K, true, c.K, Z.data(), rows * c.C);
  gemm(P, c.C, T, c.K, U.data(), rows * c.C, true, c.C, Yh.data(), rows * c.K, false, c.K, S.data(), c.C * c.K);
  const size_t nx = x.size(), nw = w.size();
  std::vector<double> dx(nx + kGuard, kSentinel), dw(nw + kGuard, kSentinel);
  wsc::winograd_input_grad_transform_cpu(s, Z.data(), rows * c.C, dx.data());
  wsc::winograd_weight_grad_transform_cpu(s, S.data(), c.C * c.K, dw.data(), ws);

  // the gradients of sum(y * dy) by the direct definition
  std::vector<double> dx_ref(nx, 0.0), dw_ref(nw, 0.0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t oy = 0; oy < s.Ho; ++oy)
      for (int64_t ox = 0; ox < s.Wo; ++ox)
        for (int64_t k = 0; k < c.K; ++k) {
          const double g = dy[((n * s.Ho + oy) * s.Wo + ox) * c.K + k];
          for (int a = 0; a < c.r; ++a)
            for (int bb = 0; bb < c.r; ++bb) {
              const int64_t iy = oy + a - c.pad, ix = ox + bb - c.pad;
              if (iy < 0 || iy >= c.H || ix < 0 || ix >= c.W) continue;
              for (int64_t ch = 0; ch < c.C; ++ch) {
                const int64_t xi = ((n * c.H + iy) * c.W + ix) * c.C + ch, wi = ((k * c.C + ch) * c.r + a) * c.r + bb;
                dx_ref[xi] += g * w[wi];
                dw_ref[wi] += g * x[xi];
              }
            }
        }
  CHECK(max_rel(dx, dx_ref, nx) < 1e-12, "input gradient r=%d pad=%lld H=%lld W=%lld: %g", c.r, (long long)c.pad,
        (long long)c.H, (long long)c.W, max_rel(dx, dx_ref, nx));
  CHECK(max_rel(dw, dw_ref, nw) < 1e-12, "weight gradient r=%d pad=%lld H=%lld W=%lld: %g", c.r, (long long)c.pad,
        (long long)c.H, (long long)c.W, max_rel(dw, dw_ref, nw));
  CHECK(guards_intact(dx, nx) && guards_intact(dw, nw), "backward wrote past dx or dw (r=%d)", c.r);
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  for (int r = 2; r <= 4; ++r)
    for (int64_t pad = 0; pad < r; ++pad) {
      run({2, 9, 11, 3, 5, pad, r}, rng);   // odd sizes, partial tiles on both edges
      run({1, r, r + 1, 1, 1, pad, r}, rng);  // under one tile
      run({3, 13, 6, 7, 2, pad, r}, rng);   // more than two tile rows (the input gradient's phases)
    }
  run({2, 20, 20, 33, 17, 1, 4}, rng);  // channel counts that are not vector multiples
  return wsc_test::report("test_winograd_cpu");
}
