/// @file safetensors.hpp
/// @brief Reading and writing the safetensors format, and loading/saving a `ParamStore` with it.
///
/// The format (https://github.com/huggingface/safetensors), all little-endian:
/// ```
/// [8 bytes: N, uint64]  [N bytes: UTF-8 JSON header]  [data buffer]
/// header = {"__metadata__": {"key": "value", ...},                       (optional, strings only)
///           "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
/// ```
/// Offsets are relative to the start of the data buffer; every tensor is row-major (C order) and
/// the tensors tile the buffer exactly (no gap, no overlap, nothing after the last one). The
/// reference writer pads the header with spaces so that the buffer starts 8-byte aligned, writes the
/// JSON compactly with `__metadata__` first and keys `dtype`, `shape`, `data_offsets` in that order;
/// `SafetensorsWriter` does the same, so a file with the same tensors in the same order is
/// byte-identical to one written by Python's `safetensors`.
///
/// Reading validates everything before any tensor is used, and every problem is an `IoError` naming
/// the file, the tensor, what is wrong and what to do about it.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/core/tensor.hpp"
#include "pemoe/io/dtype.hpp"

namespace pemoe {

/// The free-form string → string metadata of a safetensors file (`__metadata__`), ordered by key.
using SafetensorsMetadata = std::map<std::string, std::string>;

/// Where one tensor lives in a safetensors file.
struct TensorInfo {
  std::string name;          ///< tensor name, e.g. "encoder.layer.0.intermediate.dense.weight"
  Dtype dtype = Dtype::F32;  ///< element type
  Shape shape;               ///< row-major shape; `{}` is a scalar
  std::size_t begin = 0;     ///< first byte, relative to the data buffer
  std::size_t end = 0;       ///< one past the last byte

  /// Number of elements.
  Index numel() const { return shape_size(shape); }
  /// Number of bytes (`end - begin`).
  std::size_t nbytes() const { return end - begin; }
};

namespace detail {

/// "'a', 'b', 'c' and 7 more" for messages.
inline std::string name_list(const std::vector<std::string>& names, std::size_t max_shown = 8) {
  std::string s;
  for (std::size_t i = 0; i < names.size() && i < max_shown; ++i) s += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > max_shown) s += " and " + std::to_string(names.size() - max_shown) + " more";
  return s.empty() ? "(none)" : s;
}

/// Reads a whole file; throws `IoError` naming it when it cannot be opened or read, or is a directory.
/// A regular file is read with one allocation of its size; anything else (a pipe) is read as a stream.
inline std::vector<unsigned char> read_file_bytes(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!ec && fs::is_directory(st)) throw IoError("cannot read '" + path + "': it is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path + "' for reading: " + std::strerror(errno));
  std::vector<unsigned char> bytes;
  if (!ec && fs::is_regular_file(st)) {
    const std::uintmax_t size = fs::file_size(path, ec);
    PEMOE_CHECK_AS(IoError, !ec, "cannot determine the size of '", path, "': ", ec.message());
    PEMOE_CHECK_AS(IoError,
                   size <= bytes.max_size() &&
                       size <= static_cast<std::uintmax_t>(std::numeric_limits<std::streamsize>::max()),
                   "'", path, "' is ", size, " bytes, more than this machine can hold in memory");
    bytes.resize(static_cast<std::size_t>(size));
    if (size > 0) in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
    PEMOE_CHECK_AS(IoError, size == 0 || (in.good() && in.gcount() == static_cast<std::streamsize>(size)),
                   "could not read all ", size, " bytes of '", path, "' (was it changed while being read?)");
  } else {
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    PEMOE_CHECK_AS(IoError, !in.bad(), "could not read '", path, "'");
  }
  return bytes;
}

/// Writes `bytes` to `path` through a temporary file renamed into place, so that a failed write never
/// leaves a half-written file under the final name.
inline void write_file_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
  const std::string tmp = path + ".tmp-pemoe";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError("cannot open '" + tmp + "' for writing: " + std::strerror(errno));
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw IoError("could not write " + std::to_string(bytes.size()) + " bytes to '" + tmp +
                    "' (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw IoError("cannot move '" + tmp + "' to '" + path + "': " + why);
  }
}

/// JSON of the header, with insertion order kept (the reference writer's key order).
using HeaderJson = nlohmann::ordered_json;

}  // namespace detail

