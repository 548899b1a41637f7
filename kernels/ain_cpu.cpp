// CPU loops for AIN. A task owns a block of pixels of one image and makes two channel loops
// over it: the first reduces across channels (mask logit, or its gradient), the second writes;
// the second re-reads the block's h from cache.
//
// Passes over memory of an (N, C, H, W) tensor E (the byte count in benchmarks/ain.py):
//   forward:  statistics read h; the main pass reads h, g_att, b_att and writes out
//             (h's second read per block comes from L2): 5 E-sized passes.
//   backward: sweep 1 reads g, h, g_att, b_att, writes dg_att, db_att; sweep 2 (after the
//             per-plane sums are complete) reads g, h, g_att and writes dh: 10 E-sized passes.
// Outputs of 8 MiB and more are stored with streaming stores (stream_store.h). Per-plane sums
// are reduced from per-task partials in a fixed order, so results do not depend on threads.
#include "ain.h"

#include <algorithm>
#include <vector>

#include "plane_stats_cpu.h"
#include "stream_store.h"

namespace wsc {
namespace {

constexpr int64_t kParallelMin = 1 << 15;  // elements below which threads cost more than they save

// Pixels per task. Long contiguous runs per channel plane (8 KB of fp32) keep the hardware
// prefetchers streaming; blocks of 128 pixels, sized to keep the block's h in L2 for C=256,
// measured 2x slower (8,256,64,64): 256 interleaved 512-byte runs defeat the prefetchers. The
// second channel loop then re-reads h from L2 or L3.
constexpr int64_t kPixelBlock = 2048;

bool stream_outputs(int64_t elements, size_t size, bool channels_last) {
  return !channels_last && elements * int64_t(size) >= kStreamMinBytes;
}

// Per-(n, c) sums of the backward, accumulated per task and reduced in task order. A task's
// partials are laid out [sum][channel], so NHWC's per-pixel channel loop adds contiguous vectors.
enum Sum { kDhn, kDhnHn, kGid, kBid, kW, kSums };

}  // namespace

template <typename T, typename S>
void ain_forward_cpu(const T* h, const T* g_id, const T* b_id, const T* g_att, const T* b_att, const T* w,
                     const T* b, T* out, S* mask, S* mean, S* rstd, int64_t N, int64_t C, int64_t HW,
                     double eps, bool channels_last) {
  if (N * HW == 0) return;
  if (C == 0) {  // no channels: the logit is the bias alone
    for (int64_t i = 0; i < N * HW; ++i) mask[i] = sigmoid<S>(load(b[0]));
    return;
  }
  if (channels_last) plane_stats::stats_nhwc(h, mean, rstd, N, C, HW, eps);
  else plane_stats::stats_nchw(h, mean, rstd, N * C, HW, eps);

  const int64_t P = kPixelBlock, blocks = (HW + P - 1) / P;
  const bool streaming = stream_outputs(N * C * HW, sizeof(T), channels_last);
  const S bias = load(b[0]);
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < N * blocks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * P, len = std::min(HW, p0 + P) - p0;
    const S* mu = mean + n * C;
    const S* rs = rstd + n * C;
    S* m = mask + n * HW + p0;
    if (!channels_last) {
      S z[kPixelBlock];
      std::fill(z, z + len, S(0));
      for (int64_t c = 0; c < C; ++c) {
        const T* x = h + (n * C + c) * HW + p0;
        const S wc = load(w[c]), muc = mu[c], rsc = rs[c];
#pragma omp simd
        for (int64_t p = 0; p < len; ++p) z[p] += wc * ((load(x[p]) - muc) * rsc);
      }
      for (int64_t p = 0; p < len; ++p) m[p] = sigmoid<S>(z[p] + bias);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (n * C + c) * HW + p0;
        const T* x = h + off; const T* ga = g_att + off; const T* ba = b_att + off;
        const S muc = mu[c], rsc = rs[c], gi = load(g_id[n * C + c]), bi = load(b_id[n * C + c]);
        constexpr int64_t kLine = 64 / sizeof(T);
        auto line_step = [&](int64_t q, int64_t count) {
          alignas(64) T line[kLine];
#pragma omp simd
          for (int64_t j = 0; j < count; ++j) {
            const S hn = (load(x[q + j]) - muc) * rsc;
            line[j] = store<T>(ain_value<S>(hn, m[q + j], load(ga[q + j]), load(ba[q + j]), gi, bi));
          }
          put_line(out + off + q, line, count, streaming);
        };
        for_each_line<kLine>(out + off, len, line_step);
      }
    } else {
      const T* gi = g_id + n * C;
      const T* bi = b_id + n * C;
      for (int64_t p = 0; p < len; ++p) {
        const int64_t off = (n * HW + p0 + p) * C;
        const T* x = h + off; const T* ga = g_att + off; const T* ba = b_att + off;
        S z = 0;
#pragma omp simd reduction(+ : z)
        for (int64_t c = 0; c < C; ++c) z += load(w[c]) * ((load(x[c]) - mu[c]) * rs[c]);
        const S mv = sigmoid<S>(z + bias);
        m[p] = mv;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const S hn = (load(x[c]) - mu[c]) * rs[c];
          out[off + c] = store<T>(ain_value<S>(hn, mv, load(ga[c]), load(ba[c]), load(gi[c]), load(bi[c])));
        }
      }
    }
    if (streaming) stream_fence();
  }
}

