/// @file matmul.hpp
/// @brief The oneDNN backend of `gemm`: matmul primitives created once per shape, layout and dtype, cached.
///
/// Included by `core/gemm.hpp` when `PEMOE_WITH_DNNL` is defined (link the CMake target `pemoe::dnnl`,
/// which needs oneDNN 2.x: Debian `libdnnl-dev`). oneDNN is the engine PyTorch itself uses on the CPU; its
/// matmul reaches about 1.4× Eigen's f32 GEMM on AVX-512 and runs bf16 products on AVX512-BF16 / AMX units.
///
/// Every call builds a key from the problem (extents, strides, transposes, dtypes, alpha ≠ 1, beta) and
/// looks up a cached primitive; the first call of a shape pays the primitive creation (about a
/// millisecond), the later ones only the product. Scratch memory is per thread (user scratchpad mode), so
/// two threads may run the same primitive at once.
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/tensor.hpp"

namespace pemoe::dnnl_backend {

/// The CPU engine all of pemoe's oneDNN primitives run on (created on first use).
inline const dnnl::engine& engine() {
  static const dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

/// This thread's stream on `engine()`.
inline dnnl::stream& stream() {
  thread_local dnnl::stream s(engine());
  return s;
}

/// This thread's scratch memory for primitives in user scratchpad mode, grown on demand, 64-byte aligned.
inline void* scratch(std::size_t bytes) {
  struct Buffer {
    std::unique_ptr<unsigned char[]> data;
    std::size_t size = 0;
  };
  thread_local Buffer b;
  if (bytes + 64 > b.size) {
    b.data.reset(new unsigned char[bytes + 64]);
    b.size = bytes + 64;
  }
  auto p = reinterpret_cast<std::uintptr_t>(b.data.get());
  return reinterpret_cast<void*>((p + 63) & ~std::uintptr_t(63));
}

/// The instruction set oneDNN dispatches to on this CPU, as a word ("avx512_core_bf16", "avx2", ...).
inline std::string isa_name() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41:
      return "sse41";
    case dnnl::cpu_isa::avx:
      return "avx";
    case dnnl::cpu_isa::avx2:
      return "avx2";
    case dnnl::cpu_isa::avx2_vnni:
      return "avx2_vnni";
    case dnnl::cpu_isa::avx512_mic:
      return "avx512_mic";
    case dnnl::cpu_isa::avx512_mic_4ops:
      return "avx512_mic_4ops";
    case dnnl::cpu_isa::avx512_core:
      return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni:
      return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16:
      return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx:
      return "avx512_core_amx";
    default:
      return "unknown";
  }
}

/// Whether oneDNN runs bf16 products on this CPU's own bf16 instructions (AVX512-BF16 or AMX). Without
/// them oneDNN emulates bf16 at a fraction of the f32 speed, so pemoe refuses bf16 there. With them bf16 may
/// still be slower than f32 (AVX512-BF16 without AMX on Intel): `bf16_speed()` (core/dnnl/bf16_speed.hpp)
/// measures it.
inline bool cpu_has_bf16() {
  const auto isa = dnnl::get_effective_cpu_isa();
  return isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
}

/// Why bf16 products are refused on this CPU, or "" when it has bf16 units (`cpu_has_bf16`): the one message
/// of every bf16 refusal (packs, `GemmPrecisionScope`).
inline std::string bf16_unavailable_reason() {
  if (cpu_has_bf16()) return {};
  return "this CPU has no bf16 units (oneDNN dispatches to " + isa_name() +
         "; bf16 needs avx512_core_bf16 or AMX), and emulated bf16 would be slower than f32: use f32 here";
}

/// A 2-D memory descriptor of logical extents (rows, cols) with a row stride and a column stride.
inline dnnl::memory::desc strided_desc(Index rows, Index cols, Index row_stride, Index col_stride,
                                       dnnl::memory::data_type dt) {
  return dnnl::memory::desc({rows, cols}, dt, dnnl::memory::dims{row_stride, col_stride});
}

/// A matmul primitive and the descriptors its operands must have.
struct CachedMatmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul primitive;
  std::size_t scratch_bytes = 0;
  std::string impl;        ///< oneDNN's name of the implementation it chose ("brg:avx512_core", ...)
  bool reference = false;  ///< no optimized implementation fits: oneDNN's reference loop, 10-1000× slower
};

namespace detail {
/// The implementation name of the last matmul this thread executed (a cache entry's, which lives as long as
/// the process), or null before the first.
inline const std::string*& last_impl() {
  thread_local const std::string* name = nullptr;
  return name;
}
}  // namespace detail

/// The implementation name of the last matmul this thread executed ("" before the first): lets a test or
/// a bench check that a product did not land on oneDNN's slow reference implementation.
inline std::string last_executed_impl() {
  const std::string* name = detail::last_impl();
  return name ? *name : std::string();
}