/**
 * @brief A safetensors file read into memory and fully validated.
 *
 * ```
 * auto f = pemoe::SafetensorsFile::load("model.safetensors");
 * for (const auto& name : f.names()) std::cout << name << pemoe::shape_string(f.info(name).shape);
 * pemoe::Matrix<float> w = f.to_matrix<float>("encoder.layer.0.intermediate.dense.weight");
 * ```
 * `load` reads the whole file (one allocation of the file's size) and checks the header: its length,
 * its JSON, every dtype, that every shape's size matches its byte range, and that the byte ranges tile
 * the data buffer exactly. Conversions (`to_vector`, `to_matrix`) read any dtype — F16, BF16 and the
 * 8-bit floats are decoded exactly — into any arithmetic type.
 *
 * Cost: O(file size) to read, O(tensors · log tensors) to validate; conversion is O(elements).
 */
class SafetensorsFile {
 public:
  SafetensorsFile() = default;

  /// Reads and validates the file at `path`; throws `IoError` on any problem.
  static SafetensorsFile load(const std::string& path) {
    return from_bytes(detail::read_file_bytes(path), path);
  }

  /// Validates an in-memory image of a safetensors file; `source` names it in error messages.
  static SafetensorsFile from_bytes(std::vector<unsigned char> bytes,
                                    const std::string& source = "<memory>") {
    SafetensorsFile f;
    f.m_source = source;
    f.m_bytes = std::move(bytes);
    f.parse();
    return f;
  }

  /// The path (or `source`) the file was read from.
  const std::string& source() const { return m_source; }
  /// Tensor names in header order (the order the writer chose; for files written by Python's
  /// `safetensors` and by pemoe this is also the order of the data).
  const std::vector<std::string>& names() const { return m_names; }
  /// Number of tensors.
  std::size_t size() const { return m_names.size(); }
  /// Whether a tensor called `name` exists.
  bool contains(const std::string& name) const { return m_infos.count(name) != 0; }
  /// The tensor's dtype, shape and byte range; throws `IoError` listing the file's tensors if absent.
  const TensorInfo& info(const std::string& name) const {
    auto it = m_infos.find(name);
    if (it == m_infos.end())
      throw IoError("safetensors '" + m_source + "': no tensor named '" + name + "'; the file has " +
                    std::to_string(m_names.size()) + " tensors: " + detail::name_list(m_names));
    return it->second;
  }
  /// The `__metadata__` entries (empty when the file has none).
  const SafetensorsMetadata& metadata() const { return m_metadata; }
  /// Size of the header JSON in bytes (including padding), as stored in the 8-byte prefix.
  std::size_t header_size() const { return m_header_size; }
  /// Total size of the file in bytes.
  std::size_t file_size() const { return m_bytes.size(); }

  /// The tensor's raw little-endian bytes (`info(name).nbytes()` of them; not necessarily aligned).
  const unsigned char* raw(const std::string& name) const {
    return m_bytes.data() + data_start() + info(name).begin;
  }

  /// Converts the tensor's elements (any dtype) into `count == numel` elements of `T` at `out`.
  template <class T>
  void copy_to(const std::string& name, T* out, Index count) const {
    static_assert(std::is_arithmetic_v<T>, "SafetensorsFile::copy_to: T must be an arithmetic type");
    const TensorInfo& ti = info(name);
    PEMOE_CHECK_SHAPE(count == ti.numel(), "safetensors '", m_source, "': tensor '", name, "' has ",
                      ti.numel(), " elements ", shape_string(ti.shape), ", destination has ", count);
    const unsigned char* p = raw(name);
    const std::size_t es = dtype_size(ti.dtype);
    if (ti.dtype == dtype_of<T>() && !std::is_same_v<T, bool>) {  // bool: normalise any non-zero byte
      std::copy_n(p, ti.nbytes(), reinterpret_cast<unsigned char*>(out));
      return;
    }
    for (Index i = 0; i < count; ++i)
      out[i] = detail::load_element<T>(p + static_cast<std::size_t>(i) * es, ti.dtype);
  }

  /// The tensor's elements (row-major) converted to `T`.
  template <class T>
  std::vector<T> to_vector(const std::string& name) const {
    std::vector<T> v(static_cast<std::size_t>(info(name).numel()));
    copy_to(name, v.data(), static_cast<Index>(v.size()));
    return v;
  }

