// Binding of the rasterizer and photometric-loss kernels: checks, then CPU or CUDA dispatch.
// The Python op (wscswap_fast/ops/rasterize.py) validates user input, including the triangle
// index range; these checks guard the raw-pointer kernels against misuse of _C.
#include <optional>

#include "checks.h"

#include "../kernels/rasterize.h"

namespace wsc_binding {
namespace {

struct Mesh {
  int64_t N, V, F;
};

Mesh check_mesh(const at::Tensor& vertices, const at::Tensor& triangles) {
  TORCH_CHECK(vertices.dim() == 3 && vertices.size(2) == 3 && vertices.is_contiguous(),
              "vertices must be a dense (N,V,3) tensor");
  TORCH_CHECK(vertices.scalar_type() == at::kFloat || vertices.scalar_type() == at::kDouble,
              "vertices must be float32 or float64, got ", vertices.scalar_type());
  WSC_CHECK_TENSOR(triangles, vertices.device(), at::kInt);
  TORCH_CHECK(triangles.dim() == 2 && triangles.size(1) == 3 && triangles.is_contiguous(),
              "triangles must be a dense (F,3) int32 tensor");
  TORCH_CHECK(vertices.size(1) < (int64_t(1) << 31) && triangles.size(0) < (int64_t(1) << 31),
              "at most 2^31 - 1 vertices and triangles");
  return Mesh{vertices.size(0), vertices.size(1), triangles.size(0)};
}

void check_dense(const at::Tensor& t, at::IntArrayRef sizes, const at::Tensor& like, at::ScalarType dt,
                 const char* name) {
  WSC_CHECK_TENSOR(t, like.device(), dt);
  TORCH_CHECK(t.sizes() == sizes && t.is_contiguous(), name, " must be a dense tensor of shape ", sizes,
              ", got ", t.sizes());
}

void check_image_size(int64_t H, int64_t W) {
  TORCH_CHECK(H > 0 && W > 0 && H <= (int64_t(1) << 21) && W <= (int64_t(1) << 21),
              "height and width must be in [1, 2^21], got ", H, "x", W);
}

template <typename T>
const T* optional_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? ptr<T>(*t) : nullptr;
}

#ifdef WSC_WITH_CUDA
// Triangle setups and tile bins on the GPU (kernels/rasterize.cu, steps 1-3).
struct CudaBins {
  at::Tensor setups, counts, offsets, entries;
};

CudaBins bin_cuda(const at::Tensor& vertices, const at::Tensor& triangles, const Mesh& m, int64_t H, int64_t W,
                  void* stream) {
  const int64_t bins = m.N * ((H + wsc::kRasterTile - 1) / wsc::kRasterTile) *
                       ((W + wsc::kRasterTile - 1) / wsc::kRasterTile);
  const auto dev = vertices.device();
  CudaBins b;
  b.setups = at::empty({std::max<int64_t>(m.N * m.F, 1) * int64_t(sizeof(wsc::RasterTriangle<float>))},
                       at::TensorOptions().dtype(at::kByte).device(dev));
  b.counts = at::empty({bins}, at::TensorOptions().dtype(at::kInt).device(dev));
  b.offsets = at::empty({bins + 1}, at::TensorOptions().dtype(at::kLong).device(dev));
  const int64_t total = wsc::rasterize_bin_count_cuda(ptr<float>(vertices), ptr<int32_t>(triangles), m.N, m.V, m.F,
                                                      H, W, b.setups.data_ptr(), ptr<int32_t>(b.counts),
                                                      ptr<int64_t>(b.offsets), stream);
  b.entries = at::empty({std::max<int64_t>(total, 1)}, at::TensorOptions().dtype(at::kInt).device(dev));
  wsc::rasterize_bin_fill_cuda(b.setups.data_ptr(), ptr<int64_t>(b.offsets), m.N, m.F, H, W, ptr<int32_t>(b.counts),
                               ptr<int32_t>(b.entries), stream);
  return b;
}
#endif

}  // namespace