/// The key of a cached matmul: everything that selects a primitive.
struct MatmulKey {
  Index m, n, k;
  Index a_rs, a_cs, b_rs, b_cs, c_rs;  ///< strides of op(A) (m, k), op(B) (k, n), C (m, n)
  int a_dt, b_dt, c_dt;                ///< dnnl data types
  std::uint64_t b_layout;              ///< hash of a packed B's descriptor (0: plain strides)
  float alpha, beta;
  int post;  ///< fused post-op (0: none)
  bool operator==(const MatmulKey& o) const { return std::memcmp(this, &o, sizeof(MatmulKey)) == 0; }
};

struct MatmulKeyHash {
  std::size_t operator()(const MatmulKey& k) const {
    const auto* p = reinterpret_cast<const unsigned char*>(&k);
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over the key's bytes (zero-initialised padding)
    for (std::size_t i = 0; i < sizeof(MatmulKey); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return static_cast<std::size_t>(h);
  }
};

/// A zeroed key (padding bytes included, so that the byte-wise hash and comparison are well defined).
inline MatmulKey make_key() {
  MatmulKey k;
  std::memset(&k, 0, sizeof(k));
  return k;
}

/// The process-wide primitive cache. Lookups take a mutex (negligible beside a product); primitives are
/// created outside it.
class MatmulCache {
 public:
  static MatmulCache& instance() {
    static MatmulCache c;
    return c;
  }

  /// The cached primitive for `key`, created by `make()` on the first request.
  const CachedMatmul& get(const MatmulKey& key, const std::function<dnnl::matmul::primitive_desc()>& make) {
    {
      std::lock_guard<std::mutex> lock(m_mutex);
      auto it = m_map.find(key);
      if (it != m_map.end()) return *it->second;
    }
    auto entry = std::make_unique<CachedMatmul>();
    entry->pd = make();
    entry->primitive = dnnl::matmul(entry->pd);
    entry->scratch_bytes = entry->pd.scratchpad_desc().get_size();
    entry->impl = entry->pd.impl_info_str();
    entry->reference = entry->impl.rfind("ref", 0) == 0;
    std::lock_guard<std::mutex> lock(m_mutex);
    auto [it, inserted] = m_map.emplace(key, std::move(entry));
    (void)inserted;
    return *it->second;
  }

  /// Number of primitives created so far.
  std::size_t size() {
    std::lock_guard<std::mutex> lock(m_mutex);
    return m_map.size();
  }

 private:
  std::mutex m_mutex;
  std::unordered_map<MatmulKey, std::unique_ptr<CachedMatmul>, MatmulKeyHash> m_map;
};

/// The attributes of every pemoe matmul: user scratchpad, `alpha` as output scale, `beta` as a sum post-op.
inline dnnl::primitive_attr matmul_attr(float alpha, float beta) {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(beta);
    attr.set_post_ops(ops);
  }
  return attr;
}

/// Runs a cached matmul on raw pointers (the primitive knows the layouts); `bias` only for a primitive
/// created with a bias descriptor.
inline void execute(const CachedMatmul& mm, const void* a, const void* b, void* c,
                    const float* bias = nullptr) {
  const auto& eng = engine();
  std::unordered_map<int, dnnl::memory> args{
      {DNNL_ARG_SRC, dnnl::memory(mm.pd.src_desc(), eng, const_cast<void*>(a))},
      {DNNL_ARG_WEIGHTS, dnnl::memory(mm.pd.weights_desc(), eng, const_cast<void*>(b))},
      {DNNL_ARG_DST, dnnl::memory(mm.pd.dst_desc(), eng, c)},
      {DNNL_ARG_SCRATCHPAD, dnnl::memory(mm.pd.scratchpad_desc(), eng, scratch(mm.scratch_bytes))}};
  if (bias) args.emplace(DNNL_ARG_BIAS, dnnl::memory(mm.pd.bias_desc(), eng, const_cast<float*>(bias)));
  mm.primitive.execute(stream(), args);
  stream().wait();
  detail::last_impl() = &mm.impl;
}

