#!/usr/bin/env bash
# Sourced by the README's commands: makes (once) and activates the project's own virtual environment and
# installs epp with its test extras at the locked versions of requirements/constraints.txt. Nothing goes
# into the system Python, so it works as root and as a user whose python3 refuses pip (PEP 668).
#   EPP_VENV=DIR      where the environment lives (default: .venv in the repository)
#   EPP_EXTRAS=LIST   extras to install (default: test); e.g. EPP_EXTRAS=test,bench
#   bash scripts/venv.sh --relock   re-resolve the newest versions and rewrite the constraints file
set -euo pipefail
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${EPP_VENV:-$_repo/.venv}"
_extras="${EPP_EXTRAS:-test}"
_constraints="$_repo/requirements/constraints.txt"

_make_venv() {
  local python="${EPP_PYTHON:-python3}"
  command -v "$python" >/dev/null || { echo "venv.sh: no $python on PATH; install Python 3.11 or newer" >&2; return 1; }
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "venv.sh: $("$python" --version) is too old; epp needs Python 3.11 or newer (set EPP_PYTHON)" >&2; return 1; }
  if ! "$python" -m venv "$_venv" 2>/dev/null; then
    rm -rf "$_venv"
    local package
    package="python3-venv"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "venv.sh: installing $package (the venv module of Debian's python3)" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
      "$python" -m venv "$_venv"
    else
      echo "venv.sh: '$python -m venv' failed; as root run: apt-get install $package   (or set EPP_PYTHON)" >&2
      return 1
    fi
  fi
}

[ -x "$_venv/bin/python" ] || _make_venv
if [ "${1:-}" = "--relock" ]; then
  "$_venv/bin/python" -m pip install -q --upgrade -e "$_repo[test,bench,fuzz]"
  { head -2 "$_constraints"; "$_venv/bin/python" -m pip freeze --exclude-editable | grep -v '^-e '; } > "$_constraints.new"
  mv "$_constraints.new" "$_constraints"
  echo "rewrote $_constraints"
  exit 0
fi
# reinstall only when what decides the install changed
# (the stamp holds the inputs' hash, the repository and the extras installed; a request for fewer extras
# than are installed needs nothing)
_stamp="$_venv/.epp-installed"
_inputs="$(cat "$_repo/pyproject.toml" "$_constraints" | sha256sum | cut -d' ' -f1) $_repo"
_had_hash="" _had_repo="" _had_extras=""
[ -f "$_stamp" ] && read -r _had_hash _had_repo _had_extras < "$_stamp"
_installed=""
if [ "${_had_hash:-} ${_had_repo:-}" = "$_inputs" ]; then
  _installed="${_had_extras:-}"
  for _extra in ${_extras//,/ }; do
    case ",$_installed," in *",$_extra,"*) ;; *) _installed="$_installed,$_extra" ;; esac
  done
  [ "$_installed" = "${_had_extras:-}" ] && _installed="same"
fi
if [ "$_installed" != "same" ]; then
  [ -n "$_installed" ] && _extras="${_installed#,}"
  echo "venv.sh: installing epp[$_extras] into $_venv (locked versions)" >&2
  # (the filter drops pip's notes about find-links folders a machine's pip.conf names but lacks)
  "$_venv/bin/python" -m pip install --disable-pip-version-check -q -c "$_constraints" -e "$_repo[$_extras]" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$_inputs $_extras" > "$_stamp"
fi
export VIRTUAL_ENV="$_venv"
export PATH="$_venv/bin:$PATH"
hash -r
