// The GEMM seam at GPT-2-124M's training shapes (B·T = 256 rows), on every backend this build has:
//   eigen        Eigen's GEMM (the header-only default)
//   dnnl         oneDNN matmul primitives (f32; PEMOE_WITH_DNNL)
//   packed_f32   a frozen weight packed once (WeightPack, f32)
//   packed_bf16  the same in bf16 with f32 accumulation (CPUs with AVX512-BF16 or AMX only)
//   single_bf16  one plain bf16 copy of the weight serving both products (PackLayout::single: half the
//   memory)
// For a linear d_in -> d_out three products: fwd y = x·Wᵀ (N,T), dx = dy·W (N,N), dW = dyᵀ·x (T,N); a frozen
// weight needs the first two only (packed backends run those). Plus the square 2048³ product that
// `hf_gpt2_bench.py --mode gemm` times with torch.mm, and (2048, 768, 3072).
// The peer, in the same sitting: bench/peers/torch_gemm_shapes.py (torch.mm at the same shapes).
#include <memory>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "pemoe/core/gemm.hpp"
#include "pemoe/core/weight_pack.hpp"

namespace {

using pemoe::GemmBackend;
using pemoe::Index;
using pemoe::Matrix;
using pemoe::Op;

enum class Product { fwd, dx, dw };

struct Shape {
  Index rows, d_in, d_out;
};

void run_gemm(benchmark::State& state, Shape s, Product p, GemmBackend backend) {
  pemoe::set_gemm_backend(backend);
  const Matrix<float> x = pemoe::bench::random_matrix(s.rows, s.d_in, 1);
  const Matrix<float> W = pemoe::bench::random_matrix(s.d_out, s.d_in, 2);
  const Matrix<float> dy = pemoe::bench::random_matrix(s.rows, s.d_out, 3);
  Matrix<float> out(p == Product::fwd  ? s.rows
                    : p == Product::dx ? s.rows
                                       : s.d_out,
                    p == Product::fwd ? s.d_out : s.d_in);
  // dW overwrites (beta 0): the first gradient write after the lazy zero_grad does, and the peer times
  // torch.mm(dy.t(), x, out=dW). One untimed call first: the output's pages (154 MB for the head's dW) and
  // the oneDNN primitive are created outside the timing, as the peer's warm-up does (a one-iteration run
  // of the head's dW on 2 threads measured mostly page faults: 21 instead of 300 GFLOP/s).
  auto product = [&] {
    if (p == Product::fwd)
      pemoe::gemm<float>(Op::N, Op::T, 1.0f, x, W, 0.0f, out);
    else if (p == Product::dx)
      pemoe::gemm<float>(Op::N, Op::N, 1.0f, dy, W, 0.0f, out);
    else
      pemoe::gemm<float>(Op::T, Op::N, 1.0f, dy, x, 0.0f, out);
  };
  product();
  for (auto _ : state) {
    product();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  pemoe::bench::set_gflops(state, 2.0 * s.rows * s.d_in * s.d_out);
  pemoe::set_gemm_backend(pemoe::have_dnnl() ? GemmBackend::dnnl : GemmBackend::eigen);
}

void run_packed(benchmark::State& state, Shape s, Product p, pemoe::PackDtype dtype,
                pemoe::PackLayout layout) {
  const Matrix<float> x = pemoe::bench::random_matrix(s.rows, s.d_in, 1);
  const Matrix<float> W = pemoe::bench::random_matrix(s.d_out, s.d_in, 2);
  const Matrix<float> dy = pemoe::bench::random_matrix(s.rows, s.d_out, 3);
  const auto pack = pemoe::make_weight_pack<float>(W, dtype, layout);
  Matrix<float> out(s.rows, p == Product::fwd ? s.d_out : s.d_in);
  auto product = [&] {
    if (p == Product::fwd)
      pack->forward(x, out);
    else
      pack->backward_input(dy, out, 0.0f);
  };
  product();  // untimed: first touch of the output, primitive creation
  for (auto _ : state) {
    product();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  pemoe::bench::set_gflops(state, 2.0 * s.rows * s.d_in * s.d_out);
}

// The small-extent products that gemm sends to pemoe's skinny kernels (one extent ≤ 16: E experts, a LoRA
// rank), against the same product forced onto oneDNN: does the skinny dispatch still pay with oneDNN on?
// (m, n, k) with op(A) (m, k), op(B) (k, n); `kernel` 0: gemm (skinny), 1: oneDNN directly.
struct Skinny {
  const char* name;
  Op oa, ob;
  Index m, n, k;
};
void run_skinny(benchmark::State& state, Skinny s, int kernel) {
  const Index ar = s.oa == Op::N ? s.m : s.k, ac = s.oa == Op::N ? s.k : s.m;
  const Index br = s.ob == Op::N ? s.k : s.n, bc = s.ob == Op::N ? s.n : s.k;
  const Matrix<float> A = pemoe::bench::random_matrix(ar, ac, 1), B = pemoe::bench::random_matrix(br, bc, 2);
  Matrix<float> C = Matrix<float>::Zero(s.m, s.n);
  for (auto _ : state) {
#ifdef PEMOE_WITH_DNNL
    if (kernel == 1)
      pemoe::dnnl_backend::gemm_f32(s.oa == Op::T, s.ob == Op::T, 1.0f, A, B, 0.0f, C);
    else
#endif
      pemoe::gemm<float>(s.oa, s.ob, 1.0f, A, B, 0.0f, C);
    benchmark::DoNotOptimize(C.data());
    benchmark::ClobberMemory();
  }
  pemoe::bench::set_gflops(state, 2.0 * s.m * s.n * s.k);
}

std::string shape_name(Shape s) {
  return std::to_string(s.rows) + "x" + std::to_string(s.d_in) + "x" + std::to_string(s.d_out);
}

const int registered = [] {
  const std::vector<Shape> shapes = {{256, 768, 2304},  {256, 768, 768},   {256, 768, 3072},
                                     {256, 3072, 768},  {256, 768, 50257}, {2048, 768, 3072},
                                     {2048, 2048, 2048}};
  const std::vector<std::pair<Product, const char*>> products = {
      {Product::fwd, "fwd"}, {Product::dx, "dx"}, {Product::dw, "dW"}};
  std::vector<GemmBackend> backends = {GemmBackend::eigen};
  if (pemoe::have_dnnl()) backends.push_back(GemmBackend::dnnl);
  for (const auto& s : shapes)
    for (const auto& [p, pname] : products) {
      for (auto b : backends)
        benchmark::RegisterBenchmark(
            ("gemm/" + std::string(pname) + "/" + shape_name(s) + "/" + pemoe::gemm_backend_name(b)).c_str(),
            [s, p = p, b](benchmark::State& st) { run_gemm(st, s, p, b); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      if (p == Product::dw) continue;  // a frozen weight has no dW product
      for (auto d : {pemoe::PackDtype::f32, pemoe::PackDtype::bf16}) {
        if (!pemoe::weight_pack_available<float>(d)) continue;
        benchmark::RegisterBenchmark(
            ("gemm/" + std::string(pname) + "/" + shape_name(s) + "/packed_" + pemoe::pack_dtype_name(d))
                .c_str(),
            [s, p = p, d](benchmark::State& st) { run_packed(st, s, p, d, pemoe::PackLayout::blocked); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
      if (pemoe::weight_pack_available<float>(pemoe::PackDtype::bf16))
        benchmark::RegisterBenchmark(
            ("gemm/" + std::string(pname) + "/" + shape_name(s) + "/single_bf16").c_str(),
            [s, p = p](benchmark::State& st) {
              run_packed(st, s, p, pemoe::PackDtype::bf16, pemoe::PackLayout::single);
            })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
    }
  const Skinny skinny[] = {{"router_logits_x.Wgt_2048x8x768", Op::N, Op::T, 2048, 8, 768},  // (t, d)·(E, d)ᵀ
                           {"lora_h_x.At_2048x8x768", Op::N, Op::T, 2048, 8, 768},      // (t, d)·(r, d)ᵀ
                           {"lora_dA_dht.x_8x768x2048", Op::T, Op::N, 8, 768, 2048},    // (t, r)ᵀ·(t, d)
                           {"lora_dB_dyt.h_3072x8x2048", Op::T, Op::N, 3072, 8, 2048},  // (t, d_out)ᵀ·(t, r)
                           {"mix_h.B_2048x3072x8", Op::N, Op::T, 2048, 3072, 8},  // (t, r)·(d_out, r)ᵀ
                           {"mov_merge_g.L_2048x3072x8", Op::N, Op::N, 2048, 3072, 8}};  // (t, E)·(E, d)
  for (const Skinny& k : skinny) {
    benchmark::RegisterBenchmark((std::string("skinny/") + k.name + "/pemoe_skinny").c_str(),
                                 [k](benchmark::State& st) { run_skinny(st, k, 0); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    if (pemoe::have_dnnl())
      benchmark::RegisterBenchmark((std::string("skinny/") + k.name + "/dnnl").c_str(),
                                   [k](benchmark::State& st) { run_skinny(st, k, 1); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  }
  return 0;
}();

}  // namespace

PEMOE_BENCHMARK_MAIN()
