// `pemoe score --model DIR --batch FILE [--adapter DIR] [--grads] --out FILE`: logits, loss and (optionally)
// the trainable parameters' gradients of a Hugging Face GPT-2 (with a PEFT adapter) or T5 on one batch.
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "../cli.hpp"
#include "pemoe/io/safetensors.hpp"
#include "pemoe/models/gpt2.hpp"
#include "pemoe/models/gpt2_hf.hpp"
#include "pemoe/models/t5_hf.hpp"

namespace pemoe::cli {
namespace {

struct ScoreOptions {
  std::string model, batch, adapter, out, dtype = "f32";
  bool grads = false;
};

// `name` of the batch file as (B, T) int64 values; `RuntimeError` naming the tensor otherwise.
std::vector<std::int64_t> read_ids(const SafetensorsFile& f, const std::string& name, Shape& shape) {
  const std::string where = "'" + f.source() + "': tensor '" + name + "'";
  const auto& ti = f.info(name);
  if (ti.dtype != Dtype::I64)
    throw RuntimeError(where + " has dtype " + dtype_name(ti.dtype) + "; expected I64 (int64 token ids)");
  if (ti.shape.size() != 2 || ti.shape[0] < 1 || ti.shape[1] < 1)
    throw RuntimeError(where + " has shape " + shape_string(ti.shape) +
                       "; expected (B, T) with B, T >= 1 (batch, sequence length)");
  shape = ti.shape;
  return f.to_vector<std::int64_t>(name);
}

// Checks that every id of `ids` ((B, T) `shape`, tensor `name` of `file`) is -100 (when `ignore_ok`) or in
// [0, V) of `model`.
void check_ids(const std::vector<std::int64_t>& ids, const Shape& shape, Index V, bool ignore_ok,
               const std::string& file, const std::string& name, const std::string& model) {
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] >= 0 && ids[i] < V) continue;
    if (ignore_ok && ids[i] == -100) continue;
    const std::string at = "'" + file + "': " + name + "[" + std::to_string(Index(i) / shape[1]) + ", " +
                           std::to_string(Index(i) % shape[1]) + "] = " + std::to_string(ids[i]);
    const std::string vocab = "[0, " + std::to_string(V) + ")";
    throw RuntimeError(ignore_ok ? at + "; expected -100 (not scored) or an id in " + vocab
                                 : at + " is outside the vocabulary " + vocab + " of " + model);
  }
}

// An optional (B, T) 0/1 mask `name` of the batch whose shape must be `want`; empty when absent.
std::vector<std::int64_t> read_mask(const SafetensorsFile& f, const std::string& name, const Shape& want) {
  if (!f.contains(name)) return {};
  Shape shape;
  std::vector<std::int64_t> m = read_ids(f, name, shape);
  if (shape != want)
    throw RuntimeError("'" + f.source() + "': '" + name + "' has shape " + shape_string(shape) +
                       "; expected " + shape_string(want));
  for (const std::int64_t v : m)
    if (v != 0 && v != 1)
      throw RuntimeError("'" + f.source() + "': '" + name + "' holds " + std::to_string(v) +
                         "; expected 0 (padding) or 1");
  return m;
}

// Writes `o.out`: logits (logit_shape), the loss when there are labels and, with --grads (after
// `backward`), every trainable parameter's gradient: under its Hugging Face name (GPT-2's Conv1D weights
// transposed to (in, out)) or, with an adapter, under the key and shape of its adapter_model.safetensors.
// Prints one line; `model_kind` is "" or "T5 ".
template <class T, class Backward>
int write_scores(const ScoreOptions& o, ParamStore<T>& store, const Matrix<T>& logits,
                 const Shape& logit_shape, double loss, bool has_labels, const PeftAdapterConfig& adapter,
                 const char* model_kind, Backward&& backward) {
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  const Dtype dt = std::is_same_v<T, double> ? Dtype::F64 : Dtype::F32;
  w.add("logits", logit_shape, logits.data(), dt);
  if (has_labels) {
    const T l = T(loss);
    w.add("loss", Shape{}, &l, dt);
  }
  Index n_grads = 0;
  if (o.grads) {
    store.zero_grad();
    backward();
    const bool adapted = !o.adapter.empty();
    for (const auto& e : store.entries()) {
      if (!e.trainable) continue;
      const T* g = store.grad(store.id(e.name));
      if (!adapted && pemoe::detail::is_gpt2_conv1d_weight(e.name)) {  // HF's Conv1D layout (in, out)
        const Matrix<T> t = ConstMatrixMap<T>(g, e.shape[0], e.shape[1]).transpose();
        w.add("grad." + e.name, Shape{e.shape[1], e.shape[0]}, t.data(), dt);
      } else if (adapted && adapter.spec.kind == AdapterKind::ia3) {  // PEFT: (out, 1), or (1, in)
        const std::string site = e.name.substr(0, e.name.size() - std::string(".ia3_l").size());
        w.add("grad." + peft_key(e.name),
              adapter.feedforward.matches(site) ? Shape{1, e.size} : Shape{e.size, 1}, g, dt);
      } else {
        w.add("grad." + (adapted ? peft_key(e.name) : e.name), e.shape, g, dt);
      }
      ++n_grads;
    }
  }
  w.save(o.out);
  std::cout << "'" << o.out << "': " << model_kind << "logits " << shape_string(logit_shape);
  if (has_labels) std::cout << ", loss " << loss;
  if (o.grads) std::cout << ", " << n_grads << " gradient tensors";
  std::cout << "\n";
  return 0;
}

