/// @file checkpoint.hpp
/// @brief Training checkpoints: named tensors (parameters, optimizer state, rng counters, step) in one
/// safetensors file plus a small JSON of configuration and metadata, written atomically; resume is
/// bit-identical.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/io/safetensors.hpp"
#include "pemoe/train/adafactor.hpp"
#include "pemoe/train/adamw.hpp"
#include "pemoe/train/sgd.hpp"

namespace pemoe {

namespace detail {

/// Writes `bytes` to `path` durably: a temporary file in the same directory, fsync, rename over `path`,
/// fsync of the directory. A crash leaves either the old file or the new one, never a mix.
inline void write_durably(const std::string& path, const void* bytes, std::size_t n) {
  const std::string tmp = path + ".tmp-pemoe";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw IoError("cannot open '" + tmp + "' for writing: " + std::strerror(errno));
  const char* p = static_cast<const char*>(bytes);
  std::size_t left = n;
  while (left > 0) {
    const ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw IoError("could not write '" + tmp + "': " + why + " (disk full?)");
    }
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw IoError("could not flush '" + tmp + "' to disk: " + why);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw IoError("cannot move '" + tmp + "' to '" + path + "': " + why);
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

/// FNV-1a over bytes (a cheap content check tying the JSON to the tensor file it was written with).
inline std::uint64_t fnv1a(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ULL;
  return h;
}

}  // namespace detail

/**
 * @brief A checkpoint: named tensors and a JSON object, saved as `<dir>/checkpoint.safetensors` and
 * `<dir>/checkpoint.json`.
 *
 * Each file is written durably (temporary file, fsync, rename); the JSON is written last and records the
 * byte size and an FNV-1a hash of the tensor file, so `load` detects a tensor file that does not belong to
 * its JSON (a crash between the two renames) and says so instead of resuming from a mix. Tensors keep their
 * exact bits (F32/F64 values, I64/U64 counters), which is what makes resume bit-identical.
 *
 * Conventional names: `param.<name>` for parameter values, `opt.<...>` for optimizer state, `rng.<...>` for
 * rng call counters; `meta()["step"]` for the step.
 */
class Checkpoint {
 public:
  /// Adds `shape`'s worth of `data` under `name` (exact bits).
  template <class T>
  void put(const std::string& name, const Shape& shape, const T* data) {
    m_writer.add(name, shape, data);
  }
  /// Adds a vector as a 1-d tensor.
  template <class T>
  void put(const std::string& name, const std::vector<T>& v) {
    m_writer.add(name, Shape{static_cast<Index>(v.size())}, v.data());
  }
  /// Whether the loaded checkpoint has a tensor `name`.
  bool contains(const std::string& name) const { return m_file && m_file->contains(name); }
  /// A loaded tensor's elements; `IoError` naming the tensor when it is absent.
  template <class T>
  std::vector<T> get(const std::string& name) const {
    PEMOE_CHECK_AS(IoError, m_file != nullptr, "Checkpoint: nothing loaded");
    return m_file->to_vector<T>(name);
  }
  /// Copies a loaded tensor into `count` elements at `out`; `ShapeError` on a different element count.
  template <class T>
  void get(const std::string& name, T* out, Index count) const {
    PEMOE_CHECK_AS(IoError, m_file != nullptr, "Checkpoint: nothing loaded");
    m_file->copy_to(name, out, count);
  }
  /// Configuration and metadata (step, seed, model and optimizer settings, ...).
  nlohmann::json& meta() { return m_meta; }
  const nlohmann::json& meta() const { return m_meta; }

  /// Writes the checkpoint into `dir` (created if needed).
  void save(const std::string& dir) const {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    PEMOE_CHECK_AS(IoError, !ec, "Checkpoint: cannot create directory '", dir, "': ", ec.message());
    const std::vector<unsigned char> bytes = m_writer.to_bytes();
    detail::write_durably(dir + "/checkpoint.safetensors", bytes.data(), bytes.size());
    nlohmann::json j = m_meta;
    j["pemoe_checkpoint"] = {{"tensor_bytes", bytes.size()},
                             {"tensor_fnv1a", std::to_string(detail::fnv1a(bytes.data(), bytes.size()))}};
    const std::string text = j.dump(2) + "\n";
    detail::write_durably(dir + "/checkpoint.json", text.data(), text.size());
  }

  /// Reads a checkpoint written by `save`; `IoError` naming the file when a part is missing, malformed or
  /// does not match the other.
  static Checkpoint load(const std::string& dir) {
    Checkpoint c;
    const std::string jpath = dir + "/checkpoint.json";
    std::ifstream in(jpath);
    PEMOE_CHECK_AS(IoError, static_cast<bool>(in), "Checkpoint: cannot open '", jpath,
                   "' (is this a checkpoint directory written by pemoe?)");
    try {
      c.m_meta = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw IoError("Checkpoint: '" + jpath + "' is not valid JSON: " + e.what());
    }
    PEMOE_CHECK_AS(IoError, c.m_meta.contains("pemoe_checkpoint"), "Checkpoint: '", jpath,
                   "' has no 'pemoe_checkpoint' record");
    const auto rec = c.m_meta["pemoe_checkpoint"];
    c.m_meta.erase("pemoe_checkpoint");
    auto bytes = detail::read_file_bytes(dir + "/checkpoint.safetensors");
    const bool same =
        rec.value("tensor_bytes", std::size_t(0)) == bytes.size() &&
        rec.value("tensor_fnv1a", std::string()) == std::to_string(detail::fnv1a(bytes.data(), bytes.size()));
    PEMOE_CHECK_AS(
        IoError, same, "Checkpoint: '", dir,
        "/checkpoint.safetensors' does not belong to its checkpoint.json (size or hash differ; the "
        "save was interrupted): resume from an earlier checkpoint");
    c.m_file = std::make_shared<SafetensorsFile>(
        SafetensorsFile::from_bytes(std::move(bytes), dir + "/checkpoint.safetensors"));
    return c;
  }

