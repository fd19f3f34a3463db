// train/trainer.hpp: gradient accumulation equals one big batch, clipping, the schedule's rate per step, eval
// every K steps, the metrics CSV (header, columns, expert load, resumed append), progress lines, and a
// bit-identical resume through the trainer's own checkpoints (MoLoRA with dropout and router jitter, AdamW
// with parameter groups, MPOE's gradient mask as the update hook).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "pemoe/adapters/molora.hpp"
#include "pemoe/train/trainer.hpp"
#include "support/helpers.hpp"

using namespace pemoe;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("pemoe_test_trainer_" + name)).string();
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> v;
  for (std::string line; std::getline(in, line);) v.push_back(line);
  return v;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> v;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      v.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  v.push_back(cur);
  return v;
}

// A fake clock: every call advances by `dt` seconds (deterministic tokens/s and ETA).
std::function<double()> fake_clock(double dt) {
  auto t = std::make_shared<double>(0.0);
  return [t, dt] { return *t += dt; };
}

// Linear least squares: L = (1/n) Σ_t (x_t·w + b − y_t)², data point t = row t of a fixed (64, 5) set.
struct LeastSquares {
  ParamStore<double> store;
  ParamId w, b;
  Matrix<double> x;
  Vector<double> y;

  LeastSquares() {
    w = store.add("w", {5});
    b = store.add("b", {1});
    testing::randomize_params(store, 3);
    x = testing::random_matrix<double>(64, 5, 11);
    y = testing::random_matrix<double>(64, 1, 12).col(0);
  }
  // Mean loss over rows [r0, r0 + n), its gradient added into the store.
  MicroBatchResult batch(Index r0, Index n) {
    const Eigen::Map<const Vector<double>> wv(store.value(w), 5);
    const double bv = *store.value(b);
    double loss = 0.0;
    for (Index t = r0; t < r0 + n; ++t) {
      const double e = x.row(t).dot(wv) + bv - y(t);
      loss += e * e / double(n);
      for (Index j = 0; j < 5; ++j) store.grad(w)[j] += 2.0 * e * x(t, j) / double(n);
      *store.grad(b) += 2.0 * e / double(n);
    }
    return {loss, double(n)};
  }
};

TrainerOptions quiet(long total) {
  TrainerOptions o;
  o.total_steps = total;
  o.progress = ProgressMode::off;
  return o;
}

}  // namespace

TEST_CASE("Trainer: gradient accumulation over equal micro-batches equals one big batch (mean loss)") {
  for (const char* opt_name : {"sgd", "adamw"}) {
    DYNAMIC_SECTION(opt_name) {
      auto run = [&](long accum) {
        auto p = std::make_unique<LeastSquares>();
        SGDConfig sc;
        sc.lr = 0.05;
        sc.momentum = 0.9;
        AdamWConfig ac;
        ac.lr = 0.05;
        auto sgd = std::make_unique<SGD<double>>(sc);
        auto adamw = std::make_unique<AdamW<double>>(ac);
        TrainerOptions o = quiet(6);
        o.grad_accum = accum;
        TrainerCallbacks cb;
        const Index per = 32 / accum;  // 32 rows per optimizer step, in `accum` micro-batches
        LeastSquares* ls = p.get();
        cb.micro_batch = [ls, per](long step, long micro) {
          return ls->batch((step % 2) * 32 + micro * per, per);
        };
        std::vector<double> losses;
        cb.on_log = [&](const StepRecord& r) { losses.push_back(r.loss); };
        if (std::string(opt_name) == "sgd") {
          Trainer<double> t(p->store, *sgd, Schedule(), o, cb);
          t.train();
        } else {
          Trainer<double> t(p->store, *adamw, Schedule(), o, cb);
          t.train();
        }
        return std::make_pair(p->store.values(), losses);
      };
      const auto [one, loss1] = run(1);
      const auto [four, loss4] = run(4);
      REQUIRE(one.size() == four.size());
      for (std::size_t i = 0; i < one.size(); ++i)
        CHECK(four[i] == Approx(one[i]).margin(1e-6).epsilon(1e-6));
      REQUIRE(loss1.size() == 6);
      REQUIRE(loss4.size() == 6);
      for (std::size_t i = 0; i < loss1.size(); ++i) CHECK(loss4[i] == Approx(loss1[i]).epsilon(1e-12));
    }
  }
}

