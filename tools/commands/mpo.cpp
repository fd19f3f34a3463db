// `pemoe mpo compress` and `pemoe mpo expand`: MPO-decompose the matching 2-d tensors of a safetensors
// file, and rebuild dense weights from such a file.
//
// File layout written by `compress` (documented in `pemoe mpo --help`):
// - every matched tensor W is replaced, at its place in the file, by its cores `<W>.mpo.core_<k>`,
//   k = 0..n-1, each 4-d (d_k, i_k, j_k, d_{k+1}); F32 (F64 when W was F64);
// - every other tensor is copied unchanged (same dtype, same bytes), and all metadata is kept;
// - `__metadata__["pemoe.mpo/<W>"]` is a JSON object with what `expand` needs and what the table showed:
//   {"shape": [rows, cols], "dtype": "F32", "row_modes": [...], "col_modes": [...], "padded": false,
//    "gauge": "symmetric", "max_bond": 64 | null, "rel_cutoff": 0.0, "bond_dims": [1, ..., 1],
//    "params": <dense>, "mpo_params": <cores>, "rel_error": ||W - MPO||_F / ||W||_F};
// - `__metadata__["pemoe.mpo.version"]` is the pemoe version that wrote the file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <vector>
#include <xtensor/xtensor.hpp>

#include "../cli.hpp"
#include "../table.hpp"
#include "pemoe/io/safetensors.hpp"
#include "pemoe/mpo/decompose.hpp"
#include "pemoe/mpo/reconstruct.hpp"
#include "pemoe/mpo/shape.hpp"
#include "pemoe/version.hpp"