  /// A 2-d tensor as a row-major matrix of `T`; throws `ShapeError` for any other rank.
  template <class T>
  Matrix<T> to_matrix(const std::string& name) const {
    const TensorInfo& ti = info(name);
    PEMOE_CHECK_SHAPE(ti.shape.size() == 2, "safetensors '", m_source, "': tensor '", name, "' has shape ",
                      shape_string(ti.shape), " (", ti.shape.size(), "-d); to_matrix needs a 2-d tensor");
    Matrix<T> m(ti.shape[0], ti.shape[1]);
    copy_to(name, m.data(), m.size());
    return m;
  }

 private:
  std::string where() const { return "safetensors '" + m_source + "'"; }
  std::size_t data_start() const { return 8 + m_header_size; }

  [[noreturn]] void fail(const std::string& what) const { throw IoError(where() + ": " + what); }

  void parse() {
    const std::size_t total = m_bytes.size();
    if (total < 8)
      fail("the file is " + std::to_string(total) +
           " bytes, shorter than the 8-byte header-length prefix; it is truncated or not a safetensors file");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | m_bytes[static_cast<std::size_t>(i)];
    if (n > total - 8)
      fail("header length " + std::to_string(n) + " bytes is larger than the " + std::to_string(total - 8) +
           " bytes after the 8-byte prefix; the file is truncated or not a safetensors file");
    if (n < 2)
      fail("header length is " + std::to_string(n) +
           " bytes; a safetensors header is a JSON object of at least 2 bytes ('{}')");
    m_header_size = static_cast<std::size_t>(n);
    const char* hdr = reinterpret_cast<const char*>(m_bytes.data() + 8);
    if (hdr[0] != '{')
      fail("the header does not start with '{' (it starts with byte 0x" +
           hex(static_cast<unsigned char>(hdr[0])) + "); this is not a safetensors file, or it is corrupt");

    // Parse, rejecting duplicate keys (nlohmann would silently keep only the last one).
    std::set<std::string> top_keys, inner_keys;
    std::string current, dup_name, dup_field;
    auto cb = [&](int depth, detail::HeaderJson::parse_event_t ev, detail::HeaderJson& parsed) {
      if (ev != detail::HeaderJson::parse_event_t::key || !dup_name.empty()) return true;
      const std::string key = parsed.get<std::string>();
      if (depth == 1) {
        if (!top_keys.insert(key).second) dup_name = key;
        current = key;
        inner_keys.clear();
      } else if (depth == 2 && !inner_keys.insert(key).second) {
        dup_name = current;
        dup_field = key;
      }
      return true;
    };
    detail::HeaderJson header;
    try {
      header = detail::HeaderJson::parse(hdr, hdr + m_header_size, cb);
    } catch (const nlohmann::json::exception& e) {
      fail(std::string("the header is not valid JSON (") + e.what() +
           "); the file is corrupt or was not written by a safetensors writer");
    }
    if (!dup_name.empty() && dup_field.empty())
      fail("tensor name '" + dup_name +
           "' appears twice in the header; names must be unique (re-export the file with distinct names)");
    if (!dup_name.empty())
      fail((dup_name == "__metadata__" ? std::string("__metadata__") : "tensor '" + dup_name + "'") +
           " has the key '" + dup_field + "' twice in the header");
    if (!header.is_object()) fail("the header is JSON but not an object");

    std::vector<const TensorInfo*> by_offset;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& key = it.key();
      if (key == "__metadata__") {
        parse_metadata(it.value());
        continue;
      }
      m_names.push_back(key);
      m_infos.emplace(key, parse_info(key, it.value()));
    }
    const std::size_t buffer = total - data_start();
    for (const auto& name : m_names) by_offset.push_back(&m_infos.at(name));
    std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::size_t pos = 0;
    const TensorInfo* prev = nullptr;
    for (const TensorInfo* t : by_offset) {
      if (t->begin < pos)
        fail("tensors '" + prev->name + "' [" + std::to_string(prev->begin) + ", " +
             std::to_string(prev->end) + "] and '" + t->name + "' [" + std::to_string(t->begin) + ", " +
             std::to_string(t->end) + "] overlap in the data buffer; each tensor needs its own bytes");
      if (t->begin > pos)
        fail("bytes [" + std::to_string(pos) + ", " + std::to_string(t->begin) +
             ") of the data buffer belong to no tensor (" +
             (prev ? "between '" + prev->name + "' and '" + t->name + "'" : "before '" + t->name + "'") +
             "); safetensors requires the tensors to cover the buffer without gaps");
      pos = t->end;
      prev = t;
    }
    if (pos != buffer)
      fail("the data buffer has " + std::to_string(buffer - pos) + " bytes after the last tensor" +
           (prev ? " '" + prev->name + "'" : std::string()) + " (bytes [" + std::to_string(pos) + ", " +
           std::to_string(buffer) +
           ") belong to no tensor); the header does not describe the whole file, which is corrupt or "
           "has data appended");
  }

  static std::string hex(unsigned v) {
    const char* digits = "0123456789abcdef";
    return std::string{digits[(v >> 4) & 0xf], digits[v & 0xf]};
  }

  void parse_metadata(const detail::HeaderJson& j) {
    if (!j.is_object())
      fail("__metadata__ is " + std::string(j.type_name()) + ", expected an object of strings");
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (!it.value().is_string())
        fail("__metadata__ value of '" + it.key() + "' is a " + it.value().type_name() +
             "; safetensors metadata values must be strings");
      m_metadata[it.key()] = it.value().get<std::string>();
    }
  }

  TensorInfo parse_info(const std::string& name, const detail::HeaderJson& j) const {
    const std::string t = "tensor '" + name + "'";
    if (!j.is_object())
      fail(t + " is described by a JSON " + std::string(j.type_name()) + ", expected an object");
    TensorInfo ti;
    ti.name = name;
    auto field = [&](const char* key) -> const detail::HeaderJson& {
      auto it = j.find(key);
      if (it == j.end()) fail(t + " has no \"" + key + "\" field");
      return *it;
    };
    const auto& dt = field("dtype");
    if (!dt.is_string()) fail(t + " has a dtype that is not a string");
    if (!parse_dtype(dt.get<std::string>(), ti.dtype))
      fail(t + " has unknown dtype '" + dt.get<std::string>() + "' (pemoe reads " + dtype_list() +
           "); convert the tensor to one of them, e.g. with torch's .float()");
    const auto& sh = field("shape");
    if (!sh.is_array()) fail(t + " has a shape that is not an array");
    const std::size_t buffer = m_bytes.size() - data_start();
    // Every extent, and the product of the non-zero ones times the element size, must fit a signed 64-bit
    // index: then no element count, stride or byte count computed from the shape can overflow, even for an
    // empty tensor whose other extents are huge.
    constexpr std::uint64_t index_max = static_cast<std::uint64_t>(std::numeric_limits<Index>::max());
    std::uint64_t nonzero = dtype_size(ti.dtype);  // bytes of the non-zero extents' product
    bool any_zero = false;
    for (const auto& d : sh) {
      if (!d.is_number_unsigned())  // a negative, fractional or too large (> 2^64) number, or not a number
        fail(t + " has shape " + sh.dump() + "; extents must be non-negative integers");
      const std::uint64_t v = d.get<std::uint64_t>();
      if (v > index_max)
        fail(t + " has shape " + sh.dump() + " with an extent of " + std::to_string(v) +
             ", above the largest supported extent 2^63 - 1; the header is corrupt");
      if (v == 0) {
        any_zero = true;
      } else if (nonzero > index_max / v) {
        fail(t + " has shape " + sh.dump() + ": the product of its non-zero extents times the " +
             std::to_string(dtype_size(ti.dtype)) + "-byte size of " + dtype_name(ti.dtype) +
             " exceeds 2^63 - 1 bytes; the header is corrupt");
      } else {
        nonzero *= v;
      }
      ti.shape.push_back(static_cast<Index>(v));
    }
    const std::uint64_t expected = any_zero ? 0 : nonzero;
    const auto& off = field("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(t + " has data_offsets " + off.dump() + "; expected two non-negative integers [begin, end]");
    const std::uint64_t b = off[0].get<std::uint64_t>(), e = off[1].get<std::uint64_t>();
    if (b > e)
      fail(t + " has data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + "] with begin > end");
    if (e > buffer)
      fail(t + " has data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
           "] past the end of the " + std::to_string(buffer) +
           "-byte data buffer; the file is truncated (re-download or re-export it)");
    ti.begin = static_cast<std::size_t>(b);
    ti.end = static_cast<std::size_t>(e);
    if (expected != e - b)
      fail(t + " has shape " + shape_string(ti.shape) + " of " + dtype_name(ti.dtype) + " = " +
           std::to_string(expected) + " bytes, but its data_offsets [" + std::to_string(b) + ", " +
           std::to_string(e) + "] span " + std::to_string(ti.nbytes()) +
           " bytes; the header is inconsistent (re-export the file)");
    return ti;
  }

  std::string m_source;
  std::vector<unsigned char> m_bytes;
  std::size_t m_header_size = 0;
  std::vector<std::string> m_names;
  std::unordered_map<std::string, TensorInfo> m_infos;
  SafetensorsMetadata m_metadata;
};