TEST_CASE("Trainer: clipping, the schedule's rate per step, the logged gradient norm") {
  LeastSquares p;
  SGDConfig sc;
  sc.lr = 0.1;
  SGD<double> sgd(sc);
  ScheduleConfig schc;
  schc.kind = ScheduleKind::linear;
  schc.warmup_steps = 2;
  schc.total_steps = 6;
  const Schedule sched(schc);
  TrainerOptions o = quiet(5);
  o.max_grad_norm = 0.25;
  TrainerCallbacks cb;
  AlignedVector<double> before;
  std::vector<double> grad_norms;
  cb.micro_batch = [&](long step, long) {
    before = p.store.values();
    const auto r = p.batch(step * 8, 8);
    double sq = 0.0;
    for (double g : p.store.grads()) sq += g * g;
    grad_norms.push_back(std::sqrt(sq));
    return r;
  };
  std::vector<StepRecord> recs;
  cb.on_log = [&](const StepRecord& r) {
    recs.push_back(r);
    // the update is −lr·λ(s)·clip(g): its norm is lr·λ·min(‖g‖, max_norm) (PyTorch's 1e-6 aside)
    double dsq = 0.0;
    for (std::size_t i = 0; i < before.size(); ++i) dsq += std::pow(p.store.values()[i] - before[i], 2);
    const double gnorm = grad_norms.back();
    CHECK(r.grad_norm == Approx(gnorm).epsilon(1e-14));
    CHECK(r.lr == Approx(0.1 * sched(r.step - 1)).epsilon(1e-15));
    const double want = 0.1 * sched(r.step - 1) * std::min(gnorm, 0.25 * gnorm / (gnorm + 1e-6));
    CHECK(std::sqrt(dsq) == Approx(want).epsilon(1e-9).margin(1e-15));
  };
  Trainer<double> t(p.store, sgd, sched, o, cb);
  CHECK(t.lr_at(0) == 0.0);
  CHECK(t.lr_at(1) == Approx(0.05));
  const TrainSummary s = t.train();
  CHECK(s.step == 5);
  CHECK(s.steps_run == 5);
  CHECK(s.tokens == 40.0);
  REQUIRE(recs.size() == 5);
  CHECK(recs[0].lr == 0.0);  // warm-up starts at 0
  CHECK(recs[2].lr == Approx(0.1));
  int clipped = 0;
  for (const auto& r : recs) clipped += r.grad_norm > 0.25;
  CHECK(clipped > 0);  // the test exercised clipping
  CHECK(t.history().size() == 5);
}