namespace pemoe::cli {
namespace {

const std::string record_prefix = "pemoe.mpo/";
const std::string version_key = "pemoe.mpo.version";

std::string core_name(const std::string& tensor, Index k) {
  return tensor + ".mpo.core_" + std::to_string(k);
}

/// "12,64,64,12" (the inner bonds d_1..d_{n-1}; "-" for a single core).
std::string inner_bonds(const std::vector<Index>& d) {
  std::string s;
  for (std::size_t k = 1; k + 1 < d.size(); ++k) s += (s.empty() ? "" : ",") + std::to_string(d[k]);
  return s.empty() ? "-" : s;
}

std::string shape_text(Index rows, Index cols) {
  return std::to_string(rows) + "x" + std::to_string(cols);
}

MpoGauge parse_gauge(const std::string& g) {
  return g == "mixed"  ? MpoGauge::mixed_canonical
         : g == "left" ? MpoGauge::left_canonical
                       : MpoGauge::symmetric;
}

/// One decomposed tensor: what the table shows and `__metadata__` records.
struct Row {
  std::string name;
  Index rows = 0, cols = 0;
  MpoShape shape;
  std::vector<Index> bonds;
  Index params = 0, mpo_params = 0;
  double err2 = 0, norm2 = 0;  // squared ||W - MPO||_F and ||W||_F
};

/// Decomposes one tensor in precision T, adds its cores to `out`, returns the table row.
template <class T>
Row compress_one(const SafetensorsFile& in, const std::string& name, const MpoShape& shape,
                 const TruncationPolicy& policy, MpoGauge gauge, SafetensorsWriter& out) {
  const Matrix<T> W = in.to_matrix<T>(name);
  const Mpo<T> mpo = decompose<T>(W, shape, policy, gauge);
  for (Index k = 0; k < mpo.n_cores(); ++k) {
    const auto& c = mpo.cores[static_cast<std::size_t>(k)];
    const Shape cs(c.shape().begin(), c.shape().end());
    out.add(core_name(name, k), cs, c.data());
  }
  const Matrix<T> R = reconstruct(mpo);
  Row row;
  row.name = name;
  row.rows = W.rows();
  row.cols = W.cols();
  row.shape = shape;
  row.bonds = mpo.bond_dims();
  row.params = W.size();
  row.mpo_params = mpo.num_params();
  row.err2 = (W.template cast<double>() - R.template cast<double>()).squaredNorm();
  row.norm2 = W.template cast<double>().squaredNorm();
  return row;
}

struct CompressOptions {
  std::string in_path, pattern, out_path, gauge = "symmetric";
  long long max_bond = 0;  // 0: no cap
  long long cores = 5;
  double rel_cutoff = 0;
  bool pad = false;
};

/// `pemoe mpo compress`; returns the exit code.
int mpo_compress(const CompressOptions& o) {
  const std::string& in_path = o.in_path;
  const std::string& pattern = o.pattern;
  const std::string& out_path = o.out_path;
  TruncationPolicy policy;
  if (o.max_bond > 0) policy.max_bond = static_cast<Index>(o.max_bond);
  policy.rel_cutoff = o.rel_cutoff;
  const Index n_cores = static_cast<Index>(o.cores);
  const std::string& gauge_name = o.gauge;
  const MpoGauge gauge = parse_gauge(gauge_name);
  const bool pad = o.pad;
  const std::regex re(pattern);  // validated while parsing

  const auto t0 = std::chrono::steady_clock::now();
  const SafetensorsFile in = SafetensorsFile::load(in_path);
  std::vector<std::string> matched, bad;
  for (const auto& name : in.names()) {
    if (!std::regex_search(name, re)) continue;
    matched.push_back(name);
    const TensorInfo& ti = in.info(name);
    const bool float_type =
        ti.dtype == Dtype::F32 || ti.dtype == Dtype::F64 || ti.dtype == Dtype::F16 || ti.dtype == Dtype::BF16;
    if (ti.shape.size() != 2 || !float_type)
      bad.push_back(name + " " + shape_string(ti.shape) + " " + dtype_name(ti.dtype));
  }
  if (matched.empty())
    throw RuntimeError("--match '" + pattern + "' matches none of the " + std::to_string(in.size()) +
                       " tensors of '" + in_path + "': " + pemoe::detail::name_list(in.names(), 12) +
                       " ('pemoe info " + in_path + "' lists them all)");
  if (!bad.empty())
    throw RuntimeError(
        "--match '" + pattern + "' matches " + plural(bad.size(), "tensor") +
        (bad.size() == 1 ? " that is not a 2-d float matrix" : " that are not 2-d float matrices") +
        " (F32, F64, F16, BF16): " + pemoe::detail::name_list(bad, 6) +
        "; make the pattern more specific so that it matches only weight matrices");
  const std::set<std::string> match_set(matched.begin(), matched.end());
  for (const auto& name : in.names())
    for (const auto& m : matched)
      if (!match_set.count(name) && name.rfind(m + ".mpo.core_", 0) == 0)
        throw RuntimeError("'" + in_path + "' already has a tensor '" + name + "', which the cores of '" + m +
                           "' would replace; was this file compressed before?");

  SafetensorsWriter out;
  out.set_metadata(in.metadata());
  std::vector<Row> rows;
  for (const auto& name : in.names()) {
    if (!match_set.count(name)) {
      out.copy_from(in, name);
      continue;
    }
    const TensorInfo& ti = in.info(name);
    const MpoShape shape = propose_mpo_shape(ti.shape[0], ti.shape[1], n_cores, pad);
    Row row = ti.dtype == Dtype::F64 ? compress_one<double>(in, name, shape, policy, gauge, out)
                                     : compress_one<float>(in, name, shape, policy, gauge, out);
    nlohmann::ordered_json rec;
    rec["shape"] = {row.rows, row.cols};
    rec["dtype"] = dtype_name(ti.dtype);
    rec["row_modes"] = shape.row_modes;
    rec["col_modes"] = shape.col_modes;
    rec["padded"] = shape.rows() != row.rows || shape.cols() != row.cols;
    rec["gauge"] = gauge_name;
    rec["max_bond"] = o.max_bond > 0 ? nlohmann::ordered_json(policy.max_bond) : nlohmann::ordered_json();
    rec["rel_cutoff"] = policy.rel_cutoff;
    rec["bond_dims"] = row.bonds;
    rec["params"] = row.params;
    rec["mpo_params"] = row.mpo_params;
    rec["rel_error"] = row.norm2 > 0 ? std::sqrt(row.err2 / row.norm2) : std::sqrt(row.err2);
    out.set_metadata(record_prefix + name, rec.dump());
    rows.push_back(std::move(row));
  }
  out.set_metadata(version_key, version_string);
  out.save(out_path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  Table table({"tensor", "shape", "modes", "bond dims", "params", "mpo params", "ratio", "rel. error"},
              {false, false, false, false, true, true, true, true});
  long long before = 0, after = 0;
  double err2 = 0, norm2 = 0;
  for (const auto& r : rows) {
    const bool padded = r.shape.rows() != r.rows || r.shape.cols() != r.cols;
    table.add({r.name, shape_text(r.rows, r.cols), r.shape.to_string() + (padded ? " (padded)" : ""),
               inner_bonds(r.bonds), thousands(r.params), thousands(r.mpo_params),
               format("%.1f%%", 100.0 * double(r.mpo_params) / double(r.params)),
               format("%.2e", r.norm2 > 0 ? std::sqrt(r.err2 / r.norm2) : std::sqrt(r.err2))});
    before += r.params;
    after += r.mpo_params;
    err2 += r.err2;
    norm2 += r.norm2;
  }
  table.total({"total (" + plural(rows.size(), "tensor") + ")", "", "", "", thousands(before),
               thousands(after), format("%.1f%%", 100.0 * double(after) / double(before)),
               format("%.2e", norm2 > 0 ? std::sqrt(err2 / norm2) : std::sqrt(err2))});
  long long file_params = 0;
  for (const auto& name : in.names()) file_params += in.info(name).numel();
  std::cout << "pemoe mpo compress: " << rows.size() << " of " << plural(in.size(), "tensor") << " of '"
            << in_path << "' match '" << pattern << "'; " << n_cores << " cores, max bond "
            << (o.max_bond > 0 ? std::to_string(policy.max_bond) : std::string("none")) << ", rel cutoff "
            << policy.rel_cutoff << ", gauge " << gauge_name << (pad ? ", padding on" : "") << "\n\n";
  table.print(std::cout);
  std::cout << "\nall tensors: " << thousands(file_params) << " -> "
            << thousands(file_params - before + after) << " parameters; wrote '" << out_path << "' in "
            << format("%.1f", seconds) << " s\n";
  return 0;
}

/// Rebuilds tensor `name` from its cores in precision T and adds it to `out` as `dtype`.
template <class T>
void expand_one(const SafetensorsFile& in, const std::string& name, const MpoShape& shape, Index rows,
                Index cols, Dtype dtype, SafetensorsWriter& out) {
  std::vector<xt::xtensor<T, 4>> cores;
  for (Index k = 0; k < shape.n_cores(); ++k) {
    const std::string cn = core_name(name, k);
    const TensorInfo& ti = in.info(cn);
    if (ti.shape.size() != 4)
      throw RuntimeError("'" + in.source() + "': core '" + cn + "' has shape " + shape_string(ti.shape) +
                         ", expected 4-d (d_k, i_k, j_k, d_k+1)");
    auto c = xt::xtensor<T, 4>::from_shape(
        {static_cast<std::size_t>(ti.shape[0]), static_cast<std::size_t>(ti.shape[1]),
         static_cast<std::size_t>(ti.shape[2]), static_cast<std::size_t>(ti.shape[3])});
    in.copy_to(cn, c.data(), static_cast<Index>(c.size()));
    cores.push_back(std::move(c));
  }
  const Matrix<T> W = reconstruct(cores, shape, rows, cols);
  out.add(name, Shape{rows, cols}, W.data(), dtype);
}

struct ExpandOptions {
  std::string in_path, out_path;
};

/// `pemoe mpo expand`; returns the exit code.
int mpo_expand(const ExpandOptions& o) {
  const std::string& in_path = o.in_path;
  const std::string& out_path = o.out_path;
  const auto t0 = std::chrono::steady_clock::now();
  const SafetensorsFile in = SafetensorsFile::load(in_path);

  struct Rec {
    MpoShape shape;
    Index rows = 0, cols = 0;
    Dtype dtype = Dtype::F32;
    std::vector<Index> bonds;
  };
  std::map<std::string, Rec> recs;  // tensor name -> record
  SafetensorsMetadata kept;
  for (const auto& [key, value] : in.metadata()) {
    if (key == version_key) continue;
    if (key.rfind(record_prefix, 0) != 0) {
      kept[key] = value;
      continue;
    }
    const std::string name = key.substr(record_prefix.size());
    const std::string where = "'" + in_path + "': __metadata__ '" + key + "'";
    Rec r;
    try {
      const auto j = nlohmann::json::parse(value);
      r.shape.row_modes = j.at("row_modes").get<std::vector<Index>>();
      r.shape.col_modes = j.at("col_modes").get<std::vector<Index>>();
      const auto shape = j.at("shape").get<std::vector<Index>>();
      if (shape.size() != 2) throw RuntimeError(where + ": \"shape\" must have 2 entries");
      r.rows = shape[0];
      r.cols = shape[1];
      if (!parse_dtype(j.at("dtype").get<std::string>(), r.dtype))
        throw RuntimeError(where + ": unknown dtype '" + j.at("dtype").get<std::string>() + "'");
    } catch (const nlohmann::json::exception& e) {
      throw RuntimeError(where + " is not a valid MPO record (" + e.what() +
                         "); was the file edited by hand?");
    }
    r.shape.validate(key);
    if (r.rows < 1 || r.cols < 1 || r.rows > r.shape.rows() || r.cols > r.shape.cols())
      throw RuntimeError(where + ": shape " + shape_text(r.rows, r.cols) + " does not fit the modes " +
                         r.shape.to_string());
    for (Index k = 0; k < r.shape.n_cores(); ++k)
      if (!in.contains(core_name(name, k)))
        throw RuntimeError("'" + in_path + "': tensor '" + name + "' has " +
                           std::to_string(r.shape.n_cores()) + " MPO cores but '" + core_name(name, k) +
                           "' is missing from the file");
    if (in.contains(name))
      throw RuntimeError("'" + in_path + "' has both the dense tensor '" + name + "' and its MPO cores");
    recs[name] = r;
  }
  if (recs.empty())
    throw RuntimeError("'" + in_path +
                       "' has no MPO-compressed tensors (no __metadata__ key starting with '" +
                       record_prefix + "'); was it written by 'pemoe mpo compress'?");
  std::map<std::string, std::pair<std::string, Index>> core_of;  // core name -> (tensor, k)
  for (const auto& [name, r] : recs)
    for (Index k = 0; k < r.shape.n_cores(); ++k) core_of[core_name(name, k)] = {name, k};

  SafetensorsWriter out;
  out.set_metadata(kept);
  Table table({"tensor", "shape", "dtype", "modes", "bond dims", "mpo params", "params"},
              {false, false, false, false, false, true, true});
  long long before = 0, after = 0;
  for (const auto& name : in.names()) {
    auto it = core_of.find(name);
    if (it == core_of.end()) {
      out.copy_from(in, name);
      continue;
    }
    if (it->second.second != 0) continue;  // the tensor is written at the place of its first core
    const std::string& tensor = it->second.first;
    const Rec& r = recs.at(tensor);
    const bool f64 = in.info(core_name(tensor, 0)).dtype == Dtype::F64;
    if (f64)
      expand_one<double>(in, tensor, r.shape, r.rows, r.cols, r.dtype, out);
    else
      expand_one<float>(in, tensor, r.shape, r.rows, r.cols, r.dtype, out);
    Index mpo_params = 0;
    std::vector<Index> bonds{1};
    for (Index k = 0; k < r.shape.n_cores(); ++k) {
      const TensorInfo& ti = in.info(core_name(tensor, k));
      mpo_params += ti.numel();
      bonds.push_back(ti.shape[3]);
    }
    table.add({tensor, shape_text(r.rows, r.cols), dtype_name(r.dtype), r.shape.to_string(),
               inner_bonds(bonds), thousands(mpo_params), thousands(r.rows * r.cols)});
    before += mpo_params;
    after += r.rows * r.cols;
  }
  table.total(
      {"total (" + plural(recs.size(), "tensor") + ")", "", "", "", "", thousands(before), thousands(after)});
  out.save(out_path);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "pemoe mpo expand: rebuilt " << plural(recs.size(), "tensor") << " of '" << in_path << "'\n\n";
  table.print(std::cout);
  std::cout << "\nwrote '" << out_path << "' (" << plural(out.names().size(), "tensor") << ") in "
            << format("%.1f", seconds) << " s\n";
  return 0;
}

void setup_compress(CLI::App& cmd) {
  auto o = std::make_shared<CompressOptions>();
  const long long no_cap = std::numeric_limits<Index>::max();
  cmd.add_option("IN", o->in_path, "the .safetensors file to read")->required()->type_name("IN");
  cmd.add_option("--match", o->pattern,
                 "tensors to decompose; each must be 2-d and F32, F64, F16 or BF16 (required)")
      ->required()
      ->type_name("REGEX")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            try {
              std::regex re(v);
            } catch (const std::regex_error& e) {
              return "'" + v + "' is not a valid regular expression: " + e.what();
            }
            return {};
          },
          ""));
  cmd.add_option("--out", o->out_path, "output file (required; may be IN itself)")
      ->required()
      ->type_name("OUT");
  cmd.add_option("--max-bond", o->max_bond,
                 "cap on every bond dimension (default: none, the decomposition is exact)")
      ->type_name("K")
      ->check(integer_in(1, no_cap));
  cmd.add_option("--cores", o->cores, "number of cores n (default 5, as MPOP and MPOE)")
      ->type_name("N")
      ->check(integer_in(1, 32));
  cmd.add_option("--rel-cutoff", o->rel_cutoff,
                 "per bond, drop the smallest singular values whose squared sum is at most X of the total "
                 "(default 0: keep all); combined with --max-bond")
      ->type_name("X")
      ->check(number_in(0, 1, "[0, 1)"));
  cmd.add_option("--gauge", o->gauge,
                 "symmetric (default; the reference's canonical form), mixed (centred on the middle core) or "
                 "left (raw TT-SVD)")
      ->type_name("G")
      ->check(one_of({"symmetric", "mixed", "left"}));
  cmd.add_flag(
         "--pad", o->pad,
         "zero-pad a side whose own factors are unbalanced (its largest mode more than twice the n-th root "
         "of its size, e.g. a vocabulary of 30522 = 2*3*5087 -> 8^5) up to a size with balanced factors; "
         "expand slices the padding off again")
      ->disable_flag_override();
  cmd.footer(
      "Decomposes every tensor of IN whose name matches REGEX (ECMAScript, searched anywhere in the name, "
      "as\n"
      "std::regex_search) into an MPO by TT-SVD, writes OUT and prints a table: tensor, shape, modes\n"
      "(row modes x col modes), bond dimensions d_1..d_n-1, parameters before and after, and the relative\n"
      "error ||W - MPO||_F / ||W||_F measured on the rebuilt matrix. The totals row sums the parameters of\n"
      "the matched tensors; its error is over all of them together.");
  set_action(cmd, [o] { return mpo_compress(*o); });
}