template <typename T, typename S>
void ain_backward_cpu(const T* grad_out, const T* grad_mask_in, const T* h, const T* g_id, const T* b_id,
                      const T* g_att, const T* b_att, const T* w, const S* mask, const S* mean, const S* rstd,
                      T* grad_h, T* grad_g_id, T* grad_b_id, T* grad_g_att, T* grad_b_att, T* grad_w, T* grad_b,
                      int64_t N, int64_t C, int64_t HW, bool channels_last) {
  const int64_t P = kPixelBlock, blocks = (HW + P - 1) / P, tasks = N * blocks;
  const bool streaming = stream_outputs(N * C * HW, sizeof(T), channels_last);
  // Sweep 1: per pixel the logit gradient dz (kept for sweep 2), per task the partial sums.
  std::vector<S> dz_all(static_cast<size_t>(N * HW));
  std::vector<S> part(static_cast<size_t>(tasks * C * kSums));
  std::vector<S> part_bias(static_cast<size_t>(tasks));
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * P, len = std::min(HW, p0 + P) - p0;
    const S* mu = mean + n * C;
    const S* rs = rstd + n * C;
    const S* m = mask + n * HW + p0;
    S* dz = dz_all.data() + n * HW + p0;
    S* sums = part.data() + task * C * kSums;
    if (!channels_last) {
      S dm[kPixelBlock];
      for (int64_t p = 0; p < len; ++p) dm[p] = grad_mask_in ? load(grad_mask_in[n * HW + p0 + p]) : S(0);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (n * C + c) * HW + p0;
        const T* g = grad_out + off; const T* x = h + off; const T* ga = g_att + off; const T* ba = b_att + off;
        const S muc = mu[c], rsc = rs[c], gi = load(g_id[n * C + c]), bi = load(b_id[n * C + c]);
#pragma omp simd
        for (int64_t p = 0; p < len; ++p)
          dm[p] += ain_mask_grad_term<S>(load(g[p]), (load(x[p]) - muc) * rsc, load(ga[p]), load(ba[p]), gi, bi);
      }
      S bias_sum = 0;
      for (int64_t p = 0; p < len; ++p) {
        dz[p] = ain_logit_grad<S>(dm[p], m[p]);
        bias_sum += dz[p];
      }
      part_bias[task] = bias_sum;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (n * C + c) * HW + p0;
        const T* g = grad_out + off; const T* x = h + off; const T* ga = g_att + off;
        const S muc = mu[c], rsc = rs[c], gi = load(g_id[n * C + c]), wc = load(w[c]);
        S s_dhn = 0, s_dhn_hn = 0, s_gid = 0, s_bid = 0, s_w = 0;
        constexpr int64_t kLine = 64 / sizeof(T);
        auto line_step = [&](int64_t q, int64_t count) {
          alignas(64) T line_ga[kLine], line_ba[kLine];
#pragma omp simd reduction(+ : s_dhn, s_dhn_hn, s_gid, s_bid, s_w)
          for (int64_t j = 0; j < count; ++j) {
            const int64_t p = q + j;
            const S gv = load(g[p]), hn = (load(x[p]) - muc) * rsc, mv = m[p];
            const S dhn = ain_hn_grad<S>(gv, mv, load(ga[p]), gi, dz[p], wc);
            line_ga[j] = store<T>(gv * (S(1) - mv) * hn);
            line_ba[j] = store<T>(gv * (S(1) - mv));
            s_dhn += dhn;
            s_dhn_hn += dhn * hn;
            s_gid += gv * mv * hn;
            s_bid += gv * mv;
            s_w += dz[p] * hn;
          }
          put_line(grad_g_att + off + q, line_ga, count, streaming);
          put_line(grad_b_att + off + q, line_ba, count, streaming);
        };
        for_each_line<kLine>(grad_g_att + off, len, line_step);
        sums[kDhn * C + c] = s_dhn; sums[kDhnHn * C + c] = s_dhn_hn; sums[kGid * C + c] = s_gid;
        sums[kBid * C + c] = s_bid; sums[kW * C + c] = s_w;
      }
    } else {
      std::fill(sums, sums + C * kSums, S(0));
      S* s_dhn = sums + kDhn * C; S* s_dhn_hn = sums + kDhnHn * C; S* s_gid = sums + kGid * C;
      S* s_bid = sums + kBid * C; S* s_w = sums + kW * C;
      S bias_sum = 0;
      const T* gi = g_id + n * C;
      const T* bi = b_id + n * C;
      for (int64_t p = 0; p < len; ++p) {
        const int64_t off = (n * HW + p0 + p) * C;
        const T* g = grad_out + off; const T* x = h + off; const T* ga = g_att + off; const T* ba = b_att + off;
        S dm = grad_mask_in ? load(grad_mask_in[n * HW + p0 + p]) : S(0);
#pragma omp simd reduction(+ : dm)
        for (int64_t c = 0; c < C; ++c)
          dm += ain_mask_grad_term<S>(load(g[c]), (load(x[c]) - mu[c]) * rs[c], load(ga[c]), load(ba[c]),
                                      load(gi[c]), load(bi[c]));
        const S mv = m[p], dzv = ain_logit_grad<S>(dm, mv);
        dz[p] = dzv;
        bias_sum += dzv;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const S gv = load(g[c]), hn = (load(x[c]) - mu[c]) * rs[c];
          const S dhn = ain_hn_grad<S>(gv, mv, load(ga[c]), load(gi[c]), dzv, load(w[c]));
          grad_g_att[off + c] = store<T>(gv * (S(1) - mv) * hn);
          grad_b_att[off + c] = store<T>(gv * (S(1) - mv));
          s_dhn[c] += dhn; s_dhn_hn[c] += dhn * hn; s_gid[c] += gv * mv * hn; s_bid[c] += gv * mv; s_w[c] += dzv * hn;
        }
      }
      part_bias[task] = bias_sum;
    }
    if (streaming) stream_fence();
  }

  // Per-plane totals (in task order: deterministic), the small gradients, and the means sweep 2 needs.
  std::vector<S> mean_dhn(static_cast<size_t>(N * C)), mean_dhn_hn(static_cast<size_t>(N * C));
  std::vector<double> w_sum(static_cast<size_t>(C), 0.0);  // sums over many tasks: double
  double bias_total = 0;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      double t[kSums] = {0, 0, 0, 0, 0};
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int k = 0; k < kSums; ++k) t[k] += part[((n * blocks + blk) * kSums + k) * C + c];
      mean_dhn[n * C + c] = static_cast<S>(t[kDhn] / static_cast<double>(HW));
      mean_dhn_hn[n * C + c] = static_cast<S>(t[kDhnHn] / static_cast<double>(HW));
      grad_g_id[n * C + c] = store<T>(static_cast<S>(t[kGid]));
      grad_b_id[n * C + c] = store<T>(static_cast<S>(t[kBid]));
      w_sum[c] += t[kW];
    }
    for (int64_t blk = 0; blk < blocks; ++blk) bias_total += part_bias[n * blocks + blk];
  }
  for (int64_t c = 0; c < C; ++c) grad_w[c] = store<T>(static_cast<S>(w_sum[c]));
  grad_b[0] = store<T>(static_cast<S>(bias_total));

  // Sweep 2: dh, recomputing dhn from the inputs (exact in every dtype; no E-sized scratch).
