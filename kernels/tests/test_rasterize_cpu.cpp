// rasterize_*_cpu and photometric_*_cpu against plain loops: the tiled, binned, multi-threaded
// z-buffer against every (pixel, triangle) pair; the exact fill rule of one triangle; the
// backward passes against central differences in double. Guard elements after every output
// catch writes past the end.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "rasterize.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

constexpr int kGuard = 8;
constexpr double kPi = 3.14159265358979323846;

template <typename T>
std::vector<T> output_buffer(size_t n) {
  std::vector<T> v(n + kGuard);
  std::memset(static_cast<void*>(v.data()), 0xa5, v.size() * sizeof(T));
  return v;
}
template <typename T>
bool guards_intact(const std::vector<T>& v, size_t n) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(v.data() + n);
  for (size_t i = 0; i < kGuard * sizeof(T); ++i)
    if (bytes[i] != 0xa5) return false;
  return true;
}

// Coordinates at (k + 0.25)/256 pixel: the snapping never changes under a 1e-6 step.
double quantise(double x) { return (std::floor(x * 256) + 0.25) / 256; }

// Well-shaped triangles with private vertices at separated depths (unique z-order), some off-screen.
struct Mesh {
  int64_t N, V, F;
  std::vector<double> vertices;
  std::vector<int32_t> triangles;
};

Mesh random_mesh(std::mt19937& rng, int64_t N, int64_t F, int64_t H, int64_t W) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Mesh m{N, 3 * F, F, std::vector<double>(N * 3 * F * 3), std::vector<int32_t>(F * 3)};
  for (int64_t f = 0; f < F; ++f) {
    const bool flip = u(rng) < 0.5;
    m.triangles[3 * f] = static_cast<int32_t>(3 * f);
    m.triangles[3 * f + 1] = static_cast<int32_t>(3 * f + (flip ? 2 : 1));
    m.triangles[3 * f + 2] = static_cast<int32_t>(3 * f + (flip ? 1 : 2));
  }
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int64_t> order(F);
    for (int64_t f = 0; f < F; ++f) order[f] = f;
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t f = 0; f < F; ++f) {
      const double cx = u(rng) * (W + 8) - 4, cy = u(rng) * (H + 8) - 4, r = 2 + 5 * u(rng);
      const double theta = 2 * kPi * u(rng);
      for (int k = 0; k < 3; ++k) {
        const double a = theta + 2 * kPi * k / 3 + 0.8 * (u(rng) - 0.5);
        double* v = &m.vertices[((n * m.V) + 3 * f + k) * 3];
        v[0] = quantise(cx + r * std::cos(a));
        v[1] = quantise(cy + r * std::sin(a));
        v[2] = 1.0 + static_cast<double>(order[f]) + 0.3 * (u(rng) - 0.5);
      }
    }
  }
  return m;
}