void setup_expand(CLI::App& cmd) {
  auto o = std::make_shared<ExpandOptions>();
  cmd.add_option("IN", o->in_path, "a .safetensors file written by 'pemoe mpo compress'")
      ->required()
      ->type_name("IN");
  cmd.add_option("--out", o->out_path, "output file (required; may be IN itself)")
      ->required()
      ->type_name("OUT");
  cmd.footer(
      "Rebuilds every tensor that 'pemoe mpo compress' decomposed (contracting its cores, slicing off any\n"
      "padding, converting back to its original dtype) at the place of its cores; copies every other tensor\n"
      "unchanged and drops only the metadata 'compress' added.");
  set_action(cmd, [o] { return mpo_expand(*o); });
}

void setup_mpo(CLI::App& cmd) {
  cmd.require_subcommand(0, 1);
  setup_compress(
      *cmd.add_subcommand("compress", "decompose every tensor whose name matches REGEX into MPO cores"));
  setup_expand(*cmd.add_subcommand("expand", "rebuild the dense tensors of a file written by 'compress'"));
  cmd.footer(
      "Matrix product operator (MPO) decomposition of the 2-d weights of a safetensors file (MPOP/MPOE:\n"
      "Gao et al. 2020, Liu et al. ACL 2021, Gao et al. COLING 2022).\n"
      "\n"
      "File layout of 'compress': each matched tensor W (rows x cols) is replaced, at its place, by n cores\n"
      "'W.mpo.core_0' .. 'W.mpo.core_<n-1>' of shape (d_k, i_k, j_k, d_k+1) with prod(i) = rows and\n"
      "prod(j) = cols (after zero-padding with --pad); W = contraction of the cores over the bonds d. Cores\n"
      "are F32 (F64 for an F64 tensor). Every other tensor and all metadata are copied unchanged;\n"
      "__metadata__[\"pemoe.mpo/W\"] records, as JSON, the original shape and dtype, the modes, padding, "
      "gauge,\n"
      "bond dimensions and relative error, and __metadata__[\"pemoe.mpo.version\"] the pemoe version.\n"
      "\n"
      "Run 'pemoe mpo compress --help' or 'pemoe mpo expand --help' for the options.");
}

[[maybe_unused]] const bool registered_mpo = register_command(
    {"mpo", "matrix product operator (MPO) compression of the 2-d weights of a safetensors file", setup_mpo});

}  // namespace
}  // namespace pemoe::cli
