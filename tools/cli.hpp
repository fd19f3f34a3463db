// The frame of the `pemoe` command-line tool, on CLI11: the command registry, the help layout, option
// validators with messages that name the option and the value, and the mapping of errors to exit codes.
//
// A subcommand is one file, tools/commands/<name>.cpp, that registers itself:
//
//   namespace {
//   void setup(CLI::App& cmd) {
//     auto o = std::make_shared<Options>();                  // the values live as long as the action
//     cmd.add_option("FILE", o->path, "the file")->required()->type_name("FILE");
//     pemoe::cli::set_action(cmd, [o] { return run(*o); });  // the exit code
//   }
//   [[maybe_unused]] const bool registered = pemoe::cli::register_command({"info", "one-line summary",
//   setup}); }  // namespace
//
// tools/CMakeLists.txt compiles every tools/commands/*.cpp into the tool; nothing else needs an edit (the
// files are linked as objects, not through a static library, so the linker keeps their registrations). A
// command with subcommands of its own (`pemoe mpo compress`) adds them in its setup with `add_subcommand`
// and gives each its action.
//
// Exit codes: 0 success, 1 runtime error (a file, a tensor, a diff that found differences), 2 usage error.
// Every error is one line on stderr: "pemoe <command>: error: <what>".
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/detail/edit_distance.hpp"

namespace pemoe::cli {

/// A mistake in the command line found after parsing (exit code 2).
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what) : std::runtime_error(what) {}
};

/// A problem found while running a valid command (exit code 1) that is not a library exception.
class RuntimeError : public std::runtime_error {
 public:
  explicit RuntimeError(const std::string& what) : std::runtime_error(what) {}
};

/// What a command does once its command line is parsed and validated; returns the exit code.
using Action = std::function<int()>;

/// A top-level subcommand of `pemoe`: its name, the one line shown in `pemoe --help`, and the function
/// that declares its options (and nested subcommands) on the `CLI::App` created for it.
struct Command {
  std::string name;
  std::string summary;
  void (*setup)(CLI::App& cmd) = nullptr;
};

namespace detail {

inline std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}

inline std::map<const CLI::App*, Action>& actions() {
  static std::map<const CLI::App*, Action> map;
  return map;
}

/// "pemoe mpo compress" for `app`.
inline std::string path_of(const CLI::App* app) {
  std::string s = app->get_name();
  for (const CLI::App* p = app->get_parent(); p != nullptr; p = p->get_parent()) s = p->get_name() + " " + s;
  return s;
}

/// The subcommands of `app` that the user can name, in the order they were added.
inline std::vector<std::string> subcommand_names(const CLI::App* app) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app->get_subcommands([](const CLI::App* s) { return !s->get_name().empty(); }))
    names.push_back(sub->get_name());
  return names;
}

inline std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (const auto& item : items) s += (s.empty() ? "" : sep) + item;
  return s;
}

/// " (did you mean '--max-bond'?)" when one candidate is close to `word`, else " (known: a, b)".
inline std::string suggestion(const std::string& word, const std::vector<std::string>& candidates) {
  const std::string best = pemoe::detail::closest_word(word, candidates);
  if (!best.empty()) return " (did you mean '" + best + "'?)";
  return candidates.empty() ? std::string() : " (known: " + join(candidates, ", ") + ")";
}

/// The option names of `app` ("--max-bond", ...; positionals and hidden options left out).
inline std::vector<std::string> option_names(const CLI::App* app) {
  std::vector<std::string> names;
  for (const CLI::Option* opt : app->get_options())
    if (opt->nonpositional() && !opt->get_group().empty()) names.push_back(opt->get_name());
  return names;
}

/// Help in the layout of the rest of the tool: the usage line first, then the summary, the arguments,
/// the options, the subcommands, and the long description (the app's footer).
class HelpFormatter : public CLI::Formatter {
 public:
  HelpFormatter() {
    column_width(24);
    label("Positionals", "arguments");
    label("Options", "options");
    label("Subcommands", "commands");
  }

  std::string make_usage(const CLI::App* app, std::string name) const override {
    std::string s = "usage: " + name;
    if (!subcommand_names(app).empty()) return s + " <command> [options]\n";
    bool optional = false;
    for (const CLI::Option* opt : app->get_options()) {
      if (opt->get_positional())
        s += opt->get_required() ? " " + opt->get_name(true) : " [" + opt->get_name(true) + "]";
      else if (opt->get_required())
        s += " " + opt->get_name() + " " + opt->get_type_name();
      else if (!opt->get_group().empty())
        optional = true;
    }
    return s + (optional ? " [options]\n" : "\n");
  }