#pragma omp parallel for schedule(static) if (N * C * HW >= kParallelMin)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / blocks, p0 = (task % blocks) * P, len = std::min(HW, p0 + P) - p0;
    const S* mu = mean + n * C;
    const S* rs = rstd + n * C;
    const S* m = mask + n * HW + p0;
    const S* dz = dz_all.data() + n * HW + p0;
    const S* md = mean_dhn.data() + n * C;
    const S* mdh = mean_dhn_hn.data() + n * C;
    if (!channels_last) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t off = (n * C + c) * HW + p0;
        const T* g = grad_out + off; const T* x = h + off; const T* ga = g_att + off;
        const S muc = mu[c], rsc = rs[c], gi = load(g_id[n * C + c]), wc = load(w[c]);
        constexpr int64_t kLine = 64 / sizeof(T);
        auto line_step = [&](int64_t q, int64_t count) {
          alignas(64) T line[kLine];
#pragma omp simd
          for (int64_t j = 0; j < count; ++j) {
            const int64_t p = q + j;
            const S hn = (load(x[p]) - muc) * rsc;
            const S dhn = ain_hn_grad<S>(load(g[p]), m[p], load(ga[p]), gi, dz[p], wc);
            line[j] = store<T>(ain_input_grad<S>(dhn, hn, rsc, md[c], mdh[c]));
          }
          put_line(grad_h + off + q, line, count, streaming);
        };
        for_each_line<kLine>(grad_h + off, len, line_step);
      }
    } else {
      const T* gi = g_id + n * C;
      for (int64_t p = 0; p < len; ++p) {
        const int64_t off = (n * HW + p0 + p) * C;
        const T* g = grad_out + off; const T* x = h + off; const T* ga = g_att + off;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const S hn = (load(x[c]) - mu[c]) * rs[c];
          const S dhn = ain_hn_grad<S>(load(g[c]), m[p], load(ga[c]), load(gi[c]), dz[p], load(w[c]));
          grad_h[off + c] = store<T>(ain_input_grad<S>(dhn, hn, rs[c], md[c], mdh[c]));
        }
      }
    }
    if (streaming) stream_fence();
  }
}

#define WSC_INSTANTIATE(T, S)                                                                              \
  template void ain_forward_cpu<T, S>(const T*, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                      T*, S*, S*, S*, int64_t, int64_t, int64_t, double, bool);               \
  template void ain_backward_cpu<T, S>(const T*, const T*, const T*, const T*, const T*, const T*, const T*, \
                                       const T*, const S*, const S*, const S*, T*, T*, T*, T*, T*, T*, T*,   \
                                       int64_t, int64_t, int64_t, bool);
WSC_INSTANTIATE(float, float)
WSC_INSTANTIATE(double, double)
WSC_INSTANTIATE(half_t, float)
WSC_INSTANTIATE(bf16_t, float)
#undef WSC_INSTANTIATE

}  // namespace wsc