/**
 * @brief Builds a safetensors file in memory and writes it.
 *
 * ```
 * pemoe::SafetensorsWriter w;
 * w.add_matrix("layer.weight", W);                    // Matrix<float> → F32
 * w.add("layer.bias", {768}, bias.data());            // any arithmetic T, stored as dtype_of<T>
 * w.add("layer.weight_bf16", {3, 4}, p, pemoe::Dtype::BF16);   // converted on the way
 * w.set_metadata("format", "pt");
 * w.save("out.safetensors");
 * ```
 * Tensors are laid out in the order they are added (the header lists them in that order too), the
 * header is compact JSON padded with spaces to a multiple of 8 bytes, exactly as Python's
 * `safetensors` writes it. `save` writes through a temporary file renamed into place.
 *
 * Every tensor is copied when added (the writer owns its data), so memory is O(total bytes).
 */
class SafetensorsWriter {
 public:
  /// Adds `shape`'s worth of elements of `T` from `data`, stored as `dtype` (default: `T`'s own);
  /// float values are rounded to nearest-even when `dtype` is F16 or BF16. Throws `ConfigError` on a
  /// duplicate or empty name, or on the reserved name `__metadata__`.
  template <class T>
  void add(const std::string& name, const Shape& shape, const T* data, Dtype dtype = dtype_of<T>()) {
    static_assert(std::is_arithmetic_v<T>, "SafetensorsWriter::add: T must be an arithmetic type");
    Entry& e = new_entry(name, dtype, shape);
    const Index n = shape_size(shape);
    PEMOE_CHECK_CONFIG(n == 0 || data != nullptr, "SafetensorsWriter: tensor '", name, "' has ", n,
                       " elements but a null data pointer");
    e.bytes.resize(e.nbytes);
    if (dtype == dtype_of<T>()) {
      if (data != nullptr) std::memcpy(e.bytes.data(), data, e.bytes.size());
      return;
    }
    const std::size_t es = dtype_size(dtype);
    for (Index i = 0; i < n; ++i)
      detail::store_element(e.bytes.data() + static_cast<std::size_t>(i) * es, dtype, data[i]);
  }