  std::string make_help(const CLI::App* app, std::string name, CLI::AppFormatMode mode) const override {
    if (mode == CLI::AppFormatMode::Sub) return make_expanded(app);
    std::ostringstream out;
    out << make_usage(app, name);
    if (!app->get_description().empty()) out << "\n" << app->get_description() << "\n";
    out << make_positionals(app) << make_groups(app, mode) << make_subcommands(app, mode);
    if (!app->get_footer().empty()) out << "\n" << app->get_footer() << "\n";
    return out.str();
  }

  std::string make_group(std::string group, bool is_positional,
                         std::vector<const CLI::Option*> opts) const override {
    std::string out = "\n" + CLI::detail::to_lower(group) + ":\n";
    for (const CLI::Option* opt : opts) out += make_option(opt, is_positional);
    return out;
  }

  std::string make_subcommands(const CLI::App* app, CLI::AppFormatMode) const override {
    std::string out;
    for (const CLI::App* sub : app->get_subcommands([](const CLI::App* s) { return !s->get_name().empty(); }))
      out += make_subcommand(sub);
    return out.empty() ? out : "\ncommands:\n" + out;
  }

  /// The value's name after an option that takes one ("--max-bond K"); nothing for flags and arguments
  /// (whether one is required is in the usage line).
  std::string make_option_opts(const CLI::Option* opt) const override {
    if (opt->get_positional() || opt->get_type_size() == 0) return {};
    return " " + opt->get_type_name();
  }

  /// The description, wrapped to the width of the rest of the help.
  std::string make_option_desc(const CLI::Option* opt) const override {
    const std::size_t width = 110 - get_column_width();
    std::istringstream words(opt->get_description());
    std::string out, line, word;
    while (words >> word) {
      if (!line.empty() && line.size() + 1 + word.size() > width) {
        out += line + "\n";
        line.clear();
      }
      line += (line.empty() ? "" : " ") + word;
    }
    return out + line;
  }
};

/// Replaces line breaks so that an error message stays one line.
inline std::string one_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

/// The words of a comma-separated list, spaces and tabs around each trimmed; an empty word stays (the caller
/// says what was expected): "a, b,,c" -> {"a", "b", "", "c"}.
inline std::vector<std::string> split_words(const std::string& text) {
  std::vector<std::string> words;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    std::string word = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    word.erase(0, word.find_first_not_of(" \t"));
    word.erase(word.find_last_not_of(" \t") + 1);
    words.push_back(std::move(word));
    if (comma == std::string::npos) return words;
    start = comma + 1;
  }
}

}  // namespace detail

/// Adds `command` to the tool (call it from a namespace-scope initializer of the command's file).
inline bool register_command(Command command) {
  detail::registry().push_back(std::move(command));
  return true;
}

/// Makes `action` run when `cmd` is the (innermost) command given on the command line.
inline void set_action(CLI::App& cmd, Action action) {
  detail::actions()[&cmd] = std::move(action);
}

// ---- validators: each checks the text of a value and names what it needed --------------------------------

/// An integer in [lo, hi].
inline CLI::Validator integer_in(long long lo, long long hi) {
  return CLI::Validator(
      [lo, hi](std::string& v) -> std::string {
        long long x = 0;
        if (CLI::detail::lexical_cast(v, x) && x >= lo && x <= hi) return {};
        if (hi == std::numeric_limits<long long>::max())
          return "needs an integer >= " + std::to_string(lo) + ", got '" + v + "'";
        return "needs an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + v +
               "'";
      },
      "");
}

/// A number in [lo, hi) (`hi_text` shows hi in messages, e.g. "1" or "inf").
inline CLI::Validator number_in(double lo, double hi, const std::string& range_text) {
  return CLI::Validator(
      [lo, hi, range_text](std::string& v) -> std::string {
        double x = 0;
        if (CLI::detail::lexical_cast(v, x) && x >= lo && x < hi) return {};
        return "needs a number in " + range_text + ", got '" + v + "'";
      },
      "");
}

