/// @file packed_weight.hpp
/// @brief oneDNN implementation of a packed frozen weight (see core/weight_pack.hpp for the concept).
///
/// W (d_out, d_in) is reordered twice, once per product, into the blocked layout oneDNN's matmul chooses
/// for it: Wᵀ as the (d_in, d_out) right operand of y = x·Wᵀ, and W as the (d_out, d_in) right operand of
/// dx = dy·W. In bf16 the left operand (x or dy) is rounded to bf16 on the way in (one pass, round to
/// nearest even); the product accumulates in f32 and is written in f32.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "pemoe/core/dnnl/bf16_operands.hpp"
#include "pemoe/core/dnnl/matmul.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/core/profile.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::dnnl_backend {

/**
 * A frozen W (d_out, d_in) packed for y = x·Wᵀ and dx = dy·W, in f32 or bf16 (f32 accumulation).
 *
 * Two layouts: `blocked` reorders W twice, once per product, into the layout oneDNN's matmul picks (the
 * fastest products; 2 copies of W). `single` keeps one plain row-major bf16 copy of W that both products
 * read through strides (Wᵀ as the forward's right operand, W as the backward's): half the memory of the
 * blocked bf16 pack, which is a quarter of the f32 weight, and its rows can be gathered (an embedding
 * lookup reading the tied head's copy).
 */
class PackedWeight {
 public:
  enum class Layout { blocked, single };

  /// Packs W. `rows_hint` is the number of rows the products will mostly have (the blocked layout oneDNN
  /// picks may depend on it; any row count works). `Layout::single` needs `bf16`.
  PackedWeight(ConstMatrixRef<float> W, bool bf16, Index rows_hint = 256, Layout layout = Layout::blocked)
      : m_bf16(bf16), m_layout(layout), m_d_out(W.rows()), m_d_in(W.cols()) {
    PEMOE_CHECK_CONFIG(
        layout == Layout::blocked || bf16,
        "PackedWeight: the single-copy layout is a bf16 layout (an f32 copy would duplicate W)");
    if (layout == Layout::single) {
      make_single(W);
      return;
    }
    // forward: op(B) = Wᵀ, (d_in, d_out), element (i, o) at W[o, i]: strides (1, ld)
    m_fwd = pack(W.data(), m_d_in, m_d_out, 1, W.outerStride(), rows_hint, 1);
    // backward: op(B) = W, (d_out, d_in), strides (ld, 1); in bf16 with a long d_out, one pack per block of
    // kBackwardChunk rows of W
    const Index chunk = bf16 && m_d_out > kChunkAbove ? kBackwardChunk : std::max<Index>(m_d_out, 1);
    for (Index start = 0; start < m_d_out; start += chunk) {
      const Index rows = std::min(chunk, m_d_out - start);
      m_bwd.push_back(
          pack(W.data() + start * W.outerStride(), rows, m_d_in, W.outerStride(), 1, rows_hint, 2));
      m_bwd_start.push_back(start);
    }
  }

  /// In bf16, the backward product dx = dy·W of a weight with more than `kChunkAbove` output rows (the tied
  /// LM head: d_out = 50257) runs as a sum over blocks of `kBackwardChunk` rows of W, each packed on its
  /// own. Measured on one AMX core at (256, 50257)·(50257, 768): 27.8 ms in blocks of 512, 41.7 ms as one
  /// product (oneDNN 2.6). In f32 blocking gained nothing (110 against 114 ms), so f32 packs stay whole.
  static constexpr Index kChunkAbove = 4096;
  static constexpr Index kBackwardChunk = 512;  ///< see `kChunkAbove`
  /// In the single-copy layout the backward product reads W plain (row-major, "ab"), which oneDNN 2.6 runs
  /// faster in depth blocks of at most 768 rows of W. Measured on one AMX core, dx at 256 rows (ms, whole →
  /// blocked; the blocked pack for reference): (256, 2304)·(2304, 768) 1.43 → 1.17 (1.14), (256, 3072)·(3072,
  /// 768) 1.97 → 1.38–1.65 (1.59–1.94); (256, 768)·(768, 3072) stays 1.65–1.72 (1.06–1.39), blocking its
  /// columns gained nothing.
  static constexpr Index kSingleBackwardDepth = 768;

  /// y = x·Wᵀ (+ b when `bias` is given: d_out values) + beta·y, the bias and beta·y added by the product's
  /// epilogue while the tile is in registers.   x (N, d_in) -> y (N, d_out)
  void forward(ConstMatrixRef<float> x, MatrixRef<float> y, const float* bias = nullptr,
               float beta = 0.0f) const {
    run(m_fwd, x, y, beta, bias);
  }
  /// dx = dy·W + beta·dx.   dy (N, d_out) -> dx (N, d_in)
  void backward_input(ConstMatrixRef<float> dy, MatrixRef<float> dx, float beta) const {
    PEMOE_CHECK_SHAPE(dy.cols() == m_d_out, "packed weight product: dy has ", dy.cols(),
                      " columns, the weight ", m_d_out, " outputs");
    if (m_bwd.empty()) {  // d_out == 0: dx = beta·dx
      if (beta == 0.0f)
        dx.setZero();
      else
        dx *= beta;
      return;
    }
    for (std::size_t i = 0; i < m_bwd.size(); ++i)
      run(m_bwd[i], dy.middleCols(m_bwd_start[i], m_bwd[i].k), dx, i == 0 ? beta : 1.0f);
  }