template <typename T>
std::vector<T> as(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// The z-buffer by a plain loop over every pixel and every triangle (setup and coverage test from
// rasterize.h, which the Python tests check against exact arithmetic).
template <typename T>
std::vector<int32_t> brute_force_ids(const std::vector<T>& vertices, const Mesh& m, int64_t H, int64_t W) {
  std::vector<int32_t> ids(m.N * H * W, -1);
  for (int64_t n = 0; n < m.N; ++n) {
    std::vector<T> best(H * W, std::numeric_limits<T>::infinity());
    for (int64_t f = 0; f < m.F; ++f) {
      const T* v[3];
      for (int k = 0; k < 3; ++k) v[k] = &vertices[(n * m.V + m.triangles[3 * f + k]) * 3];
      wsc::RasterTriangle<T> t;
      if (!wsc::setup_triangle<T>(v, static_cast<int32_t>(f), H, W, t)) continue;
      for (int64_t y = 0; y < H; ++y) {
        for (int64_t x = 0; x < W; ++x) {
          if (!wsc::covers(t, x, y)) continue;
          T b[3];
          wsc::barycentrics<T>(t.vx, t.vy, t.coef, T(x) + T(0.5), T(y) + T(0.5), b);
          const T z = wsc::interpolate<T>(b, t.vz);
          if (z < best[y * W + x]) {
            best[y * W + x] = z;
            ids[(n * H + y) * W + x] = static_cast<int32_t>(f);
          }
        }
      }
    }
  }
  return ids;
}

template <typename T>
void check_forward(std::mt19937& rng, int64_t N, int64_t F, int64_t H, int64_t W) {
  const Mesh m = random_mesh(rng, N, F, H, W);
  const auto verts = as<T>(m.vertices);
  const size_t P = N * H * W;
  auto tri_id = output_buffer<int32_t>(P);
  auto bary = output_buffer<T>(3 * P);
  auto depth = output_buffer<T>(P);
  wsc::rasterize_forward_cpu<T>(verts.data(), m.triangles.data(), N, m.V, F, H, W, tri_id.data(), bary.data(),
                                depth.data());
  const auto want = brute_force_ids<T>(verts, m, H, W);
  int bad_id = 0, bad_value = 0, covered = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        const size_t p = (n * H + y) * W + x;
        bad_id += tri_id[p] != want[p];
        if (want[p] < 0) {
          bad_value += bary[3 * p] != 0 || bary[3 * p + 1] != 0 || bary[3 * p + 2] != 0 || depth[p] != 0;
          continue;
        }
        ++covered;
        // Barycentrics in double from the same vertices; they must reproduce the pixel centre.
        double px = 0, py = 0, pz = 0, sum = 0;
        for (int k = 0; k < 3; ++k) {
          const double* v = &m.vertices[(n * m.V + m.triangles[3 * want[p] + k]) * 3];
          const double b = bary[3 * p + k];
          px += b * v[0];
          py += b * v[1];
          pz += b * v[2];
          sum += b;
        }
        const double tol = std::is_same_v<T, float> ? 2e-4 : 1e-10;
        bad_value += std::fabs(px - (x + 0.5)) > tol || std::fabs(py - (y + 0.5)) > tol ||
                     std::fabs(pz - depth[p]) > tol * 10 || std::fabs(sum - 1) > tol;
      }
    }
  }
  CHECK(bad_id == 0 && bad_value == 0, "forward N=%ld F=%ld H=%ld W=%ld: %d ids, %d values wrong (%d covered)",
        long(N), long(F), long(H), long(W), bad_id, bad_value, covered);
  CHECK(covered > 0 || H * W < 10, "forward H=%ld W=%ld: nothing covered", long(H), long(W));
  CHECK(guards_intact(tri_id, P) && guards_intact(bary, 3 * P) && guards_intact(depth, P),
        "forward H=%ld W=%ld: wrote past the end of an output", long(H), long(W));
}

// One triangle with pixel centres on all three edges: (0.5,0.5), (8.5,0.5), (0.5,6.5) covers pixel
// (i, j) exactly when 6j + 8i < 48 (top and left edges in, hypotenuse out), for both windings.
void check_fill_rule() {
  for (const bool flip : {false, true}) {
    const double v[] = {0.5, 0.5, 1.0, 8.5, 0.5, 2.0, 0.5, 6.5, 3.0};
    const int32_t tri[] = {0, flip ? 2 : 1, flip ? 1 : 2};
    const int64_t H = 9, W = 11;
    std::vector<int32_t> ids(H * W);
    std::vector<double> bary(3 * H * W), depth(H * W);
    wsc::rasterize_forward_cpu<double>(v, tri, 1, 3, 1, H, W, ids.data(), bary.data(), depth.data());
    int bad = 0;
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) bad += (ids[i * W + j] == 0) != (6 * j + 8 * i < 48);
    CHECK(bad == 0, "fill rule (flip=%d): %d pixels wrong", int(flip), bad);
  }
}

// Sum over outputs of fixed random weights: the scalar whose gradient the backward returns.
struct Probe {
  std::vector<double> grad_bary, grad_depth;
};

double raster_objective(const std::vector<double>& verts, const Mesh& m, int64_t H, int64_t W, const Probe& g,
                        std::vector<int32_t>* ids_out = nullptr) {
  const size_t P = m.N * H * W;
  std::vector<int32_t> ids(P);
  std::vector<double> bary(3 * P), depth(P);
  wsc::rasterize_forward_cpu<double>(verts.data(), m.triangles.data(), m.N, m.V, m.F, H, W, ids.data(), bary.data(),
                                     depth.data());
  double s = 0;
  for (size_t p = 0; p < P; ++p) {
    s += g.grad_depth[p] * depth[p];
    for (int k = 0; k < 3; ++k) s += g.grad_bary[3 * p + k] * bary[3 * p + k];
  }
  if (ids_out) *ids_out = ids;
  return s;
}