// T5: input_ids (B, Ts) with an optional attention_mask; labels (B, Tt) (decoder inputs = labels shifted
// right, as Hugging Face does) or decoder_input_ids (B, Tt), with an optional decoder_attention_mask.
template <class T>
int score_t5(const ScoreOptions& o) {
  const auto batch = SafetensorsFile::load(o.batch);
  if (!batch.contains("input_ids"))
    throw RuntimeError("'" + o.batch + "' has no tensor 'input_ids' (int64, (B, Ts)) for the T5 encoder");
  Shape src_shape, tgt_shape, shape;
  const std::vector<std::int64_t> src = read_ids(batch, "input_ids", src_shape);
  std::vector<std::int64_t> labels, dec;
  if (batch.contains("labels")) labels = read_ids(batch, "labels", tgt_shape);
  if (batch.contains("decoder_input_ids")) {
    dec = read_ids(batch, "decoder_input_ids", shape);
    if (!labels.empty() && shape != tgt_shape)
      throw RuntimeError("'" + o.batch + "': 'decoder_input_ids' has shape " + shape_string(shape) +
                         ", 'labels' has " + shape_string(tgt_shape) + "; they must match");
    tgt_shape = shape;
  }
  if (labels.empty() && dec.empty())
    throw RuntimeError("'" + o.batch +
                       "' has neither 'labels' nor 'decoder_input_ids' (int64, (B, Tt)): a T5 needs decoder "
                       "inputs");
  if (o.grads && labels.empty())
    throw RuntimeError("--grads needs a loss, but '" + o.batch +
                       "' has no tensor 'labels' (int64, (B, Tt); -100 = not scored)");
  if (tgt_shape[0] != src_shape[0])
    throw RuntimeError("'" + o.batch + "': the source has " + std::to_string(src_shape[0]) +
                       " rows, the target " + std::to_string(tgt_shape[0]));
  const std::vector<std::int64_t> src_mask = read_mask(batch, "attention_mask", src_shape);
  const std::vector<std::int64_t> tgt_mask = read_mask(batch, "decoder_attention_mask", tgt_shape);

  ParamStore<T> store;
  Rng rng(0);
  PeftAdapterConfig adapter;
  auto model = load_t5<T>(o.model, store, rng, o.adapter, &adapter);
  const Index B = src_shape[0], Ts = src_shape[1], Tt = tgt_shape[1], V = model->config().vocab_size;
  check_ids(src, src_shape, V, false, o.batch, "input_ids", o.model);
  check_ids(labels, tgt_shape, V, true, o.batch, "labels", o.model);
  check_ids(dec, tgt_shape, V, false, o.batch, "decoder_input_ids", o.model);

  model->set_training(false);
  model->set_batch(B, Ts, Tt, src_mask, tgt_mask);
  typename T5<T>::Cache cache;
  const double loss =
      dec.empty() ? model->forward(src, labels, cache) : model->forward(src, dec, labels, cache);

  return write_scores(o, store, cache.logits, Shape{B, Tt, V}, loss, !labels.empty(), adapter, "T5 ",
                      [&] { model->backward(cache); });
}