  /// Adds a matrix (any Eigen expression) as a 2-d tensor `(rows, cols)`, row-major.
  template <class Derived>
  void add_matrix(const std::string& name, const Eigen::DenseBase<Derived>& m,
                  Dtype dtype = dtype_of<typename Derived::Scalar>()) {
    const Matrix<typename Derived::Scalar> rm = m;  // row-major copy, whatever the storage of `m`
    add(name, Shape{rm.rows(), rm.cols()}, rm.data(), dtype);
  }

  /// Adds already-encoded little-endian bytes of `dtype` (e.g. a tensor copied from another file).
  void add_raw(const std::string& name, Dtype dtype, const Shape& shape, const void* bytes,
               std::size_t nbytes) {
    const std::size_t expected = checked_nbytes(name, dtype, shape);
    PEMOE_CHECK_SHAPE(nbytes == expected, "SafetensorsWriter: tensor '", name, "' of shape ",
                      shape_string(shape), " and dtype ", dtype_name(dtype), " needs ", expected,
                      " bytes, got ", nbytes);
    Entry& e = new_entry(name, dtype, shape);
    e.bytes.assign(static_cast<const unsigned char*>(bytes),
                   static_cast<const unsigned char*>(bytes) + nbytes);
  }

  /// Copies tensor `name` of `file` unchanged (same dtype and bytes), as `new_name` if given.
  void copy_from(const SafetensorsFile& file, const std::string& name, const std::string& new_name = "") {
    const TensorInfo& ti = file.info(name);
    add_raw(new_name.empty() ? name : new_name, ti.dtype, ti.shape, file.raw(name), ti.nbytes());
  }