namespace detail {

/// Column and depth limits of one oneDNN product whose B is plain row-major (not transposed): wider or
/// deeper products run as blocks. oneDNN 2.6 reads such a B badly once a K × N panel outgrows the cache;
/// measured on one AVX-512 core (GFLOP/s, whole → blocked): (256, 768)·(768, 3072) 84 → 192,
/// (256, 768)·(768, 2304) 174 → 199, (256, 50257)·(50257, 768) 159 → 202, (256, 3072)·(3072, 768) 173 → 212,
/// dW (768, 256)·(256, 3072) 135 → 209, the same at 2048 rows; a transposed B (x·Wᵀ) gains nothing from
/// blocking and is not blocked.
inline constexpr Index kPlainBMaxCols = 1024;
inline constexpr Index kPlainBMaxDepth = 2048;
/// Row limit of one product whose A is transposed (a weight gradient dYᵀ·X) and whose C is tall: the
/// tied head's dW (50257, 256)·(256, 768) runs in blocks of 512 rows.
inline constexpr Index kTransposedAMaxRows = 4096;
inline constexpr Index kTransposedARowBlock = 512;

/// The block length that splits `extent` into ⌈extent / limit⌉ near-equal blocks (a multiple of 16 but the
/// last); `extent` itself when it is within `limit`.
inline Index block_length(Index extent, Index limit) {
  if (extent <= limit) return extent;
  const Index blocks = (extent + limit - 1) / limit;
  return ((extent + blocks - 1) / blocks + 15) / 16 * 16;
}

}  // namespace detail

/**
 * @brief `C = alpha·op(A)·op(B) + beta·C` in f32 through cached oneDNN matmuls.
 *
 * Same contract as `pemoe::gemm` (row-major views, op(A) (m, k), op(B) (k, n), C (m, n), `beta == 0`
 * overwrites C); the caller has checked the extents. Transposes are strides, never copies. A product whose
 * B is plain row-major runs in blocks of at most `kPlainBMaxCols` columns and `kPlainBMaxDepth` of depth
 * (the depth blocks after the first accumulate with beta = 1), and one with a transposed A and more than
 * `kTransposedAMaxRows` rows in blocks of `kTransposedARowBlock` rows, as measured faster on oneDNN 2.6.
 * Returns false, having done nothing, when oneDNN has only its reference implementation for these strides
 * (e.g. operands that are neither row- nor column-contiguous): the caller then runs the product on Eigen.
 */
inline bool gemm_f32(bool trans_a, bool trans_b, float alpha, ConstMatrixRef<float> A,
                     ConstMatrixRef<float> B, float beta, MatrixRef<float> C) {
  using dt = dnnl::memory::data_type;
  const Index m = C.rows(), n = C.cols();
  const Index k = trans_a ? A.rows() : A.cols();
  const Index n_block = trans_b ? n : detail::block_length(n, detail::kPlainBMaxCols);
  const Index k_block = trans_b ? k : detail::block_length(k, detail::kPlainBMaxDepth);
  const Index m_block = trans_a && m > detail::kTransposedAMaxRows ? detail::kTransposedARowBlock : m;
  MatmulKey key = make_key();
  key.a_rs = trans_a ? 1 : A.outerStride();
  key.a_cs = trans_a ? A.outerStride() : 1;
  key.b_rs = trans_b ? 1 : B.outerStride();
  key.b_cs = trans_b ? B.outerStride() : 1;
  key.c_rs = C.outerStride();
  key.a_dt = key.b_dt = key.c_dt = static_cast<int>(dt::f32);
  key.alpha = alpha;
  struct Block {
    const CachedMatmul* mm;
    const float *a, *b;
    float* c;
  };
  // every block's primitive first: one that would run oneDNN's reference loop sends the whole product to
  // Eigen before any block has written C (the list is this thread's, reused: no allocation per product)
  thread_local std::vector<Block> blocks;
  blocks.clear();
  for (Index i = 0; i < m; i += m_block) {
    for (Index j = 0; j < n; j += n_block) {
      for (Index p = 0; p < k; p += k_block) {
        key.m = std::min(m_block, m - i);
        key.n = std::min(n_block, n - j);
        key.k = std::min(k_block, k - p);
        key.beta = p == 0 ? beta : 1.0f;
        const CachedMatmul& mm = MatmulCache::instance().get(key, [&] {
          const dnnl::matmul::desc d(strided_desc(key.m, key.k, key.a_rs, key.a_cs, dt::f32),
                                     strided_desc(key.k, key.n, key.b_rs, key.b_cs, dt::f32),
                                     strided_desc(key.m, key.n, key.c_rs, 1, dt::f32));
          return dnnl::matmul::primitive_desc(d, matmul_attr(alpha, key.beta), engine());
        });
        if (mm.reference) return false;
        // op(A)'s block (i.., p..), op(B)'s block (p.., j..), C's block (i.., j..); B is transposed only when
        // unblocked (j = p = 0)
        const float* a = trans_a ? A.data() + p * A.outerStride() + i : A.data() + i * A.outerStride() + p;
        blocks.push_back({&mm, a, B.data() + p * B.outerStride() + j, C.data() + i * C.outerStride() + j});
      }
    }
  }
  for (const Block& b : blocks) execute(*b.mm, b.a, b.b, b.c);
  return true;
}

}  // namespace pemoe::dnnl_backend
