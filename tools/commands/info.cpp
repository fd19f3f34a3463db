// `pemoe info FILE`: what a safetensors file holds (tensors in file order, then its metadata).
#include <iostream>
#include <memory>
#include <string>

#include "../cli.hpp"
#include "../table.hpp"
#include "pemoe/io/safetensors.hpp"

namespace pemoe::cli {
namespace {

struct InfoOptions {
  std::string path;
};

int info(const InfoOptions& o) {
  const auto f = SafetensorsFile::load(o.path);
  Table table({"tensor", "dtype", "shape", "elements"}, {false, false, false, true});
  long long total = 0;
  for (const auto& name : f.names()) {
    const auto& ti = f.info(name);
    table.add({name, dtype_name(ti.dtype), shape_string(ti.shape), thousands(ti.numel())});
    total += ti.numel();
  }
  table.total({"total (" + plural(f.size(), "tensor") + ")", "", "", thousands(total)});
  std::cout << "'" << f.source() << "': " << thousands(static_cast<long long>(f.file_size()))
            << " bytes, header " << thousands(static_cast<long long>(f.header_size())) << " bytes\n\n";
  table.print(std::cout);
  if (!f.metadata().empty()) {
    std::cout << "\n__metadata__:\n";
    for (const auto& [k, v] : f.metadata()) std::cout << "  " << k << ": " << v << "\n";
  }
  return 0;
}

void setup_info(CLI::App& cmd) {
  auto o = std::make_shared<InfoOptions>();
  cmd.add_option("FILE", o->path, "a .safetensors file")->required()->type_name("FILE");
  cmd.footer(
      "Lists the tensors of a safetensors file (name, dtype, shape, elements) in file order, then its\n"
      "__metadata__. The file is fully validated first, so this also checks that it is well-formed.");
  set_action(cmd, [o] { return info(*o); });
}

[[maybe_unused]] const bool registered_info =
    register_command({"info", "list the tensors and metadata of a safetensors file", setup_info});

}  // namespace
}  // namespace pemoe::cli