  /// Sets one `__metadata__` entry (replacing an earlier value of the same key).
  void set_metadata(const std::string& key, const std::string& value) { m_metadata[key] = value; }
  /// Sets every entry of `metadata` (keeps other keys).
  void set_metadata(const SafetensorsMetadata& metadata) {
    for (const auto& kv : metadata) m_metadata[kv.first] = kv.second;
  }
  /// The metadata written so far.
  const SafetensorsMetadata& metadata() const { return m_metadata; }
  /// Whether a tensor called `name` was added.
  bool contains(const std::string& name) const { return m_index.count(name) != 0; }
  /// Names in the order they were added.
  std::vector<std::string> names() const {
    std::vector<std::string> v;
    for (const auto& e : m_entries) v.push_back(e.name);
    return v;
  }

  /// The complete file image.
  std::vector<unsigned char> to_bytes() const {
    detail::HeaderJson header = detail::HeaderJson::object();
    if (!m_metadata.empty()) {
      detail::HeaderJson md = detail::HeaderJson::object();
      for (const auto& kv : m_metadata) md[kv.first] = kv.second;
      header["__metadata__"] = md;
    }
    std::size_t offset = 0;
    for (const auto& e : m_entries) {
      detail::HeaderJson info = detail::HeaderJson::object();
      info["dtype"] = dtype_name(e.dtype);
      detail::HeaderJson shape = detail::HeaderJson::array();
      for (Index d : e.shape) shape.push_back(static_cast<std::uint64_t>(d));
      info["shape"] = shape;
      info["data_offsets"] = {static_cast<std::uint64_t>(offset),
                              static_cast<std::uint64_t>(offset + e.bytes.size())};
      header[e.name] = info;
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<unsigned char> out;
    out.reserve(8 + text.size() + offset);
    std::uint64_t n = text.size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>((n >> (8 * i)) & 0xff));
    out.insert(out.end(), text.begin(), text.end());
    for (const auto& e : m_entries) out.insert(out.end(), e.bytes.begin(), e.bytes.end());
    return out;
  }

  /// Writes the file (through `path + ".tmp-pemoe"`, renamed into place); throws `IoError` on failure.
  void save(const std::string& path) const { detail::write_file_bytes(path, to_bytes()); }

 private:
  struct Entry {
    std::string name;
    Dtype dtype;
    Shape shape;
    std::size_t nbytes;  // numel · dtype size
    std::vector<unsigned char> bytes;
  };

  /// numel · dtype size; `ShapeError` naming the tensor when an extent is negative or when the product of
  /// the non-zero extents times the dtype size exceeds 2^63 - 1 (the limit `SafetensorsFile` reads).
  static std::size_t checked_nbytes(const std::string& name, Dtype dtype, const Shape& shape) {
    constexpr Index index_max = std::numeric_limits<Index>::max();
    auto nonzero = static_cast<Index>(dtype_size(dtype));
    bool any_zero = false;
    for (Index d : shape) {
      PEMOE_CHECK_SHAPE(d >= 0, "SafetensorsWriter: tensor '", name, "' has shape ", shape_string(shape),
                        "; extents must be non-negative");
      PEMOE_CHECK_SHAPE(d == 0 || nonzero <= index_max / d, "SafetensorsWriter: tensor '", name,
                        "' of shape ", shape_string(shape), " and dtype ", dtype_name(dtype),
                        " would take more than 2^63 - 1 bytes");
      if (d == 0)
        any_zero = true;
      else
        nonzero *= d;
    }
    if constexpr (sizeof(std::size_t) < sizeof(Index))  // 32-bit machines
      PEMOE_CHECK_SHAPE(nonzero <= static_cast<Index>(std::numeric_limits<std::size_t>::max()),
                        "SafetensorsWriter: tensor '", name, "' of shape ", shape_string(shape),
                        " does not fit this machine's address space");
    return any_zero ? 0 : static_cast<std::size_t>(nonzero);
  }

  Entry& new_entry(const std::string& name, Dtype dtype, const Shape& shape) {
    PEMOE_CHECK_CONFIG(!name.empty(), "SafetensorsWriter: a tensor needs a non-empty name");
    PEMOE_CHECK_CONFIG(name != "__metadata__",
                       "SafetensorsWriter: '__metadata__' is reserved; use set_metadata");
    PEMOE_CHECK_CONFIG(m_index.count(name) == 0, "SafetensorsWriter: tensor '", name, "' is added twice");
    const std::size_t nbytes = checked_nbytes(name, dtype, shape);
    m_index.emplace(name, m_entries.size());
    m_entries.push_back(Entry{name, dtype, shape, nbytes, {}});
    return m_entries.back();
  }