TEST_CASE("Trainer: eval every K steps, the metrics CSV, progress lines in a pipe") {
  const std::string csv = temp_path("metrics.csv");
  std::filesystem::remove(csv);
  LeastSquares p;
  AdamWConfig ac;
  ac.lr = 1e-2;
  AdamW<double> adamw(ac);
  std::ostringstream out;
  TrainerOptions o;
  o.total_steps = 7;
  o.eval_every = 3;
  o.metrics_csv = csv;
  o.progress = ProgressMode::lines;
  o.print_every = 2;
  o.out = &out;
  o.eval_metrics = {"acc"};
  o.clock = fake_clock(0.5);
  TrainerCallbacks cb;
  cb.micro_batch = [&](long step, long) { return p.batch(step * 8 % 64, 8); };
  std::vector<long> eval_steps;
  cb.eval = [&](long step) {
    eval_steps.push_back(step);
    return std::map<std::string, double>{{"loss", 0.125 * double(step)}, {"acc", 0.5}};
  };
  cb.expert_load = [] { return std::vector<ExpertLoad>{{"h.0.mlp", {0.25, 0.75}}, {"h.1.mlp", {1.0, 0.0}}}; };
  Trainer<double> t(p.store, adamw, Schedule(), o, cb);
  CHECK(t.progress_mode() == ProgressMode::lines);
  const TrainSummary s = t.train();
  CHECK(eval_steps == std::vector<long>{3, 6});
  CHECK(s.last_eval_loss == 0.75);

  const auto lines = read_lines(csv);
  REQUIRE(lines.size() == 8);
  CHECK(lines[0] ==
        "step,loss,lr,tokens_per_s,grad_norm,eval_loss,eval_acc,load.h.0.mlp.0,load.h.0.mlp.1,load.h.1.mlp.0,"
        "load.h.1.mlp.1");
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const auto f = split(lines[i]);
    INFO(lines[i]);
    REQUIRE(f.size() == 11);
    CHECK(f[0] == std::to_string(i));
    CHECK(std::stod(f[1]) == Approx(t.history()[i - 1].loss).epsilon(1e-8));
    CHECK(f[2] == "0.01");
    CHECK(f[3] == "16");  // 8 tokens per step, one clock tick (0.5 s) per step
    CHECK(std::stod(f[4]) == Approx(t.history()[i - 1].grad_norm).epsilon(1e-8));
    if (i % 3 == 0) {
      CHECK(f[5] == (i == 3 ? "0.375" : "0.75"));
      CHECK(f[6] == "0.5");
    } else {
      CHECK(f[5].empty());
      CHECK(f[6].empty());
    }
    CHECK(f[7] == "0.25");
    CHECK(f[8] == "0.75");
    CHECK(f[9] == "1");
    CHECK(f[10] == "0");
  }

  // pipe mode: plain lines every 2 steps and after the last, eval lines, no '\r'
  const std::string text = out.str();
  CHECK(text.find('\r') == std::string::npos);
  std::vector<std::string> got;
  std::istringstream is(text);
  for (std::string line; std::getline(is, line);) got.push_back(line);
  REQUIRE(got.size() == 6);
  auto step_line = [&](long step, double loss, const char* eta) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "step %ld/7  loss %.4f  lr 1.0e-02  16 tok/s  ETA %s", step, loss, eta);
    return std::string(buf);
  };
  const auto& h = t.history();
  CHECK(got[0] == step_line(2, (h[0].loss + h[1].loss) / 2, "00:00:03"));  // 0.5 s a step, 5 to go
  CHECK(got[1] == "eval step 3/7  loss 0.3750  acc 0.5");
  CHECK(got[2] == step_line(4, (h[2].loss + h[3].loss) / 2, "00:00:02"));  // 1.5 s left, rounded
  CHECK(got[3] == step_line(6, (h[4].loss + h[5].loss) / 2, "00:00:01"));
  CHECK(got[4] == "eval step 6/7  loss 0.7500  acc 0.5");
  CHECK(got[5] == step_line(7, h[6].loss, "00:00:00"));

  SECTION("terminal mode rewrites one line with \\r and ends with a newline") {
    LeastSquares q;
    AdamW<double> a2(ac);
    std::ostringstream term;
    TrainerOptions o2 = quiet(3);
    o2.progress = ProgressMode::terminal;
    o2.out = &term;
    TrainerCallbacks cb2;
    cb2.micro_batch = [&](long step, long) { return q.batch(step * 8, 8); };
    Trainer<double> t2(q.store, a2, Schedule(), o2, cb2);
    t2.train();
    const std::string txt = term.str();
    CHECK(std::count(txt.begin(), txt.end(), '\r') == 3);
    CHECK(std::count(txt.begin(), txt.end(), '\n') == 1);
    CHECK(txt.back() == '\n');
    CHECK(txt.find("step 3/3  loss ") != std::string::npos);
  }
  SECTION("an eval metric that is not declared is an error naming it and the allowed ones") {
    LeastSquares q;
    AdamW<double> a2(ac);
    TrainerOptions o2 = quiet(2);
    o2.eval_every = 1;
    o2.eval_metrics = {"acc"};
    TrainerCallbacks cb2;
    cb2.micro_batch = [&](long step, long) { return q.batch(step * 8, 8); };
    cb2.eval = [](long) { return std::map<std::string, double>{{"f1", 1.0}}; };
    Trainer<double> t2(q.store, a2, Schedule(), o2, cb2);
    CHECK_THROWS_WITH(t2.train(), Catch::Contains("metric 'f1'") && Catch::Contains("allowed: loss, acc"));
  }
  std::filesystem::remove(csv);
}