void rasterize_forward(const at::Tensor& vertices, const at::Tensor& triangles, int64_t H, int64_t W,
                       const at::Tensor& tri_id, const at::Tensor& bary, const at::Tensor& depth, int64_t stream) {
  const Mesh m = check_mesh(vertices, triangles);
  check_image_size(H, W);
  const auto dt = vertices.scalar_type();
  check_dense(tri_id, {m.N, H, W}, vertices, at::kInt, "tri_id");
  check_dense(bary, {m.N, H, W, 3}, vertices, dt, "bary");
  check_dense(depth, {m.N, H, W}, vertices, dt, "depth");
  if (m.N == 0) return;
  dispatch_float(dt, !vertices.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (vertices.is_cuda()) {
#ifdef WSC_WITH_CUDA
        if constexpr (std::is_same_v<T, float>) {
          const CudaBins b = bin_cuda(vertices, triangles, m, H, W, as_stream(stream));
          wsc::rasterize_forward_cuda(b.setups.data_ptr(), ptr<int64_t>(b.offsets), ptr<int32_t>(b.entries), m.N,
                                      m.F, H, W, ptr<int32_t>(tri_id), ptr<float>(bary), ptr<float>(depth),
                                      as_stream(stream));
        }
#else
        TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
      } else {
        wsc::rasterize_forward_cpu<T>(ptr<T>(vertices), ptr<int32_t>(triangles), m.N, m.V, m.F, H, W,
                                      ptr<int32_t>(tri_id), ptr<T>(bary), ptr<T>(depth));
      }
    }
  });
}

void rasterize_backward(const at::Tensor& grad_bary, const at::Tensor& grad_depth, const at::Tensor& vertices,
                        const at::Tensor& triangles, const at::Tensor& tri_id, const at::Tensor& grad_vertices,
                        int64_t stream) {
  const Mesh m = check_mesh(vertices, triangles);
  TORCH_CHECK(tri_id.dim() == 3, "tri_id must be (N,H,W)");
  const int64_t H = tri_id.size(1), W = tri_id.size(2);
  const auto dt = vertices.scalar_type();
  check_dense(tri_id, {m.N, H, W}, vertices, at::kInt, "tri_id");
  check_dense(grad_bary, {m.N, H, W, 3}, vertices, dt, "grad_bary");
  check_dense(grad_depth, {m.N, H, W}, vertices, dt, "grad_depth");
  check_dense(grad_vertices, {m.N, m.V, 3}, vertices, dt, "grad_vertices");
  if (vertices.is_cuda()) grad_vertices.zero_();  // the CUDA kernel adds with atomics
  if (m.N * H * W == 0) {
    grad_vertices.zero_();
    return;
  }
  dispatch_float(dt, !vertices.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (vertices.is_cuda()) {
#ifdef WSC_WITH_CUDA
        if constexpr (std::is_same_v<T, float>)
          wsc::rasterize_backward_cuda(ptr<float>(grad_bary), ptr<float>(grad_depth), ptr<float>(vertices),
                                       ptr<int32_t>(triangles), ptr<int32_t>(tri_id), m.N, m.V, H, W,
                                       ptr<float>(grad_vertices), as_stream(stream));
#else
        TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
      } else {
        wsc::rasterize_backward_cpu<T>(ptr<T>(grad_bary), ptr<T>(grad_depth), ptr<T>(vertices),
                                       ptr<int32_t>(triangles), ptr<int32_t>(tri_id), m.N, m.V, m.F, H, W,
                                       ptr<T>(grad_vertices));
      }
    }
  });
}

void photometric_forward(const at::Tensor& image, const at::Tensor& vertices, const at::Tensor& triangles,
                         const at::Tensor& colors, const std::optional<at::Tensor>& mask, double eps,
                         const at::Tensor& tri_id, const at::Tensor& loss, const at::Tensor& weight, int64_t stream) {
  const Mesh m = check_mesh(vertices, triangles);
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, "image must be (N,3,H,W)");
  const int64_t H = image.size(2), W = image.size(3);
  check_image_size(H, W);
  const auto dt = vertices.scalar_type();
  check_dense(image, {m.N, 3, H, W}, vertices, dt, "image");
  check_dense(colors, {m.N, m.V, 3}, vertices, dt, "colors");
  if (mask.has_value()) check_dense(*mask, {m.N, H, W}, vertices, dt, "mask");
  check_dense(tri_id, {m.N, H, W}, vertices, at::kInt, "tri_id");
  check_dense(loss, {m.N}, vertices, dt, "loss");
  check_dense(weight, {m.N}, vertices, dt, "weight");
  TORCH_CHECK(eps > 0, "eps must be positive");
  if (m.N == 0) return;
  dispatch_float(dt, !vertices.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (vertices.is_cuda()) {
#ifdef WSC_WITH_CUDA
        if constexpr (std::is_same_v<T, float>) {
          const CudaBins b = bin_cuda(vertices, triangles, m, H, W, as_stream(stream));
          const at::Tensor tile_sums = at::empty({b.counts.numel() * 2}, image.options());
          wsc::photometric_forward_cuda(b.setups.data_ptr(), ptr<int64_t>(b.offsets), ptr<int32_t>(b.entries),
                                        ptr<float>(image), ptr<int32_t>(triangles), ptr<float>(colors),
                                        optional_ptr<float>(mask), m.N, m.V, m.F, H, W, eps, ptr<int32_t>(tri_id),
                                        ptr<float>(tile_sums), ptr<float>(loss), ptr<float>(weight),
                                        as_stream(stream));
        }
#else
        TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
      } else {
        wsc::photometric_forward_cpu<T>(ptr<T>(image), ptr<T>(vertices), ptr<int32_t>(triangles), ptr<T>(colors),
                                        optional_ptr<T>(mask), m.N, m.V, m.F, H, W, eps, ptr<int32_t>(tri_id),
                                        ptr<T>(loss), ptr<T>(weight));
      }
    }
  });
}