template <class T>
int score(const ScoreOptions& o) {
  if (is_t5_dir(o.model)) return score_t5<T>(o);
  const auto batch = SafetensorsFile::load(o.batch);
  if (!batch.contains("input_ids"))
    throw RuntimeError("'" + o.batch + "' has no tensor 'input_ids' (int64, (B, T)); it has " +
                       std::to_string(batch.size()) + " tensor(s)" +
                       (batch.size() ? ", e.g. '" + batch.names().front() + "'" : std::string()));
  Shape shape, label_shape;
  const std::vector<std::int64_t> ids = read_ids(batch, "input_ids", shape);
  std::vector<std::int64_t> labels;
  if (batch.contains("labels")) {
    labels = read_ids(batch, "labels", label_shape);
    if (label_shape != shape)
      throw RuntimeError("'" + o.batch + "': 'labels' has shape " + shape_string(label_shape) +
                         ", 'input_ids' has " + shape_string(shape) + "; they must match");
  }
  if (o.grads && labels.empty())
    throw RuntimeError("--grads needs a loss, but '" + o.batch +
                       "' has no tensor 'labels' (int64, (B, T); -100 = not scored)");

  ParamStore<T> store;
  Rng rng(0);
  PeftAdapterConfig adapter;
  auto model = load_gpt2<T>(o.model, store, rng, o.adapter, &adapter);
  const GPT2Config& c = model->config();
  const Index B = shape[0], S = shape[1], V = c.vocab_size;
  if (S > c.n_positions)
    throw RuntimeError("'" + o.batch + "': sequence length T = " + std::to_string(S) +
                       " exceeds the model's n_positions = " + std::to_string(c.n_positions) + " (" +
                       o.model + "/config.json); split or truncate the sequences");
  check_ids(ids, shape, V, false, o.batch, "input_ids", o.model);
  check_ids(labels, shape, V, true, o.batch, "labels", o.model);

  model->set_training(false);
  model->set_batch(B, S);
  typename GPT2<T>::Cache cache;
  const double loss = model->forward(ids, labels, cache);

  return write_scores(o, store, cache.logits, Shape{B, S, V}, loss, !labels.empty(), adapter, "",
                      [&] { model->backward(cache); });
}

void setup_score(CLI::App& cmd) {
  auto o = std::make_shared<ScoreOptions>();
  cmd.add_option("--model", o->model,
                 "a Hugging Face GPT-2 or T5 directory (config.json, model.safetensors; model_type \"t5\")")
      ->required()
      ->type_name("DIR");
  cmd.add_option("--batch", o->batch,
                 "a .safetensors file with input_ids and optionally labels (int64, (B, T))")
      ->required()
      ->type_name("FILE");
  cmd.add_option("--out", o->out, "the .safetensors file to write")->required()->type_name("FILE");
  cmd.add_option("--adapter", o->adapter,
                 "a PEFT adapter directory (LoRA, IA3, or pemoe's MoE extension) on top of the model")
      ->type_name("DIR");
  cmd.add_flag("--grads", o->grads, "also write the gradient of every trainable parameter (needs labels)")
      ->disable_flag_override();
  cmd.add_option("--dtype", o->dtype, "compute and write in f32 (default) or f64")
      ->type_name("D")
      ->check(one_of({"f32", "f64"}));
  cmd.footer(
      "Runs the model (eval mode: no dropout) on the batch and writes:\n"
      "  logits            (B, T, vocab)\n"
      "  loss              ()   with labels: mean cross-entropy of position t predicting labels[t+1]\n"
      "                         (Hugging Face's shift), -100 not scored; + routers' aux losses (MoE)\n"
      "  grad.<name>       with --grads: without an adapter every parameter under its Hugging Face name\n"
      "                    (Conv1D weights (in, out) as in model.safetensors); with --adapter only the\n"
      "                    adapter's tensors, under the keys and shapes of its adapter_model.safetensors\n"
      "in F32 (F64 with --dtype f64, which also computes in double).\n"
      "A T5 (config.json model_type \"t5\") reads input_ids and attention_mask (B, Ts), labels (B, Tt;\n"
      "decoder inputs = labels shifted right with decoder_start_token_id) or decoder_input_ids, and\n"
      "decoder_attention_mask; it writes logits (B, Tt, vocab), loss (mean over labels != -100) and the\n"
      "gradients as above (a T5 takes PEFT adapters too: IA3's feed-forward default is wo).");
  set_action(cmd, [o] { return o->dtype == "f64" ? score<double>(*o) : score<float>(*o); });
}

[[maybe_unused]] const bool registered_score = register_command(
    {"score", "logits, loss and gradients of a Hugging Face GPT-2 (+ PEFT adapter) or T5 on a batch",
     setup_score});

}  // namespace
}  // namespace pemoe::cli