  /// W (d_out, d_in) back from the forward pack (bf16-rounded when packed in bf16).
  Matrix<float> unpack() const {
    Matrix<float> W(m_d_out, m_d_in);
    if (m_layout == Layout::single) {
      for (Index i = 0; i < m_d_out; ++i) gather_row(i, W.row(i).data());
      return W;
    }
    const auto& eng = engine();
    dnnl::memory src(m_fwd.md, eng, m_fwd.data);
    dnnl::memory dst(strided_desc(m_d_in, m_d_out, 1, m_d_in, dnnl::memory::data_type::f32), eng, W.data());
    dnnl::reorder(src, dst).execute(stream(), src, dst);
    stream().wait();
    return W;
  }

  /// Row `o` of W (d_in values, exact: bf16 → f32 widens) into `out`; `Layout::single` only.
  void gather_row(Index o, float* out) const {
    PEMOE_CHECK_CONFIG(m_layout == Layout::single,
                       "PackedWeight: rows can be read from a single-copy pack only");
    PEMOE_CHECK_SHAPE(o >= 0 && o < m_d_out, "PackedWeight: row ", o, " outside [0, ", m_d_out, ")");
    const auto* src = m_single.get() + o * m_d_in;
    for (Index j = 0; j < m_d_in; ++j) out[j] = static_cast<float>(src[j]);
  }

  std::size_t bytes() const {
    std::size_t b = m_fwd.bytes + m_single_bytes;
    for (const Packed& p : m_bwd) b += p.bytes;
    return b;
  }
  bool bf16() const { return m_bf16; }
  Layout layout() const { return m_layout; }
  Index d_out() const { return m_d_out; }
  Index d_in() const { return m_d_in; }

 private:
  struct Packed {
    dnnl::memory::desc md;
    std::unique_ptr<unsigned char[]> storage;
    unsigned char* data = nullptr;  // 64-byte aligned inside storage
    std::size_t bytes = 0;
    Index k = 0, n = 0, rows_hint = 0;
    int which = 0;  // 1 forward, 2 backward, 3 / 4 the same over the single copy (part of the cache key)
  };

  dnnl::memory::data_type wdt() const {
    return m_bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
  }

  /// The single-copy layout: W rounded to bf16, row-major (d_out, d_in), and two plain descriptors over it
  /// (Wᵀ with strides (1, d_in) forward; W with strides (d_in, 1) backward, in depth blocks of at most
  /// `kSingleBackwardDepth` rows of W).
  void make_single(ConstMatrixRef<float> W) {
    using dt = dnnl::memory::data_type;
    const std::size_t count = static_cast<std::size_t>(m_d_out * m_d_in);
    m_single.reset(new Eigen::bfloat16[std::max<std::size_t>(count, 1)]);
    m_single_bytes = count * sizeof(Eigen::bfloat16);
    round_to_bf16(W, m_single.get());
    auto* data = reinterpret_cast<unsigned char*>(m_single.get());
    m_fwd.md = strided_desc(m_d_in, m_d_out, 1, m_d_in, dt::bf16);
    m_fwd.data = data;
    m_fwd.k = m_d_in;
    m_fwd.n = m_d_out;
    m_fwd.which = 3;
    const Index chunk = detail::block_length(std::max<Index>(m_d_out, 1), kSingleBackwardDepth);
    for (Index start = 0; start < m_d_out; start += chunk) {
      Packed p;
      p.k = std::min(chunk, m_d_out - start);
      p.n = m_d_in;
      p.md = strided_desc(p.k, p.n, m_d_in, 1, dt::bf16);
      p.data = data + static_cast<std::size_t>(start * m_d_in) * sizeof(Eigen::bfloat16);
      p.which = 4;
      m_bwd.push_back(std::move(p));
      m_bwd_start.push_back(start);
    }
  }