TEST_CASE("Trainer: invalid options are ConfigErrors naming the option") {
  LeastSquares p;
  AdamW<double> a;
  TrainerCallbacks cb;
  cb.micro_batch = [&](long, long) { return p.batch(0, 8); };
  auto make = [&](const TrainerOptions& o, const TrainerCallbacks& c) {
    Trainer<double> t(p.store, a, Schedule(), o, c);
  };
  CHECK_THROWS_WITH(make(quiet(0), cb), Catch::Contains("total_steps must be > 0, got 0"));
  TrainerOptions o = quiet(3);
  o.grad_accum = 0;
  CHECK_THROWS_WITH(make(o, cb), Catch::Contains("grad_accum must be >= 1, got 0"));
  o = quiet(3);
  o.eval_every = 2;
  CHECK_THROWS_WITH(make(o, cb), Catch::Contains("eval_every = 2 needs an eval callback"));
  o = quiet(3);
  o.checkpoint_every = 1;
  CHECK_THROWS_WITH(make(o, cb), Catch::Contains("needs a checkpoint_dir"));
  o = quiet(3);
  o.max_grad_norm = -1;
  CHECK_THROWS_AS(make(o, cb), ConfigError);
  CHECK_THROWS_WITH(make(quiet(3), TrainerCallbacks{}), Catch::Contains("micro_batch callback is required"));
  CHECK_THROWS_WITH(TrainerOptions::parse_progress("tty"),
                    Catch::Contains("allowed: auto, terminal, lines, off"));
  CHECK(TrainerOptions::parse_progress("lines") == ProgressMode::lines);
  cb.update_mask = [](long) { return UpdateMask{{true}, true}; };
  Trainer<double> t(p.store, a, Schedule(), quiet(2), cb);
  CHECK_THROWS_WITH(t.train(), Catch::Contains("returned 1 flags, the store has 2 parameters"));
}

TEST_CASE("expert_load: the fraction of (token, slot) assignments per expert, padding excluded") {
  RouterConfig rc;
  rc.n_experts = 3;
  rc.d_in = 2;
  Router<double> r(rc);
  Router<double>::Cache c;
  c.topk_idx.resize(3, 2);
  c.topk_idx << 0, 1, 1, 2, 1, 0;
  CHECK(expert_load(r, c) == std::vector<double>{2.0 / 6, 3.0 / 6, 1.0 / 6});
  c.valid.resize(3);
  c.valid << 1, 0, 1;
  CHECK(expert_load(r, c) == std::vector<double>{0.5, 0.5, 0.0});
  c.valid.setZero();
  CHECK(expert_load(r, c) == std::vector<double>{0.0, 0.0, 0.0});
}

namespace {

// A MoLoRA layer (top-2 router with jitter, dropout, trainable base) trained by a Trainer; every random draw
// is a function of the seed and the layer's call counters, which save_state/load_state carry.
struct Model {
  ParamStore<float> store;
  std::unique_ptr<MoLoRA<float>> layer;
  MoLoRA<float>::Cache cache;
  std::unique_ptr<AdamW<float>> opt;
  std::unique_ptr<GradientMask> mask;
  std::unique_ptr<Trainer<float>> trainer;
  std::vector<long> evals;