/// One of `choices`.
inline CLI::Validator one_of(std::vector<std::string> choices) {
  return CLI::Validator(
      [choices](std::string& v) -> std::string {
        if (std::find(choices.begin(), choices.end(), v) != choices.end()) return {};
        std::string list;
        for (std::size_t i = 0; i < choices.size(); ++i)
          list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + choices[i];
        return "must be " + list + ", got '" + v + "'";
      },
      "");
}

// ---- the tool ------------------------------------------------------------------------------------------

/**
 * Builds the `pemoe` app from the registered commands, parses `argv`, runs the chosen command and returns
 * the exit code. Usage errors (CLI11's and `UsageError`) give 2, every other exception 1; each is printed
 * as one line "pemoe <command>: error: <what>" on stderr. `--help` and `--version` print to stdout.
 */
inline int run_tool(int argc, char** argv, const std::string& description,
                    std::function<std::string()> version, std::ostream& out, std::ostream& err) {
  CLI::App app(description, "pemoe");
  app.formatter(std::make_shared<detail::HelpFormatter>());
  app.set_help_flag("-h,--help", "print this help and exit");
  app.set_version_flag("--version", std::move(version),
                       "print the version and the SIMD instruction sets Eigen uses");
  app.allow_extras();            // unknown words are reported below, with a suggestion (commands inherit it)
  app.require_subcommand(0, 1);  // once a command is named, a later word is never taken for another one
  app.footer(
      "Run 'pemoe <command> --help' for a command's options.\n"
      "Exit codes: 0 success, 1 runtime error (or differences found by diff), 2 usage error.");
  std::vector<Command> commands = detail::registry();
  std::sort(commands.begin(), commands.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
  for (const Command& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.summary);
    c.setup(*sub);
  }

  // The innermost command named on the command line (CLI11 marks subcommands as it meets them, so this is
  // also right when parsing stopped with an error).
  auto innermost = [&app] {
    const CLI::App* a = &app;
    while (!a->get_subcommands().empty()) a = a->get_subcommands().front();
    return a;
  };
  auto fail = [&](const std::string& what, int code) {
    err << detail::path_of(innermost()) << ": error: " << detail::one_line(what) << "\n";
    return code;
  };
  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp&) {
      out << app.help();
      return 0;
    } catch (const CLI::CallForAllHelp&) {
      out << app.help("", CLI::AppFormatMode::All);
      return 0;
    } catch (const CLI::CallForVersion& e) {
      out << e.what() << "\n";
      return 0;
    } catch (const CLI::ParseError& e) {
      return fail(e.what(), 2);
    }
    // Words no command or option took, outermost first.
    for (const CLI::App* a = &app;; a = a->get_subcommands().front()) {
      const std::vector<std::string> extra = a->remaining();
      if (!extra.empty()) {
        const std::string& w = extra.front();
        const std::string see = " (see '" + detail::path_of(a) + " --help')";
        if (!w.empty() && w[0] == '-' && w != "-")
          return fail("unknown option '" + w + "'" + detail::suggestion(w, detail::option_names(a)), 2);
        if (!detail::subcommand_names(a).empty()) {
          const std::string prefix = a == &app ? "" : detail::path_of(a).substr(6) + " ";  // drop "pemoe "
          return fail("unknown command '" + prefix + w + "'" +
                          detail::suggestion(w, detail::subcommand_names(a)) + "; see '" +
                          detail::path_of(a) + " --help'",
                      2);
        }
        return fail("unexpected argument '" + w + "'" + see, 2);
      }
      if (a->get_subcommands().empty()) break;
    }
    const CLI::App* cmd = innermost();
    auto it = detail::actions().find(cmd);
    if (it == detail::actions().end()) {
      const std::string known = detail::join(detail::subcommand_names(cmd), ", ");
      if (cmd == &app) return fail("missing command (known: " + known + "; see 'pemoe --help')", 2);
      return fail("missing command after '" + detail::path_of(cmd) + "' (known: " + known + "; see '" +
                      detail::path_of(cmd) + " --help')",
                  2);
    }
    return it->second();
  } catch (const UsageError& e) {
    return fail(e.what(), 2);
  } catch (const std::bad_alloc&) {
    return fail("out of memory", 1);
  } catch (const std::exception& e) {
    return fail(e.what(), 1);
  } catch (...) {
    return fail("unknown exception", 1);
  }
}

}  // namespace pemoe::cli