  std::vector<Entry> m_entries;
  std::unordered_map<std::string, std::size_t> m_index;
  SafetensorsMetadata m_metadata;
};

/// How `load_into` maps and checks names.
struct LoadOptions {
  /// Maps a file tensor name to a store parameter name (default: identity). Return "" to skip a tensor.
  std::function<std::string(const std::string&)> rename;
  /// Accept store parameters that the file does not have (they keep their values).
  bool allow_missing = false;
  /// Accept file tensors that match no parameter (they are ignored).
  bool allow_unexpected = false;
};

/// What `load_into` did.
struct LoadReport {
  std::vector<std::string> loaded;      ///< store parameters that were filled
  std::vector<std::string> missing;     ///< store parameters the file does not have
  std::vector<std::string> unexpected;  ///< file tensors that match no store parameter
};

/**
 * @brief Fills the parameters of `store` from `file` by name, converting dtypes (e.g. BF16 → float).
 *
 * Every mapped tensor must have exactly the parameter's shape (`ShapeError` otherwise, naming both).
 * Unless `options` allow it, a store parameter absent from the file, or a file tensor matching no
 * parameter, is an `IoError` that lists them all. Nothing is written to the store unless every check
 * passes.
 */
template <class T>
LoadReport load_into(ParamStore<T>& store, const SafetensorsFile& file, const LoadOptions& options = {}) {
  LoadReport report;
  std::vector<std::pair<std::string, ParamId>> plan;
  std::set<std::string> seen;
  for (const auto& fname : file.names()) {
    const std::string pname = options.rename ? options.rename(fname) : fname;
    if (pname.empty()) continue;
    if (!store.contains(pname)) {
      report.unexpected.push_back(fname);
      continue;
    }
    const ParamId id = store.id(pname);
    const auto& ti = file.info(fname);
    PEMOE_CHECK_SHAPE(ti.shape == store.entry(id).shape, "load_into: tensor '", fname, "' of '",
                      file.source(), "' has shape ", shape_string(ti.shape), ", parameter '", pname,
                      "' has shape ", shape_string(store.entry(id).shape));
    PEMOE_CHECK_AS(IoError, seen.insert(pname).second, "load_into: two tensors of '", file.source(),
                   "' map to parameter '", pname, "' (check the rename function)");
    plan.emplace_back(fname, id);
  }
  for (const auto& e : store.entries())
    if (!seen.count(e.name)) report.missing.push_back(e.name);
  std::string problems;
  if (!report.missing.empty() && !options.allow_missing)
    problems += " missing from the file (" + std::to_string(report.missing.size()) +
                "): " + detail::name_list(report.missing) + ";";
  if (!report.unexpected.empty() && !options.allow_unexpected)
    problems += " unexpected in the file (" + std::to_string(report.unexpected.size()) +
                "): " + detail::name_list(report.unexpected) + ";";
  if (!problems.empty())
    throw IoError(
        "load_into: '" + file.source() + "' does not match the model's parameters;" + problems +
        " set LoadOptions::allow_missing / allow_unexpected or a rename function if this is intended");
  for (const auto& [fname, id] : plan) {
    file.copy_to(fname, store.value(id), store.entry(id).size);
    report.loaded.push_back(store.entry(id).name);
  }
  return report;
}

/// Reads `path` and calls `load_into(store, file, options)`.
template <class T>
LoadReport load_into(ParamStore<T>& store, const std::string& path, const LoadOptions& options = {}) {
  return load_into(store, SafetensorsFile::load(path), options);
}

/// Writes every parameter of `store` (declaration order, declared shapes) to `path` as `dtype`
/// (default: the store's scalar type), with `metadata` in `__metadata__`.
template <class T>
void save_safetensors(const ParamStore<T>& store, const std::string& path,
                      const SafetensorsMetadata& metadata = {}, Dtype dtype = dtype_of<T>()) {
  SafetensorsWriter w;
  for (std::size_t i = 0; i < store.size(); ++i) {
    const auto& e = store.entry(i);
    w.add(e.name, e.shape, store.value(i), dtype);
  }
  w.set_metadata(metadata);
  w.save(path);
}

}  // namespace pemoe