 private:
  SafetensorsWriter m_writer;
  std::shared_ptr<const SafetensorsFile> m_file;
  nlohmann::json m_meta = nlohmann::json::object();
};

/// Puts every parameter value of the store under "param." and its name (exact bits), skipping released
/// parameters (see ParamStore::release_values_if: only a packed copy of them is left).
template <class T>
void save_params(Checkpoint& c, const ParamStore<T>& store) {
  for (const auto& e : store.entries())
    if (!e.released) c.put("param." + e.name, e.shape, store.values().data() + e.offset);
}
/// Restores every parameter (but released ones) from `param.<name>`; `IoError` naming a missing one.
template <class T>
void load_params(const Checkpoint& c, ParamStore<T>& store) {
  for (const auto& e : store.entries()) {
    if (e.released) continue;
    PEMOE_CHECK_AS(IoError, c.contains("param." + e.name), "Checkpoint: no value for parameter '", e.name,
                   "' (was it saved from the same model and adapters?)");
    c.get("param." + e.name, store.values().data() + e.offset, e.size);
  }
}

/// Puts SGD's momentum buffer and step counts under `prefix`.
template <class T>
void save_optimizer(Checkpoint& c, const SGD<T>& opt, const std::string& prefix = "opt.") {
  c.put(prefix + "momentum", opt.momentum_buffer());
  c.put(prefix + "steps", const_cast<SGD<T>&>(opt).step_counts());
}
template <class T>
void load_optimizer(const Checkpoint& c, SGD<T>& opt, const std::string& prefix = "opt.") {
  opt.momentum_buffer() = c.get<double>(prefix + "momentum");
  opt.step_counts() = c.get<long>(prefix + "steps");
}

/// Puts Adafactor's per-parameter state under `prefix` (`<prefix><i>.step/row/col/v/m`).
template <class T>
void save_optimizer(Checkpoint& c, const Adafactor<T>& opt, const std::string& prefix = "opt.") {
  const auto& st = opt.state();
  c.put(prefix + "count", std::vector<std::int64_t>{static_cast<std::int64_t>(st.size())});
  for (std::size_t i = 0; i < st.size(); ++i) {
    const std::string p = prefix + std::to_string(i) + ".";
    c.put(p + "step", std::vector<std::int64_t>{st[i].step});
    for (const auto* part : {&st[i].row, &st[i].col, &st[i].v, &st[i].m}) {
      const char* n = part == &st[i].row ? "row" : part == &st[i].col ? "col" : part == &st[i].v ? "v" : "m";
      if (!part->empty()) c.put(p + n, *part);
    }
  }
}
template <class T>
void load_optimizer(const Checkpoint& c, Adafactor<T>& opt, const std::string& prefix = "opt.") {
  const auto count = static_cast<std::size_t>(c.get<std::int64_t>(prefix + "count").at(0));
  auto& st = opt.state();
  st.assign(count, typename Adafactor<T>::State{});
  for (std::size_t i = 0; i < count; ++i) {
    const std::string p = prefix + std::to_string(i) + ".";
    st[i].step = c.get<std::int64_t>(p + "step").at(0);
    if (c.contains(p + "row")) st[i].row = c.get<double>(p + "row");
    if (c.contains(p + "col")) st[i].col = c.get<double>(p + "col");
    if (c.contains(p + "v")) st[i].v = c.get<double>(p + "v");
    if (c.contains(p + "m")) st[i].m = c.get<double>(p + "m");
  }
}

/// Puts AdamW's per-parameter step counts and moments under `prefix` (`<prefix><i>.step/exp_avg/exp_avg_sq`,
/// i = the parameter's index in the store).
template <class T>
void save_optimizer(Checkpoint& c, const AdamW<T>& opt, const ParamStore<T>& store,
                    const std::string& prefix = "opt.") {
  for (std::size_t i = 0; i < store.entries().size(); ++i) {
    const auto& st = opt.state(i);
    const std::string p = prefix + std::to_string(i) + ".";
    c.put(p + "step", std::vector<std::int64_t>{st.step});
    if (!st.exp_avg.empty()) {
      c.put(p + "exp_avg", st.exp_avg);
      c.put(p + "exp_avg_sq", st.exp_avg_sq);
    }
  }
}
template <class T>
void load_optimizer(const Checkpoint& c, AdamW<T>& opt, const ParamStore<T>& store,
                    const std::string& prefix = "opt.") {
  for (std::size_t i = 0; i < store.entries().size(); ++i) {
    const std::string p = prefix + std::to_string(i) + ".";
    typename AdamW<T>::ParamState st;
    st.step = c.get<std::int64_t>(p + "step").at(0);
    if (c.contains(p + "exp_avg")) {
      st.exp_avg = c.get<T>(p + "exp_avg");  // an older checkpoint's double moments are rounded to T
      st.exp_avg_sq = c.get<T>(p + "exp_avg_sq");
    }
    opt.set_state(i, std::move(st));
  }
}

}  // namespace pemoe