  Model(const std::string& ckpt_dir, const std::string& csv) {
    LoraExpertsConfig c = LoraExpertsConfig::for_ai(4, 4);
    c.dropout = 0.1;
    c.router.mode = GateMode::topk_renorm;
    c.router.top_k = 2;
    c.router.jitter = 0.05;
    c.base_trainable = true;
    layer = std::make_unique<MoLoRA<float>>(LinearConfig{24, 20, true}, c);
    Rng rng(7);
    layer->register_params(store, "h.0.mlp.c_fc", rng);
    store.add("frozen.weight", {3, 3}, false);
    layer->set_training(true);
    AdamWConfig ac;
    ac.lr = 3e-3;
    opt = std::make_unique<AdamW<float>>(ac, ParamGroups::standard(0.5));
    GradientMaskConfig mc;
    mc.p_b = 0.5;
    mc.pattern = R"(lora_A)";
    mask = std::make_unique<GradientMask>(mc, Rng(5));
    ScheduleConfig sc;
    sc.kind = ScheduleKind::cosine;
    sc.warmup_steps = 2;
    sc.total_steps = 8;
    TrainerOptions o;
    o.total_steps = 8;
    o.grad_accum = 2;
    o.max_grad_norm = 0.05;
    o.eval_every = 2;
    o.checkpoint_every = ckpt_dir.empty() ? 0 : 3;
    o.checkpoint_dir = ckpt_dir;
    o.keep_checkpoints = 1;
    o.metrics_csv = csv;
    o.progress = ProgressMode::off;
    TrainerCallbacks cb;
    cb.micro_batch = [this](long step, long micro) {
      const Matrix<float> x = testing::random_matrix<float>(16, 24, 1000 + std::uint64_t(step * 2 + micro));
      Matrix<float> y(16, 20);
      layer->forward(x, y, cache);
      const Matrix<float> dy = (2.0f / float(y.size())) * y;
      layer->backward(x, cache, dy);
      return MicroBatchResult{double(y.squaredNorm()) / double(y.size()), 16.0};
    };
    cb.eval = [this](long step) {
      evals.push_back(step);
      layer->set_training(false);
      const Matrix<float> x = testing::random_matrix<float>(8, 24, 99);
      Matrix<float> y(8, 20);
      MoLoRA<float>::Cache ec;
      layer->forward(x, y, ec);
      layer->set_training(true);
      return std::map<std::string, double>{{"loss", double(y.squaredNorm()) / double(y.size())}};
    };
    cb.update_mask = gradient_mask_hook(*mask, store);
    cb.expert_load = [this] {
      return std::vector<ExpertLoad>{{"h.0.mlp.c_fc", expert_load(layer->router(), cache.router)}};
    };
    cb.save_state = [this](Checkpoint& c) {
      c.put("rng.dropout", std::vector<std::uint64_t>{layer->dropout().call_counter()});
      c.put("rng.router", std::vector<std::uint64_t>{layer->router().call_counter()});
      c.put("mask.draws", std::vector<std::uint64_t>{mask->steps()});
    };
    cb.load_state = [this](const Checkpoint& c) {
      layer->dropout().set_call_counter(c.get<std::uint64_t>("rng.dropout").at(0));
      layer->router().set_call_counter(c.get<std::uint64_t>("rng.router").at(0));
      const auto draws = c.get<std::uint64_t>("mask.draws").at(0);
      for (std::uint64_t i = 0; i < draws; ++i) mask->draw();
    };
    trainer = std::make_unique<Trainer<float>>(store, *opt, Schedule(sc), o, cb);
  }
};

// Every CSV field except tokens_per_s (wall time).
std::vector<std::string> without_speed(const std::vector<std::string>& lines) {
  std::vector<std::string> v;
  for (const auto& l : lines) {
    auto f = split(l);
    f.erase(f.begin() + 3);
    std::string s;
    for (const auto& x : f) s += x + ",";
    v.push_back(s);
  }
  return v;
}

}  // namespace