void photometric_backward(const at::Tensor& grad_loss, const at::Tensor& image, const at::Tensor& vertices,
                          const at::Tensor& triangles, const at::Tensor& colors, const std::optional<at::Tensor>& mask,
                          const at::Tensor& tri_id, const at::Tensor& loss, const at::Tensor& weight, double eps,
                          const at::Tensor& grad_vertices, const at::Tensor& grad_colors,
                          const std::optional<at::Tensor>& grad_image, const std::optional<at::Tensor>& grad_mask,
                          int64_t stream) {
  const Mesh m = check_mesh(vertices, triangles);
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, "image must be (N,3,H,W)");
  const int64_t H = image.size(2), W = image.size(3);
  const auto dt = vertices.scalar_type();
  check_dense(image, {m.N, 3, H, W}, vertices, dt, "image");
  check_dense(colors, {m.N, m.V, 3}, vertices, dt, "colors");
  if (mask.has_value()) check_dense(*mask, {m.N, H, W}, vertices, dt, "mask");
  check_dense(tri_id, {m.N, H, W}, vertices, at::kInt, "tri_id");
  for (const at::Tensor* t : {&grad_loss, &loss, &weight}) check_dense(*t, {m.N}, vertices, dt, "per-sample tensor");
  check_dense(grad_vertices, {m.N, m.V, 3}, vertices, dt, "grad_vertices");
  check_dense(grad_colors, {m.N, m.V, 3}, vertices, dt, "grad_colors");
  if (grad_image.has_value()) check_dense(*grad_image, {m.N, 3, H, W}, vertices, dt, "grad_image");
  if (grad_mask.has_value()) check_dense(*grad_mask, {m.N, H, W}, vertices, dt, "grad_mask");
  TORCH_CHECK(eps > 0, "eps must be positive");
  if (vertices.is_cuda() || m.N * H * W == 0) {  // the CUDA kernel adds with atomics
    grad_vertices.zero_();
    grad_colors.zero_();
  }
  if (m.N * H * W == 0) return;
  dispatch_float(dt, !vertices.is_cuda(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (vertices.is_cuda()) {
#ifdef WSC_WITH_CUDA
        if constexpr (std::is_same_v<T, float>)
          wsc::photometric_backward_cuda(ptr<float>(grad_loss), ptr<float>(image), ptr<float>(vertices),
                                         ptr<int32_t>(triangles), ptr<float>(colors), optional_ptr<float>(mask),
                                         ptr<int32_t>(tri_id), ptr<float>(loss), ptr<float>(weight), m.N, m.V, H, W,
                                         eps, ptr<float>(grad_vertices), ptr<float>(grad_colors),
                                         grad_image.has_value() ? ptr<float>(*grad_image) : nullptr,
                                         grad_mask.has_value() ? ptr<float>(*grad_mask) : nullptr,
                                         as_stream(stream));
#else
        TORCH_CHECK(false, "wscswap_fast._C was built without CUDA");
#endif
      } else {
        wsc::photometric_backward_cpu<T>(ptr<T>(grad_loss), ptr<T>(image), ptr<T>(vertices), ptr<int32_t>(triangles),
                                         ptr<T>(colors), optional_ptr<T>(mask), ptr<int32_t>(tri_id), ptr<T>(loss),
                                         ptr<T>(weight), m.N, m.V, m.F, H, W, eps, ptr<T>(grad_vertices),
                                         ptr<T>(grad_colors), grad_image.has_value() ? ptr<T>(*grad_image) : nullptr,
                                         grad_mask.has_value() ? ptr<T>(*grad_mask) : nullptr);
      }
    }
  });
}

}  // namespace wsc_binding
