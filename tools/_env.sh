# Sourced by start-node.sh and run-tests.sh: create ./.venv and install gpunet into it, once.
# Re-running is quick: the install is skipped while pyproject.toml is unchanged.

gpunet_env() {  # usage: gpunet_env EXTRAS   (EXTRAS: "" or "dev")
  local extras="$1" py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "gpunet needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    return 1
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating the virtual environment in .venv"
    "$py" -m venv .venv
  fi
  local stamp=".venv/.gpunet-installed-${extras:-base}"
  local want
  want="$(sha256sum pyproject.toml | cut -c1-16)${CMAKE_ARGS:-}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  if ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null || [ -n "${CMAKE_ARGS:-}" ]; then
    install_llama_cpp || return 1
  fi
  echo "==> installing gpunet${extras:+ [$extras]} and its dependencies"
  local log=.venv/pip-install.log
  if ! .venv/bin/python -m pip install -e ".${extras:+[$extras]}" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "install failed; the full log is in $log" >&2
    return 1
  fi
  echo "$want" >"$stamp"
}

install_llama_cpp() {
  # llama-cpp-python ships as source only: pip compiles llama.cpp (about 10 minutes on 2 cores,
  # once per machine: pip caches the wheel). Progress is the compiler's [done/total] counter.
  local log=.venv/llama-cpp-build.log args=()
  if [ -n "${CMAKE_ARGS:-}" ]; then
    # a custom build (e.g. CUDA) must not reuse a cached CPU wheel
    args=(--no-cache-dir --force-reinstall --no-deps)
    echo "==> compiling llama.cpp with CMAKE_ARGS=$CMAKE_ARGS (may take long)"
  else
    export CMAKE_ARGS="-DLLAVA_BUILD=OFF"
    echo "==> compiling llama.cpp for llama-cpp-python (first install only: ~10 min on 2 cores)"
  fi
  local version
  version=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
  set -o pipefail
  if ! .venv/bin/python -m pip install -v "${args[@]}" "$version" 2>&1 | tee "$log" |
      awk '/^ *\[[0-9]+\/[0-9]+\]/ { match($0, /\[[0-9]+\/[0-9]+\]/);
             printf "\r    compiling %s ", substr($0, RSTART, RLENGTH); fflush() }
           /Successfully installed/ { print "\n    done"; fflush() }'; then
    echo >&2
    tail -n 30 "$log" >&2
    echo "building llama-cpp-python failed; the full log is in $log" >&2
    return 1
  fi
}