  Packed pack(const float* w, Index k, Index n, Index rs, Index cs, Index rows_hint, int which) const {
    using dt = dnnl::memory::data_type;
    using tag = dnnl::memory::format_tag;
    const dnnl::matmul::desc d(dnnl::memory::desc({rows_hint, k}, wdt(), tag::ab),
                               dnnl::memory::desc({k, n}, wdt(), tag::any),
                               dnnl::memory::desc({rows_hint, n}, dt::f32, tag::ab));
    const dnnl::matmul::primitive_desc pd(d, matmul_attr(1.0f, 0.0f), engine());
    Packed p;
    p.md = pd.weights_desc();
    p.bytes = p.md.get_size();
    p.storage.reset(new unsigned char[p.bytes + 64]);
    p.data = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(p.storage.get()) + 63) &
                                              ~std::uintptr_t(63));
    p.k = k;
    p.n = n;
    p.rows_hint = rows_hint;
    p.which = which;
    const auto& eng = engine();
    dnnl::memory src(strided_desc(k, n, rs, cs, dt::f32), eng, const_cast<float*>(w));
    dnnl::memory dst(p.md, eng, p.data);
    dnnl::reorder(src, dst).execute(stream(), src, dst);
    stream().wait();
    return p;
  }

  void run(const Packed& p, ConstMatrixRef<float> a, MatrixRef<float> c, float beta,
           const float* bias = nullptr) const {
    const profile::Scope scope("gemm_packed");
    const Index m = a.rows();
    PEMOE_CHECK_SHAPE(a.cols() == p.k && c.rows() == m && c.cols() == p.n, "packed weight product: (", m,
                      ", ", a.cols(), ")·(", p.k, ", ", p.n, ") into (", c.rows(), ", ", c.cols(), ")");
    if (m == 0) return;
    const void* src = a.data();
    Index a_rs = a.outerStride();
    if (m_bf16) {  // round the left operand to bf16, contiguous
      Eigen::bfloat16* buf =
          thread_buffer<Eigen::bfloat16, kBf16LeftOperand>(static_cast<std::size_t>(m * p.k));
      round_to_bf16(a, buf);
      src = buf;
      a_rs = p.k;
    }
    const CachedMatmul& mm = primitive(p, m, a_rs, c.outerStride(), beta, bias != nullptr);
    if (!mm.reference) {
      execute(mm, src, p.data, c.data(), bias);
      return;
    }
    // oneDNN has only its reference loop (100× slower) for these strides (a strided output, typically):
    // run the optimized product on contiguous operands and add its result into C.
    if (a_rs != p.k) {  // f32 left operand with a row stride: copy it contiguous
      float* a_copy = thread_buffer<float, kContiguousLeft>(static_cast<std::size_t>(m * p.k));
      Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(a_copy, m, p.k) = a;
      src = a_copy;
      a_rs = p.k;
    }
    float* out = thread_buffer<float, kContiguousOutput>(static_cast<std::size_t>(m * p.n));
    execute(primitive(p, m, a_rs, p.n, 0.0f, bias != nullptr), src, p.data, out, bias);
    const Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> product(
        out, m, p.n);
    if (beta == 0.0f)
      c = product;
    else
      c = beta * c + product;
  }

  /// The cached matmul of `p` with m rows, a left operand of row stride `a_rs`, an output of row stride
  /// `c_rs`, C's scale `beta` and, when `bias`, a bias epilogue.
  const CachedMatmul& primitive(const Packed& p, Index m, Index a_rs, Index c_rs, float beta,
                                bool bias) const {
    using dt = dnnl::memory::data_type;
    MatmulKey key = make_key();
    key.m = m;
    key.n = p.n;
    key.k = p.k;
    key.a_rs = a_rs;
    key.a_cs = 1;
    key.c_rs = c_rs;
    key.a_dt = key.b_dt = static_cast<int>(wdt());
    key.c_dt = static_cast<int>(dt::f32);
    // The packed layout is a function of (k, n, dtype, rows_hint, which); those identify it in the cache.
    key.b_layout = (static_cast<std::uint64_t>(p.rows_hint) << 3) | static_cast<std::uint64_t>(p.which);
    if (p.which >= 3) {  // the single copy: plain strides over W (d_out, d_in)
      key.b_rs = p.which == 3 ? 1 : m_d_in;
      key.b_cs = p.which == 3 ? m_d_in : 1;
    }
    key.alpha = 1.0f;
    key.beta = beta;
    key.post = bias ? 1 : 0;
    return MatmulCache::instance().get(key, [&] {
      const auto a_md = strided_desc(m, p.k, a_rs, 1, wdt());
      const auto c_md = strided_desc(m, p.n, c_rs, 1, dt::f32);
      if (bias) {
        const dnnl::matmul::desc d(a_md, p.md, strided_desc(1, p.n, p.n, 1, dt::f32), c_md);
        return dnnl::matmul::primitive_desc(d, matmul_attr(1.0f, beta), engine());
      }
      const dnnl::matmul::desc d(a_md, p.md, c_md);
      return dnnl::matmul::primitive_desc(d, matmul_attr(1.0f, beta), engine());
    });
  }

  bool m_bf16;
  Layout m_layout;
  Index m_d_out, m_d_in;
  std::unique_ptr<Eigen::bfloat16[]> m_single;  ///< the single-copy layout's W (d_out, d_in), row-major
  std::size_t m_single_bytes = 0;
  Packed m_fwd;
  std::vector<Packed> m_bwd;  ///< the backward pack: one, or one per block of rows of W (bf16, single copy)
  std::vector<Index> m_bwd_start;  ///< the first row of W of each backward block
};

}  // namespace pemoe::dnnl_backend