void check_raster_backward(std::mt19937& rng, int64_t N, int64_t F, int64_t H, int64_t W) {
  const Mesh m = random_mesh(rng, N, F, H, W);
  std::normal_distribution<double> normal;
  const size_t P = N * H * W;
  Probe g{std::vector<double>(3 * P), std::vector<double>(P)};
  for (double& x : g.grad_bary) x = normal(rng);
  for (double& x : g.grad_depth) x = normal(rng);
  std::vector<int32_t> ids;
  raster_objective(m.vertices, m, H, W, g, &ids);
  auto grad = output_buffer<double>(m.vertices.size());
  wsc::rasterize_backward_cpu<double>(g.grad_bary.data(), g.grad_depth.data(), m.vertices.data(), m.triangles.data(),
                                      ids.data(), N, m.V, F, H, W, grad.data());
  int bad = 0;
  const double step = 1e-6;
  for (size_t i = 0; i < m.vertices.size(); ++i) {
    auto plus = m.vertices, minus = m.vertices;
    plus[i] += step;
    minus[i] -= step;
    const double fd = (raster_objective(plus, m, H, W, g) - raster_objective(minus, m, H, W, g)) / (2 * step);
    bad += std::fabs(fd - grad[i]) > 1e-5 * (1 + std::fabs(fd));
  }
  CHECK(bad == 0, "rasterize backward N=%ld F=%ld H=%ld W=%ld: %d of %zu gradients differ from finite differences",
        long(N), long(F), long(H), long(W), bad, m.vertices.size());
  CHECK(guards_intact(grad, m.vertices.size()), "rasterize backward: wrote past the end");
}

