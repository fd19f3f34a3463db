// What the example programs share besides their results table: the text corpus (fortune files) and the
// per-method learning rates of the command line.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "pemoe/core/error.hpp"

namespace pemoe::examples {

/// The documents of `corpus`: a text file, or every extension-less file of a directory (the Debian fortune
/// files, in name order), documents separated by lines holding only "%". `IoError` naming the packages to
/// install when there is no text.
inline std::vector<std::string> read_documents(const std::string& corpus) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  if (fs::is_directory(corpus)) {
    for (const auto& entry : fs::directory_iterator(corpus))  // fortune files have no extension (.dat, .u8)
      if (entry.is_regular_file() && entry.path().extension().empty()) files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
  } else if (fs::is_regular_file(corpus)) {
    files.push_back(corpus);
  }
  std::vector<std::string> docs;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string line, doc;
    while (std::getline(in, line)) {
      if (line == "%") {
        docs.push_back(std::move(doc));
        doc.clear();
      } else {
        doc += line + "\n";
      }
    }
    docs.push_back(std::move(doc));
  }
  docs.erase(std::remove_if(docs.begin(), docs.end(), [](const std::string& d) { return d.empty(); }),
             docs.end());
  if (docs.empty())
    throw IoError("no text in '" + corpus +
                  "': install the fortunes (apt-get install fortunes fortunes-min) or pass --corpus FILE");
  return docs;
}

/// "method=rate" items of --lr as a map; `ConfigError` for an item without '=' or with a rate that is not a
/// number.
inline std::map<std::string, double> parse_method_rates(const std::vector<std::string>& items) {
  std::map<std::string, double> rates;
  for (const auto& kv : items) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos) throw ConfigError("--lr: '" + kv + "' is not method=value");
    try {
      rates[kv.substr(0, eq)] = std::stod(kv.substr(eq + 1));
    } catch (const std::exception&) {
      throw ConfigError("--lr: '" + kv.substr(eq + 1) + "' is not a number (in '" + kv + "')");
    }
  }
  return rates;
}

}  // namespace pemoe::examples