TEST_CASE("Trainer: resume from its own checkpoint is bit-identical (dropout, jitter, groups, mask, accum)") {
  const std::string dir = temp_path("ckpt");
  const std::string csv_straight = temp_path("straight.csv"), csv_resumed = temp_path("resumed.csv");
  std::filesystem::remove_all(dir);

  Model straight("", csv_straight);
  straight.trainer->train();
  CHECK(straight.evals == std::vector<long>{2, 4, 6, 8});
  CHECK(straight.mask->fired() > 0);
  CHECK(straight.mask->fired() < straight.mask->steps());

  {  // a run interrupted after step 5; its last checkpoint is at step 3, its CSV has rows up to 5
    Model first(dir, csv_resumed);
    first.trainer->train(5);
    CHECK(first.trainer->step() == 5);
    CHECK(read_lines(csv_resumed).size() == 6);
  }
  CHECK(Trainer<float>::latest_checkpoint(dir) == dir + "/checkpoint-3");

  Model resumed(dir, csv_resumed);  // fresh objects, as after a restart
  REQUIRE(resumed.trainer->resume_latest());
  CHECK(resumed.trainer->step() == 3);
  CHECK(resumed.trainer->tokens_seen() == 3 * 2 * 16);
  const TrainSummary s = resumed.trainer->train();
  CHECK(s.steps_run == 5);
  CHECK(resumed.evals == std::vector<long>{4, 6, 8});

  REQUIRE(straight.store.values().size() == resumed.store.values().size());
  CHECK(std::memcmp(straight.store.values().data(), resumed.store.values().data(),
                    straight.store.values().size() * sizeof(float)) == 0);
  Model untouched("", "");
  CHECK(std::memcmp(untouched.store.values().data(), resumed.store.values().data(),
                    untouched.store.values().size() * sizeof(float)) != 0);
  for (std::size_t p = 0; p < straight.store.size(); ++p) {
    INFO(straight.store.entry(p).name);
    CHECK(straight.opt->step_count(p) == resumed.opt->step_count(p));
    CHECK(straight.opt->state(p).exp_avg == resumed.opt->state(p).exp_avg);
  }
  CHECK(straight.mask->steps() == resumed.mask->steps());

  // the resumed CSV: one header, rows 1..8 (the interrupted run's rows 4, 5 dropped), equal to the straight
  // run's except for the wall-time column
  const auto a = read_lines(csv_straight), b = read_lines(csv_resumed);
  REQUIRE(a.size() == 9);
  REQUIRE(b.size() == 9);
  CHECK(a[0].rfind("step,loss,lr,tokens_per_s,grad_norm,eval_loss,load.h.0.mlp.c_fc.0,", 0) == 0);
  CHECK(without_speed(a) == without_speed(b));
  double load_sum = 0.0;
  for (std::size_t i = 6; i < 10; ++i) load_sum += std::stod(split(a[1])[i]);
  CHECK(load_sum == Approx(1.0));

  // keep_checkpoints = 1: the resumed run's checkpoint-6 replaced checkpoint-3
  CHECK(Trainer<float>::latest_checkpoint(dir) == dir + "/checkpoint-6");
  CHECK(!std::filesystem::exists(dir + "/checkpoint-3"));

  SECTION("a checkpoint from another optimizer is refused") {
    ParamStore<float> s2;
    Rng rng(7);
    LoraExpertsConfig c = LoraExpertsConfig::for_ai(4, 4);
    c.base_trainable = true;
    MoLoRA<float> l2(LinearConfig{24, 20, true}, c);
    l2.register_params(s2, "h.0.mlp.c_fc", rng);
    s2.add("frozen.weight", {3, 3}, false);
    SGD<float> sgd;
    TrainerCallbacks cb;
    cb.micro_batch = [](long, long) { return MicroBatchResult{}; };
    Trainer<float> t(s2, sgd, Schedule(), quiet(8), cb);
    CHECK_THROWS_WITH(t.resume(dir + "/checkpoint-6"),
                      Catch::Contains("written with optimizer 'adamw', this trainer uses 'sgd'"));
  }
  std::filesystem::remove_all(dir);
  std::filesystem::remove(csv_straight);
  std::filesystem::remove(csv_resumed);
}