void check_photometric(std::mt19937& rng, int64_t N, int64_t F, int64_t H, int64_t W) {
  const Mesh m = random_mesh(rng, N, F, H, W);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int64_t HW = H * W;
  std::vector<double> image(N * 3 * HW), colors(N * m.V * 3), mask(N * HW), grad_loss(N);
  for (double& x : image) x = u(rng);
  for (double& x : colors) x = u(rng);
  for (double& x : mask) x = 0.2 + u(rng);
  for (double& x : grad_loss) x = u(rng) - 0.5;
  const double eps = 1.0;

  // Forward against a plain loop over the brute-force z-buffer.
  std::vector<int32_t> ids(N * HW);
  std::vector<double> loss(N), weight(N);
  wsc::photometric_forward_cpu<double>(image.data(), m.vertices.data(), m.triangles.data(), colors.data(),
                                       mask.data(), N, m.V, F, H, W, eps, ids.data(), loss.data(), weight.data());
  const auto want_ids = brute_force_ids<double>(m.vertices, m, H, W);
  int bad = 0;
  for (int64_t n = 0; n < N; ++n) {
    double num = 0, den = 0;
    for (int64_t p = 0; p < HW; ++p) {
      const int32_t f = want_ids[n * HW + p];
      bad += ids[n * HW + p] != f;
      if (f < 0) continue;
      double vx[3], vy[3], b[3];
      for (int k = 0; k < 3; ++k) {
        vx[k] = m.vertices[(n * m.V + m.triangles[3 * f + k]) * 3];
        vy[k] = m.vertices[(n * m.V + m.triangles[3 * f + k]) * 3 + 1];
      }
      double coef[4];
      wsc::barycentric_coefficients<double>(vx, vy, wsc::triangle_area<double>(vx, vy), coef);
      wsc::barycentrics<double>(vx, vy, coef, p % W + 0.5, p / W + 0.5, b);
      double sq = 0;
      for (int ch = 0; ch < 3; ++ch) {
        double r = 0;
        for (int k = 0; k < 3; ++k) r += b[k] * colors[(n * m.V + m.triangles[3 * f + k]) * 3 + ch];
        sq += (r - image[(n * 3 + ch) * HW + p]) * (r - image[(n * 3 + ch) * HW + p]);
      }
      num += mask[n * HW + p] * sq;
      den += mask[n * HW + p];
    }
    bad += std::fabs(loss[n] - num / std::max(den, eps)) > 1e-12 * (1 + num) || std::fabs(weight[n] - den) > 1e-9;
  }
  CHECK(bad == 0, "photometric forward N=%ld F=%ld H=%ld W=%ld: %d mismatches", long(N), long(F), long(H), long(W),
        bad);

  // Backward against central differences of sum_n grad_loss[n] * loss[n].
  auto objective = [&](const std::vector<double>& img, const std::vector<double>& v, const std::vector<double>& c,
                       const std::vector<double>& mk) {
    std::vector<int32_t> scratch(N * HW);
    std::vector<double> l(N), w(N);
    wsc::photometric_forward_cpu<double>(img.data(), v.data(), m.triangles.data(), c.data(), mk.data(), N, m.V, F, H,
                                         W, eps, scratch.data(), l.data(), w.data());
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += grad_loss[n] * l[n];
    return s;
  };
  auto gv = output_buffer<double>(m.vertices.size()), gc = output_buffer<double>(colors.size());
  auto gi = output_buffer<double>(image.size()), gm = output_buffer<double>(mask.size());
  wsc::photometric_backward_cpu<double>(grad_loss.data(), image.data(), m.vertices.data(), m.triangles.data(),
                                        colors.data(), mask.data(), ids.data(), loss.data(), weight.data(), N, m.V, F,
                                        H, W, eps, gv.data(), gc.data(), gi.data(), gm.data());
  const double step = 1e-6;
  int bad_grad = 0;
  // Every element of small inputs, 6 random ones of large inputs (two multi-threaded forwards
  // each, slow on a busy machine; the Python tests compare every element of large cases).
  auto check_input = [&](std::vector<double>& x, const std::vector<double>& analytic, int which) {
    std::vector<size_t> picks(x.size());
    for (size_t i = 0; i < x.size(); ++i) picks[i] = i;
    if (picks.size() > 1000) {
      std::shuffle(picks.begin(), picks.end(), rng);
      picks.resize(6);
    }
    for (const size_t i : picks) {
      const double saved = x[i];
      x[i] = saved + step;
      const double up = objective(image, m.vertices, colors, mask);
      x[i] = saved - step;
      const double down = objective(image, m.vertices, colors, mask);
      x[i] = saved;
      const double fd = (up - down) / (2 * step);
      if (std::fabs(fd - analytic[i]) > 1e-6 * (1 + std::fabs(fd))) {
        ++bad_grad;
        if (bad_grad < 4) std::fprintf(stderr, "input %d element %zu: fd %g analytic %g\n", which, i, fd, analytic[i]);
      }
    }
  };
  auto& verts = const_cast<std::vector<double>&>(m.vertices);
  check_input(verts, gv, 0);
  check_input(colors, gc, 1);
  check_input(image, gi, 2);
  check_input(mask, gm, 3);
  CHECK(bad_grad == 0, "photometric backward N=%ld F=%ld H=%ld W=%ld: %d gradients differ from finite differences",
        long(N), long(F), long(H), long(W), bad_grad);
  CHECK(guards_intact(gv, m.vertices.size()) && guards_intact(gc, colors.size()) && guards_intact(gi, image.size()) &&
            guards_intact(gm, mask.size()),
        "photometric backward: wrote past the end of an output");
#ifdef _OPENMP
  // With at least as many samples as threads each sample is one thread's sequential sum: the
  // gradients must not depend on the thread count at all.
  if (N >= omp_get_max_threads() && omp_get_max_threads() > 1) {
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    std::vector<double> gv1(gv.size()), gc1(gc.size());
    wsc::photometric_backward_cpu<double>(grad_loss.data(), image.data(), m.vertices.data(), m.triangles.data(),
                                          colors.data(), mask.data(), ids.data(), loss.data(), weight.data(), N, m.V,
                                          F, H, W, eps, gv1.data(), gc1.data(), nullptr, nullptr);
    omp_set_num_threads(threads);
    CHECK(std::memcmp(gv1.data(), gv.data(), m.vertices.size() * sizeof(double)) == 0 &&
              std::memcmp(gc1.data(), gc.data(), colors.size() * sizeof(double)) == 0,
          "photometric backward N=%ld: gradients depend on the thread count", long(N));
  }
#endif
}

}  // namespace

int main() {
  const unsigned seed = std::random_device{}();  // fresh inputs every run; the seed reproduces a failure
  std::printf("test_rasterize_cpu: seed %u\n", seed);
  std::mt19937 rng(seed);
  check_fill_rule();
  struct Size { int64_t N, F, H, W; };
  // 1x1, partial tiles, one tile exactly, and sizes above the multi-threading threshold (16384
  // pixels) with fewer samples than threads and with as many.
  const Size sizes[] = {{1, 4, 1, 1}, {2, 30, 24, 31}, {1, 20, 16, 16}, {3, 25, 17, 40}, {2, 200, 96, 90}, {1, 200, 130, 128}};
  for (const Size& s : sizes) {
    check_forward<float>(rng, s.N, s.F, s.H, s.W);
    check_forward<double>(rng, s.N, s.F, s.H, s.W);
  }
  check_raster_backward(rng, 2, 6, 11, 13);
  check_photometric(rng, 2, 5, 10, 12);
  // Multi-threaded: threads share one sample's tiles and rows; each owns whole samples.
  check_photometric(rng, 1, 60, 130, 128);
  check_photometric(rng, 2, 60, 96, 90);
  return wsc_test::report("test_rasterize_cpu");
}
